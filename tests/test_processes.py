"""Process mode with real child processes, on SQLite.

The worker runs in the test process; its children import ``worker_app:tasks``,
whose service reads the test's DSN from ``TASKFUTURE_DSN``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskfuture import (
    ConfigurationError,
    Progress,
    TaskCancelledError,
    TaskFuture,
    TaskService,
    TaskStatus,
    TaskTimeLimitError,
    Worker,
    WorkerLostError,
)

from apptasks import AppError, register
from conftest import WaitFor

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow

StartWorker = Callable[..., Worker]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TaskService]:
    dsn = f"sqlite:///{tmp_path / 'tasks.db'}"
    monkeypatch.setenv("TASKFUTURE_DSN", dsn)
    service = TaskService(dsn, poll_interval_s=0.02, lease_s=1)
    register(service)
    service.register_exception(AppError)
    yield service
    service.close()


@pytest.fixture
def start_worker(app: TaskService) -> Iterator[StartWorker]:
    workers: list[Worker] = []

    def start(**options: Any) -> Worker:
        options.setdefault("processes", 1)
        options.setdefault("app_spec", "worker_app:tasks")
        options.setdefault("process_grace_s", 0.3)
        worker = Worker(app, **options)
        worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop(timeout_s=2)


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def reported_pid(future: TaskFuture[Any], wait_for: WaitFor) -> int:
    """Wait for the pid that the task publishes as its first progress message."""
    wait_for(lambda: future.progress() is not None, 10)
    progress = future.progress()
    assert progress is not None
    return int(progress.message)


def test_result_comes_from_child(app: TaskService, start_worker: StartWorker) -> None:
    start_worker(processes=2)

    child_pid = app.tasks["pid"].submit().result(timeout=20)

    assert child_pid != os.getpid()
    assert app.tasks["add"].submit(40, 2).result(timeout=10) == 42
    assert app.tasks["async_add"].submit(1, 2).result(timeout=10) == 3


def test_progress_reaches_future(app: TaskService, start_worker: StartWorker) -> None:
    start_worker()
    future = app.tasks["progress"].submit(10)
    seen: list[float] = []
    future.add_progress_callback(lambda _, progress: seen.append(progress.done))

    assert future.result(timeout=20) == 10
    assert future.progress() == Progress(10.0, 10.0, "step 10")
    assert seen == sorted(seen)


def test_failure_keeps_type_and_traceback(app: TaskService, start_worker: StartWorker) -> None:
    start_worker()

    with pytest.raises(ValueError, match="boom in child") as caught:
        app.tasks["fail"].submit("boom in child").result(timeout=20)
    with pytest.raises(AppError) as app_error:
        app.tasks["fail_app"].submit(7).result(timeout=10)

    traceback_text = caught.value.remote_traceback  # type: ignore[attr-defined]
    assert "raise ValueError(message)" in traceback_text
    assert "apptasks.py" in traceback_text
    assert app_error.value.code == 7


def test_retry_on_matches_in_child(app: TaskService, start_worker: StartWorker) -> None:
    start_worker()

    future = app.tasks["flaky"].submit(2)

    assert future.result(timeout=20) == 3
    assert future.attempts == 3


def test_cancel_terminates_busy_child(
    app: TaskService,
    start_worker: StartWorker,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskfuture")
    start_worker()
    first_pid = app.tasks["pid"].submit().result(timeout=20)
    future = app.tasks["spin"].submit(60)
    spin_pid = reported_pid(future, wait_for)

    assert future.cancel() is True

    with pytest.raises(TaskCancelledError):
        future.result(timeout=5)
    wait_for(lambda: not process_exists(spin_pid), 10)
    next_pid = app.tasks["pid"].submit().result(timeout=20)
    assert spin_pid == first_pid
    assert next_pid != first_pid
    assert f"sending SIGTERM to child process {spin_pid}" in caplog.text
    assert f"replacing child process {spin_pid}" in caplog.text


def test_cooperative_cancel_keeps_child(
    app: TaskService, start_worker: StartWorker, wait_for: WaitFor
) -> None:
    start_worker(process_grace_s=5)
    first_pid = app.tasks["pid"].submit().result(timeout=20)
    future = app.tasks["cooperative"].submit(60)
    wait_for(lambda: future.status() is TaskStatus.RUNNING, 10)

    assert future.cancel() is True

    with pytest.raises(TaskCancelledError):
        future.result(timeout=5)
    assert app.tasks["pid"].submit().result(timeout=5) == first_pid


def test_time_limit_kills_busy_child(
    app: TaskService, start_worker: StartWorker, wait_for: WaitFor
) -> None:
    start_worker()
    first_pid = app.tasks["pid"].submit().result(timeout=20)

    with pytest.raises(TaskTimeLimitError, match=r"time limit of 0\.5 s"):
        app.tasks["spin_limited"].submit(60).result(timeout=20)

    wait_for(lambda: not process_exists(first_pid), 10)
    assert app.tasks["pid"].submit().result(timeout=20) != first_pid


def test_killed_child_task_is_retried(
    app: TaskService,
    start_worker: StartWorker,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskfuture")
    start_worker()
    future = app.tasks["pid"].submit(60)
    killed_pid = reported_pid(future, wait_for)

    os.kill(killed_pid, signal.SIGKILL)

    final_pid = future.result(timeout=20)
    assert final_pid != killed_pid
    assert future.attempts == 2
    assert f"Child process {killed_pid} in slot 1 was killed by SIGKILL" in caplog.text


def test_exiting_child_fails_task(app: TaskService, start_worker: StartWorker) -> None:
    start_worker()

    with pytest.raises(WorkerLostError, match="exited with code 3"):
        app.tasks["exit_process"].submit(3).result(timeout=20)

    assert app.tasks["add"].submit(1, 1).result(timeout=20) == 2


def test_unloadable_app_fails_start(app: TaskService, caplog: pytest.LogCaptureFixture) -> None:
    worker = Worker(app, processes=2, app_spec="no_such_module:tasks", process_grace_s=0.3)

    with pytest.raises(ConfigurationError, match="could load app 'no_such_module:tasks'"):
        worker.start()

    assert "failed to start: it exited with code 2" in caplog.text
    worker.stop(timeout_s=1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"processes": 0, "app_spec": "worker_app:tasks"}, "invalid processes 0"),
        ({"processes": 2}, "invalid app_spec None"),
        ({"processes": 2, "app_spec": "worker_app"}, "invalid app_spec 'worker_app'"),
        (
            {"processes": 2, "app_spec": "worker_app:tasks", "process_grace_s": -1},
            "invalid process_grace_s -1",
        ),
    ],
)
def test_invalid_process_options(app: TaskService, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Worker(app, **options)


def test_cli_sigterm_finishes_and_releases(
    app: TaskService, tmp_path: Path, wait_for: WaitFor
) -> None:
    env = {
        **os.environ,
        "TASKFUTURE_POLL_INTERVAL": "20ms",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "taskfuture", "worker", "--app", "worker_app:tasks"]
    options = ["--processes", "2", "--process-grace", "0.3", "--shutdown-timeout", "1.5"]
    worker = subprocess.Popen(
        [*command, *options],
        env=env,
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        child_pid = app.tasks["pid"].submit().result(timeout=30)
        finishing = app.tasks["sleep"].submit(0.5)
        spinning = app.tasks["spin"].submit(60)
        spin_pid = reported_pid(spinning, wait_for)
        wait_for(lambda: finishing.status() is TaskStatus.RUNNING, 10)

        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)

    assert worker.returncode == 0, output
    assert child_pid != worker.pid
    assert finishing.result(timeout=5) == 0.5
    assert app.status(spinning.task_id) is TaskStatus.PENDING
    assert not process_exists(spin_pid)
    assert "released back to queue default" in output
    assert "stopped" in output
