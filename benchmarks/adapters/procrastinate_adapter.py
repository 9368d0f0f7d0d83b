"""Procrastinate on PostgreSQL. It stores no results, so the caller polls the job's status."""

from __future__ import annotations

import importlib.metadata
import sys
import time
from typing import Any

import procrastinate

from benchmarks.settings import CONCURRENCY, PEER_POLL_S, pg_dsn

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=pg_dsn()))


@app.task(name="add", queue="bench")
def add(x: int, y: int) -> int:
    return x + y


SUCCEEDED = procrastinate.jobs.Status.SUCCEEDED
FINISHED = {
    procrastinate.jobs.Status.SUCCEEDED,
    procrastinate.jobs.Status.FAILED,
    procrastinate.jobs.Status.CANCELLED,
    procrastinate.jobs.Status.ABORTED,
}


class Adapter:
    bulk_api = "Task.batch_defer (one INSERT per batch)"
    status_api = "JobManager.get_job_status(job_id): one SELECT"
    waits = (
        f"no result API: the harness polls get_job_status every {PEER_POLL_S * 1000:g} ms "
        "and takes the return value as known; the worker wakes on LISTEN/NOTIFY"
    )

    def __init__(self, case: Any) -> None:
        self.manager = app.job_manager

    def open(self) -> None:
        app.open()
        connector = app.connector.get_sync_connector()
        exists = connector.execute_query_one(
            "SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS found"
        )
        if not exists["found"]:
            app.schema_manager.apply_schema()

    def close(self) -> None:
        app.close()

    def reset(self) -> None:
        app.connector.get_sync_connector().execute_query(
            "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers "
            "RESTART IDENTITY CASCADE"
        )

    def submit(self) -> int:
        return add.defer(x=1, y=2)

    def submit_many(self, count: int) -> list[int]:
        return add.batch_defer(*({"x": 1, "y": 2} for _ in range(count)))

    def status(self, job_id: int) -> Any:
        return self.manager.get_job_status(job_id)

    def result(self, job_id: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            status = self.manager.get_job_status(job_id)
            if status in FINISHED:
                if status is not SUCCEEDED:
                    raise RuntimeError(f"job {job_id} ended as {status}")
                # Procrastinate keeps no return value; add(1, 2) returned 3.
                return 3
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} still {status} after {timeout} s")
            time.sleep(PEER_POLL_S)

    def wait_finished(self, job_id: int, timeout: float) -> int:
        return self.result(job_id, timeout)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "procrastinate",
            "--app",
            "benchmarks.adapters.procrastinate_adapter.app",
            "worker",
            "--concurrency",
            str(CONCURRENCY),
            "--queues",
            "bench",
        ]
        return argv, {}

    def versions(self) -> dict[str, str]:
        return {
            package: importlib.metadata.version(package) for package in ("procrastinate", "psycopg")
        }
