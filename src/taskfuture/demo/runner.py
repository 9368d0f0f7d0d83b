"""The end-to-end demo behind ``taskfuture demo``.

It runs on SQLite in a working folder, starts a real worker process and a
local SMTP server, and sends the three kinds of work taskfuture is for
through the queue: a CSV import, a report and an email. On the way it shows
a wait that times out, a cancellation and a failure whose traceback comes
back from the worker. Every step is checked, and the exit status is 0 only
when all checks pass.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib.resources
import importlib.util
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console
from rich.markdown import Markdown
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as ProgressBar
from rich.table import Table
from rich.text import Text

from taskfuture import (
    Progress,
    TaskCancelledError,
    TaskFailedError,
    TaskFuture,
    TaskFutureError,
    TaskService,
    TaskStatus,
    TaskTimeoutError,
)

if TYPE_CHECKING:
    from taskfuture.demo.mailbox import LocalSMTPServer

T = TypeVar("T")

#: The module and attribute of the service the demo's worker runs.
APP = "taskfuture.demo.tasks:tasks"
#: Packages of the ``demo`` extra.
REQUIRED_PACKAGES = ("aiosmtpd", "vega_datasets")
DATASET = "seattle-weather.csv"
#: Maximum wait for any one task. In a normal run each task takes at most a few seconds.
TASK_WAIT_S = 30.0
#: Maximum wait for the worker's first task, which includes the worker's start-up.
WORKER_START_S = 30.0
#: How long the worker may take to stop after SIGTERM.
WORKER_STOP_S = 15.0
#: Checks that must be present and passed. A step that failed early never adds its own.
REQUIRED_CHECKS = (
    "worker runs tasks",
    "all CSV rows imported",
    "report written",
    "email delivered",
    "wait timed out",
    "task cancelled",
    "failure reached the caller",
    "worker stops on SIGTERM",
)
SENDER = "taskfuture-demo@localhost"
RECIPIENT = "reports@localhost"


@dataclasses.dataclass
class Check:
    """One expected behaviour of the demo and whether it was seen."""

    label: str
    passed: bool
    detail: str


@dataclasses.dataclass
class Submission:
    """A task the demo submitted, kept for the final table."""

    name: str
    future: TaskFuture[Any]


def run_demo(workdir: str | None) -> int:
    """Run the demo in ``workdir`` (default: a new temporary folder) and return the exit status."""
    # Markup is off because paths and error messages may contain square brackets.
    console = Console(markup=False)
    missing = [name for name in REQUIRED_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        console.print(
            f"error: the demo needs {', '.join(missing)}; "
            "install them with: pip install 'taskfuture[demo]'"
        )
        return 1
    if workdir is None:
        folder = Path(tempfile.mkdtemp(prefix="taskfuture-demo-"))
    else:
        folder = Path(workdir).resolve()
        folder.mkdir(parents=True, exist_ok=True)
    return Demo(console, folder).run()


def dataset_path() -> Path:
    """Return the path of the CSV file that the ``vega_datasets`` package ships.

    The package is located without being imported, because its ``__init__``
    imports pandas, which the demo does not need.
    """
    spec = importlib.util.find_spec("vega_datasets")
    if spec is None:
        raise FileNotFoundError("package vega_datasets is not installed")
    package = importlib.util.module_from_spec(spec)
    # The worker opens the file by path, so it must be a real file, not inside a zip.
    path = Path(str(importlib.resources.files(package).joinpath("_data", DATASET)))
    if not path.is_file():
        raise FileNotFoundError(f"{DATASET} not found at {path}; reinstall vega_datasets")
    return path


def count_csv_rows(path: Path) -> int:
    with path.open(newline="", encoding="utf-8") as file:
        return sum(1 for _ in csv.DictReader(file))


class Demo:
    """One run of the demo in ``workdir``. Its :meth:`run` returns the exit status."""

    def __init__(self, console: Console, workdir: Path) -> None:
        self.console = console
        self.workdir = workdir
        self.dsn = f"sqlite:///{workdir / 'taskfuture.db'}"
        self.weather_db = workdir / "weather.db"
        self.report_path = workdir / "report.md"
        self.worker_log = workdir / "worker.log"
        self.checks: list[Check] = []
        self.submissions: list[Submission] = []
        self.service: TaskService | None = None
        self.worker: subprocess.Popen[bytes] | None = None

    # -- the run ---------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        self.console.rule("taskfuture demo")
        self.console.print(f"working folder: {self.workdir}")
        self.console.print(f"task storage:   {self.dsn}")
        try:
            self._run_steps()
        except KeyboardInterrupt:
            self.console.print("interrupted; stopping the worker")
            self._stop_worker()
            return 130
        except (TaskFutureError, OSError) as exc:
            # The steps catch their own errors, so this is the set-up: settings,
            # storage or the SMTP server.
            self.console.print(f"error: the demo could not start: {exc}", style="red")
            return 1
        finally:
            if self.service is not None:
                self.service.close()
        return self._summarize(time.monotonic() - started)

    def _run_steps(self) -> None:
        from taskfuture.demo.mailbox import LocalSMTPServer

        self.service = TaskService(self.dsn)
        for name in (
            "demo.ping",
            "demo.import_csv",
            "demo.build_report",
            "demo.email_report",
            "demo.sleep",
            "demo.long_job",
        ):
            # Only the worker imports the task code, so this process submits by name.
            self.service.declare(name)

        with LocalSMTPServer() as smtp:
            self.console.print(f"SMTP server:    {smtp.host}:{smtp.port} (aiosmtpd)")
            try:
                if self._step("worker", self._start_worker) is None:
                    return
                rows = self._step("import", self._import_weather)
                report = self._step("report", self._build_report) if rows else None
                if report:
                    self._step("email", lambda: self._email_report(smtp))
                self._step("timeout", self._show_timeout)
                self._step("cancel", self._show_cancel)
                self._step("failure", self._show_failure)
                self._print_task_table()
            finally:
                self._stop_worker()

    def _step(self, label: str, action: Callable[[], T]) -> T | None:
        """Run one step, turning an unexpected error into a failed check instead of a crash."""
        try:
            return action()
        except Exception as exc:
            self.console.print(f"step {label} failed: {type(exc).__name__}: {exc}", style="red")
            self._check(f"{label} step ran", False, f"{type(exc).__name__}: {exc}")
            return None

    def _check(self, label: str, passed: bool, detail: str) -> bool:
        self.checks.append(Check(label, passed, detail))
        return passed

    def _submit(self, name: str, *args: Any) -> TaskFuture[Any]:
        assert self.service is not None
        future = self.service.submit(name, *args)
        self.submissions.append(Submission(name, future))
        return future

    # -- worker ----------------------------------------------------------------

    def _start_worker(self) -> bool:
        self.console.rule("1. Start a worker")
        command = [sys.executable, "-m", "taskfuture", "worker", "--app", APP, "-c", "4"]
        command += ["--shutdown-timeout", "5"]
        environment = {**os.environ, "TASKFUTURE_DSN": self.dsn}
        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                command, env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        command_line = " ".join([Path(sys.executable).name, *command[1:]])
        self.console.print(f"$ {command_line}   (pid {self.worker.pid})")
        self.console.print(f"  log: {self.worker_log}")

        future = self._submit("demo.ping")
        deadline = time.monotonic() + WORKER_START_S
        while True:
            try:
                reply = future.result(timeout=0.5)
                break
            except TaskTimeoutError:
                if self.worker.poll() is not None:
                    self._print_log_tail()
                    raise RuntimeError(
                        f"the worker exited with status {self.worker.returncode} before "
                        f"running a task; see {self.worker_log}"
                    ) from None
                if time.monotonic() > deadline:
                    self._print_log_tail()
                    raise RuntimeError(
                        f"the worker ran no task within {WORKER_START_S} s; see {self.worker_log}"
                    ) from None
        self.console.print(f"demo.ping -> {reply!r}")
        return self._check("worker runs tasks", True, str(reply))

    def _stop_worker(self) -> None:
        worker, self.worker = self.worker, None
        if worker is None or worker.poll() is not None:
            return
        worker.send_signal(signal.SIGTERM)
        try:
            status = worker.wait(timeout=WORKER_STOP_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            self._check("worker stops on SIGTERM", False, f"still running after {WORKER_STOP_S} s")
            return
        self.console.print(f"worker stopped on SIGTERM with exit status {status}")
        self._check("worker stops on SIGTERM", status == 0, f"exit status {status}")

    def _print_log_tail(self, lines: int = 20) -> None:
        text = self.worker_log.read_text(encoding="utf-8", errors="replace")
        tail = "\n".join(text.splitlines()[-lines:])
        self.console.print(Panel(Text(tail), title=f"last lines of {self.worker_log.name}"))

    # -- the three jobs ----------------------------------------------------------

    def _import_weather(self) -> int:
        self.console.rule("2. Import a CSV file into SQLite")
        source = dataset_path()
        expected = count_csv_rows(source)
        self.console.print(f"source: {source} ({expected} rows)")
        self.console.print(f"target: table weather in {self.weather_db}")

        future = self._submit("demo.import_csv", str(source), str(self.weather_db), 50, 0.03)
        updates: list[Progress] = []
        lock = threading.Lock()
        columns = (
            TextColumn("{task.description:<20}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with ProgressBar(*columns, console=self.console) as bar:
            bar_id = bar.add_task("waiting for worker", total=None)

            def show(_: TaskFuture[Any], progress: Progress) -> None:
                with lock:
                    updates.append(progress)
                bar.update(
                    bar_id,
                    completed=progress.done,
                    total=progress.total,
                    description=progress.message,
                )

            future.add_progress_callback(show)
            result = future.result(timeout=TASK_WAIT_S)
            # The last report may reach the callback after result() returns.
            final = future.progress()
            if final is not None:
                bar.update(bar_id, completed=final.done, total=final.total, description="imported")

        with contextlib.closing(sqlite3.connect(self.weather_db)) as connection:
            (stored,) = connection.execute("SELECT COUNT(*) FROM weather").fetchone()
        self.console.print(
            f"imported {result['rows']} rows; table weather holds {stored} rows; "
            f"{len(updates)} progress updates received"
        )
        self._check("progress reached the caller", bool(updates), f"{len(updates)} updates")
        passed = result["rows"] == expected and stored == expected
        self._check("all CSV rows imported", passed, f"{stored} stored, {expected} in {DATASET}")
        return int(stored) if passed else 0

    def _build_report(self) -> Path | None:
        self.console.rule("3. Build a monthly report")
        future = self._submit("demo.build_report", str(self.weather_db), str(self.report_path))
        result = future.result(timeout=TASK_WAIT_S)
        self.console.print(
            f"report: {result['path']} ({result['months']} months, "
            f"{result['first']} to {result['last']})"
        )
        passed = self.report_path.is_file() and result["months"] > 0
        self._check("report written", passed, f"{result['months']} months in {self.report_path}")
        if not passed:
            return None
        lines = self.report_path.read_text(encoding="utf-8").splitlines()
        head = lines[:14]
        self.console.print(Panel(Markdown("\n".join(head)), title=f"{self.report_path.name}, head"))
        self.console.print(f"... {len(lines) - len(head)} more lines in {self.report_path.name}")
        return self.report_path

    def _email_report(self, smtp: LocalSMTPServer) -> None:
        self.console.rule("4. Email the report")
        future = self._submit(
            "demo.email_report", str(self.report_path), smtp.host, smtp.port, SENDER, RECIPIENT
        )
        sent = future.result(timeout=TASK_WAIT_S)
        mail = smtp.mailbox.find(sent["message_id"])
        if mail is None:
            self._check("email delivered", False, f"no message {sent['message_id']} arrived")
            return
        message = mail.parse()
        self.console.print(
            f"email delivered to the local SMTP server: from {mail.sender} "
            f"to {', '.join(mail.recipients)}, subject {message['Subject']!r}, "
            f"{len(mail.content)} bytes"
        )
        # SMTP carries text with CRLF line endings, but the report file has LF.
        attachments = [
            part.get_content().replace("\r\n", "\n") for part in message.iter_attachments()
        ]
        report_text = self.report_path.read_text(encoding="utf-8")
        self._check("email delivered", True, f"{len(mail.content)} bytes to {RECIPIENT}")
        self._check(
            "email carries the report",
            attachments == [report_text],
            f"{len(attachments)} attachment(s)",
        )

    # -- timeout, cancellation and failure -------------------------------------

    def _show_timeout(self) -> None:
        self.console.rule("5. A wait that times out")
        future = self._submit("demo.sleep", 1.0)
        started = time.monotonic()
        try:
            future.result(timeout=0.2)
        except TaskTimeoutError as exc:
            waited = time.monotonic() - started
            self.console.print(f"result(timeout=0.2) raised TaskTimeoutError after {waited:.2f} s")
            self.console.print(f"  {exc}")
        else:
            self._check("wait timed out", False, "result(timeout=0.2) returned a value")
            return
        slept = future.result(timeout=TASK_WAIT_S)
        self.console.print(f"the task went on running and completed after {slept:.2f} s")
        self._check("wait timed out", True, f"TaskTimeoutError after {waited:.2f} s")

    def _show_cancel(self) -> None:
        self.console.rule("6. A cancellation")
        future = self._submit("demo.long_job", 100, 0.1)
        deadline = time.monotonic() + TASK_WAIT_S
        while (progress := future.progress()) is None or progress.done < 3:
            if future.done() or time.monotonic() > deadline:
                raise RuntimeError(f"demo.long_job did not start as expected: {future!r}")
            time.sleep(0.05)
        self.console.print(f"demo.long_job is running: {progress.message}")

        cancelled = future.cancel()
        self.console.print(f"future.cancel() -> {cancelled}")
        try:
            future.result(timeout=TASK_WAIT_S)
        except TaskCancelledError as exc:
            self.console.print(f"result() raised TaskCancelledError: {exc}")
            raised = True
        else:
            raised = False
        status = future.status()
        self.console.print(f"status() -> {status.value}")
        stopped = self._wait_for_log(f"Task {future.task_id} (demo.long_job) stopped", 5.0)
        if stopped:
            self.console.print("the worker log shows that the task stopped")
        else:
            self.console.print(
                f"the worker log shows no stop of the task yet; see {self.worker_log}"
            )
        passed = cancelled and raised and status is TaskStatus.CANCELLED
        self._check("task cancelled", passed, f"cancel() -> {cancelled}, status {status.value}")

    def _wait_for_log(self, text: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.worker_log.read_text(encoding="utf-8", errors="replace"):
                return True
            time.sleep(0.1)
        return False

    def _show_failure(self) -> None:
        self.console.rule("7. A failure with its remote traceback")
        missing = self.workdir / "missing.csv"
        future = self._submit("demo.import_csv", str(missing), str(self.weather_db))
        try:
            future.result(timeout=TASK_WAIT_S)
        except FileNotFoundError as exc:
            remote_traceback = getattr(exc, "remote_traceback", "")
            self.console.print(
                f"caught {type(exc).__name__} (also a TaskFailedError: "
                f"{isinstance(exc, TaskFailedError)}): {getattr(exc, 'message', exc)}"
            )
            self.console.print(Panel(Text(remote_traceback.rstrip()), title="remote traceback"))
            passed = isinstance(exc, TaskFailedError) and "Traceback" in remote_traceback
            self._check("failure reached the caller", passed, "FileNotFoundError with traceback")
            return
        self._check("failure reached the caller", False, "the import of a missing file succeeded")

    # -- results ---------------------------------------------------------------

    def _print_task_table(self) -> None:
        self.console.rule("8. Every task")
        table = Table()
        table.add_column("task id", no_wrap=True, min_width=36)
        table.add_column("name", no_wrap=True)
        table.add_column("status", no_wrap=True)
        for submission in self.submissions:
            status = submission.future.status()
            table.add_row(submission.future.task_id, submission.name, status.value)
        self.console.print(table)

    def _summarize(self, elapsed_s: float) -> int:
        self.console.rule("Checks")
        table = Table("check", "result", "detail")
        for check in self.checks:
            table.add_row(check.label, "ok" if check.passed else "FAILED", check.detail)
        self.console.print(table)
        seen = {check.label for check in self.checks}
        missing = [label for label in REQUIRED_CHECKS if label not in seen]
        failed = [check.label for check in self.checks if not check.passed] + missing
        if failed:
            self.console.print(
                f"demo failed after {elapsed_s:.1f} s: {', '.join(failed)}; "
                f"see {self.worker_log} for the worker's log",
                style="red",
            )
            return 1
        self.console.print(
            f"demo passed: all {len(self.checks)} checks ok in {elapsed_s:.1f} s; "
            f"files are in {self.workdir}",
            style="green",
        )
        return 0
