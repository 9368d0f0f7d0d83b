"""Celery with a Redis broker, and either the Redis result backend or the database
result backend on PostgreSQL (BENCH_VARIANT=redis or db). The worker runs with
``celery -A benchmarks.adapters.celery_adapter worker``.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from benchmarks.settings import CONCURRENCY, PEER_POLL_S, pg_dsn, redis_url

VARIANT = os.environ.get("BENCH_VARIANT", "redis")
BROKER = redis_url("celery")
BACKEND = (
    redis_url("celery")
    if VARIANT == "redis"
    else "db+" + pg_dsn().replace("postgresql://", "postgresql+psycopg://", 1)
)

app = Celery("bench", broker=BROKER, backend=BACKEND)
app.conf.update(
    task_default_queue="bench",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="add")
def add(x: int, y: int) -> int:
    return x + y


class Adapter:
    bulk_api = None
    status_api = "AsyncResult(task_id).state: one read of the result backend"

    def __init__(self, case: Any) -> None:
        if case.variant != VARIANT:
            raise RuntimeError(
                f"BENCH_VARIANT is {VARIANT!r} but case {case.name} needs {case.variant!r}"
            )
        if VARIANT == "redis":
            self.waits = (
                "AsyncResult.get(): pub/sub on the task's result channel (push); "
                "the worker blocks on the broker (BRPOP)"
            )
        else:
            self.waits = (
                f"AsyncResult.get(interval={PEER_POLL_S}): polls the result table every "
                f"{PEER_POLL_S * 1000:g} ms (default 500 ms); the worker blocks on the broker"
            )

    def open(self) -> None:
        add.delay  # noqa: B018 - binds the task to the app before the first timing

    def close(self) -> None:
        app.close()

    def reset(self) -> None:
        client = app.broker_connection().default_channel.client
        for pattern in ("bench*", "_kombu*", "unacked*", "celery-task-meta-*", "celery*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        if VARIANT == "db":
            from sqlalchemy import text

            session = app.backend.ResultSession()
            try:
                session.execute(text("DELETE FROM celery_taskmeta"))
                session.commit()
            finally:
                session.close()

    def submit(self) -> AsyncResult:
        return add.delay(1, 2)

    def status(self, handle: AsyncResult) -> str:
        return AsyncResult(handle.id, app=app).state

    def result(self, handle: AsyncResult, timeout: float) -> Any:
        if VARIANT == "db":
            return handle.get(timeout=timeout, interval=PEER_POLL_S)
        return handle.get(timeout=timeout)

    def wait_finished(self, handle: AsyncResult, timeout: float) -> Any:
        return self.result(handle, timeout)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "benchmarks.adapters.celery_adapter",
            "worker",
            "--concurrency",
            str(CONCURRENCY),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return argv, {"BENCH_VARIANT": VARIANT}

    def versions(self) -> dict[str, str]:
        packages = ("celery", "kombu", "redis", "SQLAlchemy", "psycopg")
        return {package: importlib.metadata.version(package) for package in packages}
