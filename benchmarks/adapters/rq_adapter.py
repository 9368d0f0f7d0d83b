"""RQ on Redis; the worker is ``rq worker-pool`` with one process per unit of concurrency."""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

from redis import Redis
from rq import Queue
from rq.job import Job

from benchmarks.settings import CONCURRENCY, redis_url

QUEUE = "bench"


def add(x: int, y: int) -> int:
    return x + y


class Adapter:
    bulk_api = "Queue.enqueue_many with Queue.prepare_data (one pipeline per batch)"
    status_api = "Job.get_status(refresh=True): one HGET"
    waits = (
        "Job.latest_result(timeout): blocking XREAD on the job's result stream (push); "
        "the worker blocks on the queue (BLPOP) and forks a work horse per job"
    )

    def __init__(self, case: Any) -> None:
        self.connection = Redis.from_url(redis_url("rq"))
        self.queue = Queue(QUEUE, connection=self.connection)

    def open(self) -> None:
        self.connection.ping()

    def close(self) -> None:
        self.connection.close()

    def reset(self) -> None:
        keys = list(self.connection.scan_iter(match="rq:*", count=1000))
        for start in range(0, len(keys), 1000):
            self.connection.delete(*keys[start : start + 1000])

    def submit(self) -> Job:
        return self.queue.enqueue(add, 1, 2)

    def submit_many(self, count: int) -> list[Job]:
        return self.queue.enqueue_many([Queue.prepare_data(add, (1, 2)) for _ in range(count)])

    def status(self, job: Job) -> Any:
        return job.get_status(refresh=True)

    def result(self, job: Job, timeout: float) -> Any:
        # latest_result blocks in whole seconds (XREAD BLOCK timeout * 1000).
        found = job.latest_result(timeout=max(1, int(timeout)))
        if found is None:
            raise TimeoutError(f"job {job.id} has no result after {timeout} s")
        return found.return_value

    def wait_finished(self, job: Job, timeout: float) -> Any:
        return self.result(job, timeout)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        rq = str(sys.executable).rsplit("/", 1)[0] + "/rq"
        argv = [
            rq,
            "worker-pool",
            "--num-workers",
            str(CONCURRENCY),
            "--url",
            redis_url("rq"),
            "--logging-level",
            "WARNING",
            QUEUE,
        ]
        return argv, {}

    def versions(self) -> dict[str, str]:
        return {package: importlib.metadata.version(package) for package in ("rq", "redis")}
