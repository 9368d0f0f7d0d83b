"""Hold 100 000 open futures while one worker drains them; print the waiter's query rate.

Usage: ``python -m benchmarks.hold_futures DSN [SECONDS]``. The caller and an
in-process worker (concurrency 4) share the process, so the printed peak RSS
includes the worker. Runs on the task table ``hold_<random>`` and drops it
afterwards on server engines.
"""

from __future__ import annotations

import resource
import sys
import time
import uuid
from pathlib import Path

from taskfuture import TaskService, Worker

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from apptasks import register

FUTURES = 100_000
BATCH = 5_000


def main() -> None:
    dsn = sys.argv[1]
    window_s = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    table = f"hold_{uuid.uuid4().hex[:8]}"
    caller = TaskService(dsn, table=table)
    register(caller)
    caller.create_schema()
    futures = []
    for start in range(0, FUTURES, BATCH):
        futures += caller.submit_many("add", [(i, 1) for i in range(start, start + BATCH)])
    worker_service = TaskService(dsn, table=table)
    register(worker_service)
    worker = Worker(worker_service, concurrency=4)
    worker.start()
    time.sleep(2)
    before = caller.status_queries
    started = time.monotonic()
    time.sleep(window_s)
    elapsed = time.monotonic() - started
    rate = (caller.status_queries - before) / elapsed
    done = sum(future.done() for future in futures)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{dsn.split(':')[0]}: {rate:.2f} status queries/s, {done} of {FUTURES} done")
    print(f"peak RSS {peak_mib:.0f} MiB")
    worker.stop(timeout_s=1)
    drop = getattr(caller.storage, "drop", None)
    if drop is not None and not dsn.startswith("sqlite"):
        drop()


if __name__ == "__main__":
    main()
