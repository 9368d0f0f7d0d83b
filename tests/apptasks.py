"""Tasks shared by the contract suite and the subprocess tests.

``register(service)`` puts the same task set on any service, so an in-process
worker and a worker subprocess (``--app worker_app:tasks``) run the same code.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from taskfuture import TaskService, current_context


class AppError(Exception):
    """An application exception type that callers register to catch as itself."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class UnregisteredError(Exception):
    """An exception type the caller does not register."""


def spin_cpu(seconds: float) -> int:
    """Keep one CPU busy for ``seconds`` without looking at the task context; return the pid."""
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        total += sum(range(1000))
    return os.getpid()


def report_pid() -> None:
    """Publish the pid of the process running the task as its progress message."""
    current_context().report_progress(0, None, str(os.getpid()))


def register(service: TaskService) -> None:
    @service.task("add")
    def add(x: int, y: int) -> int:
        return x + y

    @service.task("echo")
    def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"args": args, "kwargs": kwargs}

    @service.task("async_add")
    async def async_add(x: int, y: int) -> int:
        await asyncio.sleep(0.001)
        return x + y

    @service.task("fail")
    def fail(message: str) -> None:
        raise ValueError(message)

    @service.task("fail_app")
    def fail_app(code: int) -> None:
        raise AppError(code, "application rule broken")

    @service.task("fail_unregistered")
    def fail_unregistered() -> None:
        raise UnregisteredError("not registered by the caller")

    @service.task("sleep")
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    @service.task("cooperative")
    def cooperative(seconds: float) -> str:
        context = current_context()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            context.raise_if_cancelled()
            time.sleep(0.01)
        return "finished"

    @service.task("async_sleep")
    async def async_sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finished"

    @service.task("progress")
    def progress(steps: int) -> int:
        context = current_context()
        for step in range(1, steps + 1):
            context.report_progress(step, steps, f"step {step}")
            time.sleep(0.02)
        return steps

    @service.task("unserializable")
    def unserializable() -> object:
        return {"handle": object()}

    @service.task("attempt")
    def attempt() -> int:
        return current_context().attempt

    @service.task("flaky", retry_on=(ConnectionError,), max_attempts=3, retry_backoff_s=0.05)
    def flaky(failures: int) -> int:
        attempt = current_context().attempt
        if attempt <= failures:
            raise ConnectionError(f"attempt {attempt} failed")
        return attempt

    @service.task("limited", time_limit_s=0.3)
    def limited(seconds: float) -> str:
        context = current_context()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            context.raise_if_cancelled()
            time.sleep(0.01)
        return "finished"

    @service.task("async_limited", time_limit_s=0.3)
    async def async_limited(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "finished"

    @service.task("touch_file")
    def touch_file(folder: str, name: str, seconds: float = 0.0) -> str:
        path = Path(folder) / f"{name}.{os.getpid()}.{time.monotonic_ns()}"
        path.write_text(name)
        time.sleep(seconds)
        return name

    # -- process mode --------------------------------------------------------------------

    @service.task("pid", max_attempts=2, retry_backoff_s=0.05, retry_jitter=False)
    def pid(first_attempt_s: float = 0.0) -> int:
        report_pid()
        if current_context().attempt == 1:
            time.sleep(first_attempt_s)
        return os.getpid()

    @service.task("spin")
    def spin(seconds: float) -> int:
        report_pid()
        return spin_cpu(seconds)

    @service.task("spin_limited", time_limit_s=0.5)
    def spin_limited(seconds: float) -> int:
        report_pid()
        return spin_cpu(seconds)

    @service.task("exit_process", max_attempts=1)
    def exit_process(code: int) -> None:
        report_pid()
        os._exit(code)
