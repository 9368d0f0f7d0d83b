"""Shared fixtures: one ``service`` fixture parametrized over every engine.

Engine DSNs come from environment variables with local defaults. When an
engine cannot be reached its tests are skipped, except under ``CI=true``,
where a missing engine fails the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from taskfuture import TaskService, Worker

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

IN_CI = os.environ.get("CI", "").lower() == "true"

#: Engine name -> DSN of the server the tests use (None: made per test).
ENGINE_DSNS: dict[str, str | None] = {
    "memory": None,
    "sqlite": None,
    "postgresql": os.environ.get(
        "TASKFUTURE_TEST_POSTGRESQL_DSN", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("TASKFUTURE_TEST_MARIADB_DSN", "mysql://root@127.0.0.1:3306/test"),
    "redis": os.environ.get("TASKFUTURE_TEST_REDIS_DSN", "redis://127.0.0.1:6379/0"),
}

#: Engines whose backend is implemented; the contract suite runs on each.
ENGINES = ["memory", "sqlite", "postgresql", "mariadb", "redis"]


def reachable(dsn: str) -> bool:
    parts = urlsplit(dsn)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), timeout=2):
            return True
    except OSError:
        return False


def require_engine(engine: str) -> None:
    dsn = ENGINE_DSNS[engine]
    if dsn is None or reachable(dsn):
        return
    message = f"{engine} is not reachable at {dsn}"
    if IN_CI:
        pytest.fail(f"{message}; under CI=true every engine must run")
    pytest.skip(message)


def engine_dsn(engine: str, tmp_path: Path) -> str:
    """Return a DSN for ``engine`` that no other test shares."""
    if engine == "memory":
        return f"memory://{uuid.uuid4().hex}"
    if engine == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.db'}"
    require_engine(engine)
    dsn = ENGINE_DSNS[engine]
    assert dsn is not None
    return dsn


def stop_processes(processes: list[subprocess.Popen[bytes]], grace_s: float = 15) -> None:
    """Send SIGTERM to each running process, then kill those still alive after ``grace_s``."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def unique_table() -> str:
    return f"tf_test_{uuid.uuid4().hex[:12]}"


class ServiceFactory:
    """Builds services on one engine, sharing one table, and cleans up after the test."""

    def __init__(self, engine: str, tmp_path: Path) -> None:
        self.engine = engine
        self.dsn = engine_dsn(engine, tmp_path)
        self.table = unique_table()
        self.services: list[TaskService] = []
        self.workers: list[Worker] = []

    def __call__(self, **options: Any) -> TaskService:
        options.setdefault("poll_interval_s", 0.02)
        options.setdefault("table", self.table)
        service = TaskService(self.dsn, **options)
        service.create_schema()
        self.services.append(service)
        return service

    def worker(self, service: TaskService, **options: Any) -> Worker:
        worker = Worker(service, **options)
        worker.start()
        self.workers.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.workers:
            worker.stop(timeout_s=2)
        for service in self.services:
            drop = getattr(service.storage, "drop", None)
            if drop is not None and self.engine not in ("memory", "sqlite"):
                with contextlib.suppress(Exception):
                    drop()
            service.close()


@pytest.fixture(params=ENGINES)
def make_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceFactory]:
    factory = ServiceFactory(request.param, tmp_path)
    yield factory
    factory.close()


@pytest.fixture
def service(make_service: ServiceFactory) -> TaskService:
    return make_service()


WaitFor = Callable[[Callable[[], bool], float], None]


@pytest.fixture
def wait_for() -> WaitFor:
    """Poll ``condition`` until it is true, failing after ``timeout`` seconds."""
    import time

    def wait(condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met within {timeout} s")
            time.sleep(0.01)

    return wait
