"""The ``taskfuture`` command and the worker, run as real subprocesses on SQLite."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfuture import TaskService, TaskStatus

from apptasks import register

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow


class Cli:
    """Runs ``python -m taskfuture`` against one SQLite database."""

    def __init__(self, tmp_path: Path) -> None:
        self.dsn = f"sqlite:///{tmp_path / 'cli.db'}"
        self.env = {
            **os.environ,
            "TASKFUTURE_DSN": self.dsn,
            "TASKFUTURE_POLL_INTERVAL": "20ms",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        self.workers: list[subprocess.Popen[str]] = []

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskfuture", *args],
            env=self.env,
            cwd=TESTS,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start_worker(self, *args: str, **env: str) -> subprocess.Popen[str]:
        worker = subprocess.Popen(
            [sys.executable, "-m", "taskfuture", "worker", "--app", "worker_app:tasks", *args],
            env={**self.env, **env},
            cwd=TESTS,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.workers.append(worker)
        return worker

    def service(self, **options: object) -> TaskService:
        service = TaskService(self.dsn, poll_interval_s=0.02, **options)
        register(service)
        return service


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    runner = Cli(tmp_path)
    yield runner
    for worker in runner.workers:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


def wait_status(
    service: TaskService, task_id: str, status: TaskStatus, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while service.status(task_id) is not status:
        assert time.monotonic() < deadline, f"task {task_id} never became {status}"
        time.sleep(0.02)


def test_schema_create_is_repeatable(cli: Cli) -> None:
    first = cli.run("schema", "create")
    second = cli.run("schema", "create")

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "schema ready" in second.stdout


def test_worker_runs_and_cli_reads_result(cli: Cli) -> None:
    service = cli.service()
    cli.start_worker("--concurrency", "2")
    future = service.tasks["add"].submit(40, 2)

    assert future.result(timeout=30) == 42
    status = cli.run("status", future.task_id)
    result = cli.run("result", future.task_id, "--timeout", "10")

    assert status.stdout.strip() == "COMPLETED (attempt 1)"
    assert result.returncode == 0
    assert result.stdout.strip() == "42"


def test_result_of_failed_task_prints_traceback(cli: Cli) -> None:
    service = cli.service()
    cli.start_worker()
    future = service.tasks["fail"].submit("cli failure")
    future.exception(timeout=30)

    result = cli.run("result", future.task_id)

    assert result.returncode == 1
    assert "ValueError: cli failure" in result.stderr
    assert "raise ValueError(message)" in result.stderr


def test_result_timeout_exits_124(cli: Cli) -> None:
    future = cli.service().tasks["add"].submit(1, 1)

    result = cli.run("result", future.task_id, "--timeout", "0.1")

    assert result.returncode == 124
    assert "did not finish within 0.1 s" in result.stderr


def test_cancel_pending_then_again(cli: Cli) -> None:
    future = cli.service().tasks["add"].submit(1, 1)

    first = cli.run("cancel", future.task_id)
    second = cli.run("cancel", future.task_id)

    assert first.returncode == 0
    assert first.stdout.strip() == f"task {future.task_id} cancelled"
    assert second.returncode == 0
    assert "already cancelled" in second.stdout


def test_cancel_completed_task_fails(cli: Cli) -> None:
    service = cli.service()
    cli.start_worker()
    future = service.tasks["add"].submit(1, 1)
    future.result(timeout=30)

    result = cli.run("cancel", future.task_id)

    assert result.returncode == 1
    assert "already finished as COMPLETED" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("status", "not-a-uuid"), "invalid task id 'not-a-uuid'"),
        (("status", "0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091"), "not found"),
        (("result", "0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091", "--timeout", "-1"), "invalid timeout"),
        (("--dsn", "oracle://scott:tiger@db/x", "status", "x"), "known schemes"),
    ],
)
def test_errors_print_one_line(cli: Cli, args: tuple[str, ...], message: str) -> None:
    result = cli.run(*args)

    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "tiger" not in result.stderr


def test_worker_without_app_is_usage_error(cli: Cli) -> None:
    result = cli.run("worker")

    assert result.returncode == 2
    assert "--app" in result.stderr


def test_clean_expired_from_two_processes(cli: Cli) -> None:
    service = cli.service(retention_s=0)
    futures = service.submit_many("add", [(index, 0) for index in range(200)])
    for future in futures:
        future.cancel()

    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "taskfuture", "clean-expired"],
            env=cli.env,
            cwd=TESTS,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [command.communicate(timeout=60)[0] for command in commands]

    assert all(command.returncode == 0 for command in commands)
    deleted = sum(int(output.split()[1]) for output in outputs)
    assert deleted == 200
    assert cli.run("clean-expired").stdout.strip() == "deleted 0 expired task(s)"


def test_sigterm_lets_running_task_finish(cli: Cli) -> None:
    service = cli.service()
    worker = cli.start_worker("--shutdown-timeout", "20")
    future = service.tasks["sleep"].submit(1.0)
    wait_status(service, future.task_id, TaskStatus.RUNNING)

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)

    assert worker.returncode == 0, output
    assert future.result(timeout=5) == 1.0
    assert "stopped" in output


def test_sigterm_releases_task_after_grace(cli: Cli) -> None:
    service = cli.service()
    worker = cli.start_worker("--shutdown-timeout", "0.2")
    future = service.tasks["cooperative"].submit(60)
    wait_status(service, future.task_id, TaskStatus.RUNNING)

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)

    assert worker.returncode == 0, output
    assert service.status(future.task_id) is TaskStatus.PENDING
    assert "released back to queue default" in output


def test_killed_worker_task_is_claimed_again(cli: Cli, tmp_path: Path) -> None:
    service = cli.service()
    first = cli.start_worker(TASKFUTURE_LEASE="1")
    future = service.tasks["touch_file"].submit(str(tmp_path), "run", 1.5)
    wait_status(service, future.task_id, TaskStatus.RUNNING)

    first.send_signal(signal.SIGKILL)
    first.wait(10)
    cli.start_worker(TASKFUTURE_LEASE="1")

    assert future.result(timeout=30) == "run"
    assert future.attempts == 2
    assert len(list(tmp_path.glob("run.*"))) == 2


def test_dsn_option_reaches_app_service(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other.db"

    result = cli.run("--dsn", f"sqlite:///{other}", "--app", "worker_app:tasks", "schema", "create")

    assert result.returncode == 0, result.stderr
    assert str(other) in result.stdout
