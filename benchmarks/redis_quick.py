"""Measure the five Redis figures of taskfuture on a local server and print them.

Usage::

    .venv/bin/python -m benchmarks.redis_quick [--dsn redis://127.0.0.1:6379/0] [--runs 3]

Figures, each the median of ``--runs`` runs:

- submit: tasks/s from one client calling ``submit`` in a loop (no worker).
- submit_many: tasks/s from one client submitting batches of 1000.
- status P50: ms per ``future.status()`` of a queued task.
- round trip P50: ms from ``submit`` to ``result()`` of a no-op, one worker process.
- drain: tasks/s for one worker process to finish 10 000 queued no-ops.

The workers run in child processes of this script. Every run uses its own key
prefix and deletes its keys afterwards, so a shared server is left as it was.
Unlike the other modules of this package it imports taskfuture, so it runs
only in the project's virtual environment.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskfuture import TaskService

DEFAULT_DSN = "redis://127.0.0.1:6379/0"
SUBMITS = 5000
BULK_TASKS = 20_000
BULK_BATCH = 1000
STATUS_READS = 5000
ROUND_TRIPS = 1000
DRAIN_TASKS = 10_000

#: The worker process: registers the no-op task and runs until SIGTERM.
_WORKER_CODE = textwrap.dedent(
    """
    import logging, sys
    from taskfuture import TaskService, Worker

    logging.basicConfig(level=logging.WARNING)
    service = TaskService(sys.argv[1], table=sys.argv[2], queues=sys.argv[3].split(","))

    @service.task("noop")
    def noop() -> None:
        return None

    Worker(service, concurrency=int(sys.argv[4]), shutdown_timeout_s=1).run()
    """
)


def _service(dsn: str, table: str) -> TaskService:
    from taskfuture import TaskService

    service = TaskService(dsn, table=table)
    service.create_schema()
    service.declare("noop")
    return service


def _table() -> str:
    return f"tf_bench_{uuid.uuid4().hex[:10]}"


def _start_worker(dsn: str, table: str, queue: str, concurrency: int) -> subprocess.Popen[bytes]:
    """Start a worker process; its output goes to a log file in the temporary folder."""
    command = [sys.executable, "-c", _WORKER_CODE, dsn, table, queue, str(concurrency)]
    log_path = os.path.join(tempfile.gettempdir(), f"{table}-worker.log")
    with open(log_path, "wb") as log:
        return subprocess.Popen(command, env=os.environ.copy(), stdout=log, stderr=log)


def _stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _cleanup(service: TaskService) -> None:
    drop: Callable[[], None] = getattr(service.storage, "drop")  # noqa: B009
    drop()
    service.close()


def measure_submit(dsn: str) -> float:
    """Measure tasks/s of single submits from one client."""
    service = _service(dsn, _table())
    task = service.get_task("noop")
    try:
        for _ in range(200):
            task.submit()
        started = time.perf_counter()
        for _ in range(SUBMITS):
            task.submit()
        return SUBMITS / (time.perf_counter() - started)
    finally:
        _cleanup(service)


def measure_submit_many(dsn: str) -> float:
    """Measure tasks/s of batched submits of BULK_BATCH tasks from one client."""
    service = _service(dsn, _table())
    task = service.get_task("noop")
    calls = [()] * BULK_BATCH
    try:
        task.submit_many(calls)
        started = time.perf_counter()
        for _ in range(BULK_TASKS // BULK_BATCH):
            task.submit_many(calls)
        return BULK_TASKS / (time.perf_counter() - started)
    finally:
        _cleanup(service)


def measure_status(dsn: str) -> float:
    """Measure the median ms of one ``status()`` read of a queued task."""
    service = _service(dsn, _table())
    future = service.get_task("noop").submit()
    samples = []
    try:
        for _ in range(200):
            future.status()
        for _ in range(STATUS_READS):
            started = time.perf_counter()
            future.status()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1000
    finally:
        _cleanup(service)


def measure_round_trip(dsn: str) -> float:
    """Measure the median ms from submit to result of a no-op, with one worker process."""
    table = _table()
    service = _service(dsn, table)
    task = service.get_task("noop")
    worker = _start_worker(dsn, table, "default", 1)
    samples = []
    try:
        task.submit().result(timeout=30)
        for _ in range(100):
            task.submit().result(timeout=10)
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            task.submit().result(timeout=10)
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1000
    finally:
        _stop_worker(worker)
        _cleanup(service)


def measure_drain(dsn: str, concurrency: int) -> float:
    """Measure tasks/s for one idle worker process to finish DRAIN_TASKS queued no-ops.

    The tasks are stored in one atomic call, so they all become visible at
    once. Completion is read from the size of the expiry index.
    """
    import redis

    table = _table()
    service = _service(dsn, table)
    client: Any = redis.Redis.from_url(dsn)
    worker = _start_worker(dsn, table, "drain", concurrency)
    try:
        service.submit_with_options("noop", queue="drain").result(timeout=30)
        expiring = "{" + table + "}:expiring"
        baseline = int(client.zcard(expiring))
        records = [
            service._new_record("noop", (), {}, "drain", None, None, None)
            for _ in range(DRAIN_TASKS)
        ]
        service.storage.enqueue(records)
        started = time.perf_counter()
        deadline = started + 120
        while int(client.zcard(expiring)) < baseline + DRAIN_TASKS:
            if time.perf_counter() > deadline:
                raise TimeoutError("the worker did not drain the queue within 120 s")
            time.sleep(0.005)
        return DRAIN_TASKS / (time.perf_counter() - started)
    finally:
        _stop_worker(worker)
        client.close()
        _cleanup(service)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("TASKFUTURE_BENCH_REDIS_DSN", DEFAULT_DSN))
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    parser.add_argument(
        "--drain-concurrency", type=int, default=4, help="worker concurrency for the drain"
    )
    options = parser.parse_args(argv)

    figures: list[tuple[str, Callable[[], float], str, str]] = [
        ("submit", lambda: measure_submit(options.dsn), "tasks/s", ">= 6000"),
        ("submit_many", lambda: measure_submit_many(options.dsn), "tasks/s", ">= 30000"),
        ("status P50", lambda: measure_status(options.dsn), "ms", "<= 0.2"),
        ("round trip P50", lambda: measure_round_trip(options.dsn), "ms", "<= 1.5"),
        (
            "drain",
            lambda: measure_drain(options.dsn, options.drain_concurrency),
            "tasks/s",
            ">= 3000",
        ),
    ]
    print(f"Redis at {options.dsn}, median of {options.runs} run(s), {os.cpu_count()} CPU(s)")
    for name, measure, unit, target in figures:
        values = [measure() for _ in range(options.runs)]
        runs_text = ", ".join(f"{value:.3g}" for value in values)
        median = statistics.median(values)
        print(f"{name:15} {median:10.4g} {unit:8} target {target:8} [{runs_text}]")


if __name__ == "__main__":
    main()
