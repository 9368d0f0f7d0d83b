"""taskfuture on SQLite, PostgreSQL, MariaDB and Redis."""

from __future__ import annotations

import concurrent.futures
import gc
import importlib.metadata
import sqlite3
import sys
import threading
import time
from typing import Any

from benchmarks.cases import Case
from benchmarks.settings import (
    CONCURRENCY,
    TASKFUTURE_TABLE,
    WORK_DIR,
    Sizes,
    mariadb_dsn,
    pg_dsn,
    redis_url,
)
from taskfuture import TaskFuture, TaskService

WAITS = {
    "sqlite": "waiter thread woken by datagrams on the local channel beside the database "
    "file; batched re-check every 5 s",
    "pg": "waiter thread woken by LISTEN/NOTIFY (sent by triggers); batched re-check every 5 s",
    "mariadb": "waiter thread, one batched poll per 100 ms (the default poll interval), since "
    "MariaDB cannot push",
    "redis": "waiter thread woken by pub/sub on the task-change channel; batched re-check "
    "every 5 s",
}


def dsn_for(variant: str) -> str:
    if variant == "sqlite":
        return f"sqlite:///{WORK_DIR / 'taskfuture-bench.db'}"
    if variant == "pg":
        return pg_dsn()
    if variant == "mariadb":
        return mariadb_dsn()
    if variant == "redis":
        return redis_url("taskfuture")
    raise ValueError(f"unknown taskfuture variant {variant!r}")


class Adapter:
    bulk_api = "TaskService.submit_many (one round trip per batch)"
    status_api = "TaskService.status(task_id): one read of the record"

    def __init__(self, case: Case) -> None:
        self.case = case
        self.variant = case.variant
        self.waits = WAITS[self.variant]
        self.dsn = dsn_for(self.variant)
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self.service: TaskService | None = None

    def open(self) -> None:
        self.service = TaskService(self.dsn, table=TASKFUTURE_TABLE)
        self.add = self.service.task("add")(_add)
        self.service.create_schema()

    def close(self) -> None:
        if self.service is not None:
            self.service.close()

    def reset(self) -> None:
        """Delete every task of the benchmark table or key prefix."""
        assert self.service is not None
        storage: Any = self.service.storage
        if self.variant == "redis":
            client = getattr(storage, "client", None) or getattr(storage, "redis", None)
            if client is None:
                import redis

                client = redis.Redis.from_url(self.dsn)
            keys = list(client.scan_iter(match=f"*{TASKFUTURE_TABLE}*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
            return
        with storage.engine.begin() as conn:
            conn.execute(storage.table.delete())

    def submit(self) -> TaskFuture[int]:
        return self.add.submit(1, 2)

    def submit_many(self, count: int) -> list[TaskFuture[int]]:
        assert self.service is not None
        return self.service.submit_many("add", [(1, 2)] * count)

    def status(self, future: TaskFuture[int]) -> Any:
        assert self.service is not None
        return self.service.status(future.task_id)

    def result(self, future: TaskFuture[int], timeout: float) -> int:
        return future.result(timeout)

    def wait_finished(self, future: TaskFuture[int], timeout: float) -> int:
        return future.result(timeout)

    def results(self, futures: list[TaskFuture[int]], timeout: float) -> list[int]:
        _, not_done = concurrent.futures.wait(futures, timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} of {len(futures)} tasks unfinished")
        return [future.result(0) for future in futures]

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "taskfuture",
            "--dsn",
            self.dsn,
            "worker",
            "--app",
            "benchmarks.adapters.taskfuture_app:tasks",
            "-c",
            str(CONCURRENCY),
        ]
        return argv, {"TASKFUTURE_DSN": self.dsn, "TASKFUTURE_TABLE": TASKFUTURE_TABLE}

    def versions(self) -> dict[str, str]:
        found = {"taskfuture": importlib.metadata.version("taskfuture")}
        for package in ("SQLAlchemy", "psycopg", "PyMySQL", "redis", "hiredis"):
            try:
                found[package] = importlib.metadata.version(package)
            except importlib.metadata.PackageNotFoundError:
                continue
        found["sqlite"] = sqlite3.sqlite_version
        return found

    def hold(self, sizes: Sizes, start_worker: Any) -> dict[str, Any]:
        """Hold open futures while one worker finishes them; sample RSS and waiter queries."""
        assert self.service is not None
        from benchmarks.client import reset_peak_rss, rss_kib

        self.reset()
        gc.collect()
        baseline, _ = rss_kib()
        reset_peak_rss()
        futures: list[TaskFuture[int]] = []
        while len(futures) < sizes.memory_handles:
            count = min(sizes.bulk_batch, sizes.memory_handles - len(futures))
            futures.extend(self.submit_many(count))
        queries_before = self.service.status_queries
        argv, env = self.worker_command()
        worker = start_worker(argv, env)
        started = time.monotonic()
        samples = []
        try:
            while time.monotonic() - started < sizes.hold_s:
                time.sleep(5.0)
                samples.append(
                    {
                        "t_s": time.monotonic() - started,
                        "done": sum(1 for future in futures if future.done()),
                        "status_queries": self.service.status_queries - queries_before,
                        "rss_mib": (rss_kib()[0] - baseline) / 1024,
                    }
                )
                worker.check_alive()
        finally:
            worker.stop()
        elapsed = time.monotonic() - started
        queries = self.service.status_queries - queries_before
        _, peak = rss_kib()
        figures = {
            "futures": len(futures),
            "seconds": elapsed,
            "done": sum(1 for future in futures if future.done()),
            "status_queries": queries,
            "status_queries_per_s": queries / elapsed,
            "peak_delta_mib": (peak - baseline) / 1024,
            "threads": threading.active_count(),
            "samples": samples,
        }
        del futures
        self.reset()
        return figures


def _add(x: int, y: int) -> int:
    return x + y
