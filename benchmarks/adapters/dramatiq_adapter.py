"""Dramatiq with the Redis broker and the Redis results backend."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from dramatiq.results.errors import ResultMissing

from benchmarks.settings import CONCURRENCY, redis_url

NAMESPACE = "dramatiq"
RESULT_KEY = re.compile(rb"[0-9a-f]{32}")
broker = RedisBroker(url=redis_url("dramatiq"), namespace=NAMESPACE)
backend = RedisBackend(url=redis_url("dramatiq"), namespace="dramatiq-results")
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", store_results=True)
def add(x: int, y: int) -> int:
    return x + y


class Adapter:
    bulk_api = None
    status_api = "RedisBackend.get_result(message, block=False): one GET (no status API)"
    waits = (
        "Message.get_result(block=True): BRPOPLPUSH on the result key (push); "
        "the idle worker polls the queue with backoff from 5 ms up to 1 s (worker_timeout)"
    )

    def __init__(self, case: Any) -> None:
        self.client = broker.client

    def open(self) -> None:
        self.client.ping()

    def close(self) -> None:
        broker.close()

    def reset(self) -> None:
        # Queue keys share the namespace prefix; result keys are bare MD5 digests, and
        # this Redis database holds only Dramatiq's keys.
        keys = [
            key
            for key in self.client.scan_iter(count=1000)
            if key.startswith(b"dramatiq") or RESULT_KEY.fullmatch(key)
        ]
        for start in range(0, len(keys), 1000):
            self.client.delete(*keys[start : start + 1000])

    def submit(self) -> Any:
        return add.send(1, 2)

    def status(self, message: Any) -> str:
        try:
            backend.get_result(message, block=False)
        except ResultMissing:
            return "missing"
        return "done"

    def result(self, message: Any, timeout: float) -> Any:
        return message.get_result(backend=backend, block=True, timeout=int(timeout * 1000))

    def wait_finished(self, message: Any, timeout: float) -> Any:
        return self.result(message, timeout)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        argv = [
            sys.executable,
            "-m",
            "dramatiq",
            "benchmarks.adapters.dramatiq_adapter",
            "--processes",
            "1",
            "--threads",
            str(CONCURRENCY),
            "--queues",
            "bench",
        ]
        return argv, {}

    def versions(self) -> dict[str, str]:
        return {package: importlib.metadata.version(package) for package in ("dramatiq", "redis")}
