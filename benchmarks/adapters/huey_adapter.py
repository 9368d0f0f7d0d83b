"""Huey on Redis, with and without result notification, and on SQLite storage.

BENCH_VARIANT picks ``redis`` (results found by polling), ``redis-notify``
(``notify_result=True``: the worker pushes to a list the caller blocks on) or
``sqlite``. The consumer runs with ``huey_consumer`` and thread workers.
"""

from __future__ import annotations

import importlib.metadata
import os
import sqlite3
import sys
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Result
from redis import ConnectionPool

from benchmarks.settings import (
    CONCURRENCY,
    PEER_POLL_S,
    REDIS_DBS,
    REDIS_HOST,
    REDIS_PORT,
    WORK_DIR,
)

VARIANT = os.environ.get("BENCH_VARIANT", "redis")
SQLITE_PATH = WORK_DIR / "huey-bench.db"

if VARIANT == "sqlite":
    huey = SqliteHuey("bench", filename=str(SQLITE_PATH))
else:
    pool = ConnectionPool(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DBS["huey"])
    huey = RedisHuey(
        "bench-notify" if VARIANT == "redis-notify" else "bench",
        connection_pool=pool,
        notify_result=VARIANT == "redis-notify",
    )


@huey.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


class Adapter:
    bulk_api = None
    status_api = "Huey.get(task_id, peek=True): one read of the result store (no status API)"

    def __init__(self, case: Any) -> None:
        if case.variant != VARIANT:
            raise RuntimeError(
                f"BENCH_VARIANT is {VARIANT!r} but case {case.name} needs {case.variant!r}"
            )
        poll = "polls with backoff: 50 ms, growing 1.15x per miss up to 1 s"
        if VARIANT == "redis":
            self.waits = f"Result.get(blocking=True) {poll}; the consumer blocks on BRPOP"
        elif VARIANT == "redis-notify":
            self.waits = (
                "Result.get(blocking=True) with notify_result=True: BLPOP on a per-task "
                "notification key (push); the consumer blocks on BRPOP"
            )
        else:
            self.waits = (
                f"Result.get(blocking=True) {poll}; the consumer polls the task table "
                f"from {PEER_POLL_S * 1000:g} ms (default 100 ms), growing 1.15x per miss"
            )

    def open(self) -> None:
        WORK_DIR.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        pass

    def reset(self) -> None:
        huey.flush()
        if VARIANT != "sqlite":
            client = huey.storage.conn
            keys = list(client.scan_iter(match=f"huey.notify.{huey.name}.*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])

    def submit(self) -> Result:
        return add(1, 2)

    def status(self, result: Result) -> Any:
        return huey.get(result.id, peek=True)

    def result(self, result: Result, timeout: float) -> Any:
        return result.get(blocking=True, timeout=timeout)

    def wait_finished(self, result: Result, timeout: float) -> Any:
        return result.get(blocking=True, timeout=timeout, preserve=True)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        consumer = str(sys.executable).rsplit("/", 1)[0] + "/huey_consumer"
        argv = [
            consumer,
            "benchmarks.adapters.huey_adapter.huey",
            "--workers",
            str(CONCURRENCY),
            "--worker-type",
            "thread",
            "--quiet",
        ]
        if VARIANT == "sqlite":
            argv += ["--delay", str(PEER_POLL_S)]
        return argv, {"BENCH_VARIANT": VARIANT}

    def versions(self) -> dict[str, str]:
        found = {package: importlib.metadata.version(package) for package in ("huey", "redis")}
        found["sqlite"] = sqlite3.sqlite_version
        return found
