"""arq on Redis. The worker runs with ``arq benchmarks.adapters.arq_adapter.WorkerSettings``."""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import Job

from benchmarks.settings import CONCURRENCY, PEER_POLL_S, REDIS_DBS, REDIS_HOST, REDIS_PORT

REDIS = RedisSettings(host=REDIS_HOST, port=REDIS_PORT, database=REDIS_DBS["arq"])


async def add(ctx: dict[str, Any], x: int, y: int) -> int:
    return x + y


class WorkerSettings:
    functions = [add]
    redis_settings = REDIS
    max_jobs = CONCURRENCY
    poll_delay = PEER_POLL_S


class Adapter:
    bulk_api = None
    status_api = "Job.status(): reads the result, in-progress and queue keys"
    waits = (
        f"Job.result(poll_delay={PEER_POLL_S}): polls every {PEER_POLL_S * 1000:g} ms "
        f"(default 500 ms); the worker polls the queue every {PEER_POLL_S * 1000:g} ms "
        "(poll_delay, default 500 ms)"
    )

    def __init__(self, case: Any) -> None:
        self.redis: ArqRedis | None = None

    async def open(self) -> None:
        self.redis = await create_pool(REDIS)

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def reset(self) -> None:
        assert self.redis is not None
        keys = [key async for key in self.redis.scan_iter(match="arq:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await self.redis.delete(*keys[start : start + 1000])

    async def submit(self) -> Job:
        assert self.redis is not None
        job = await self.redis.enqueue_job("add", 1, 2)
        assert job is not None
        return job

    async def status(self, job: Job) -> Any:
        return await job.status()

    async def result(self, job: Job, timeout: float) -> Any:
        return await job.result(timeout=timeout, poll_delay=PEER_POLL_S)

    async def wait_finished(self, job: Job, timeout: float) -> Any:
        return await self.result(job, timeout)

    def worker_command(self) -> tuple[list[str], dict[str, str]]:
        arq = str(sys.executable).rsplit("/", 1)[0] + "/arq"
        return [arq, "benchmarks.adapters.arq_adapter.WorkerSettings"], {}

    def versions(self) -> dict[str, str]:
        return {package: importlib.metadata.version(package) for package in ("arq", "redis")}
