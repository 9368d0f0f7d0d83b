"""The demo: ``taskfuture demo`` end to end, with a real worker process and SMTP server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from taskfuture.demo.runner import Check, Demo, dataset_path, run_demo

pytestmark = pytest.mark.slow

#: Lines that show each behaviour the demo exists to show.
EXPECTED_LINES = [
    "demo.ping -> 'pong from worker pid",
    "imported 1461 rows; table weather holds 1461 rows",
    "Seattle weather by month, 2012-01 to 2015-12",
    "173.3",  # precipitation of 2012-01, the first row of the report
    "email delivered to the local SMTP server: from taskfuture-demo@localhost to reports@localhost",
    "result(timeout=0.2) raised TaskTimeoutError",
    "the task went on running and completed",
    "future.cancel() -> True",
    "result() raised TaskCancelledError",
    "status() -> CANCELLED",
    "caught FileNotFoundError (also a TaskFailedError: True)",
    "Traceback (most recent call last):",
    "in import_csv",
    "worker stopped on SIGTERM with exit status 0",
    "demo passed: all",
]


def test_demo_command_passes(tmp_path: Path) -> None:
    # A wide terminal keeps each checked line on one line of output.
    environment = {**os.environ, "COLUMNS": "240"}
    completed = subprocess.run(
        [sys.executable, "-m", "taskfuture", "demo", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        env=environment,
        check=False,
    )
    output = completed.stdout
    assert completed.returncode == 0, output + completed.stderr
    for line in EXPECTED_LINES:
        assert line in output, f"missing {line!r} in the demo output:\n{output}"
    report = tmp_path / "report.md"
    assert report.is_file()
    assert report.read_text(encoding="utf-8").count("\n| 20") == 48
    assert (tmp_path / "worker.log").is_file()


def test_demo_in_process_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(str(tmp_path / "new-folder")) == 0
    output = capsys.readouterr().out
    assert "demo passed" in output
    assert (tmp_path / "new-folder" / "report.md").is_file()


def test_demo_failed_check_exits_1(tmp_path: Path) -> None:
    console = Console(record=True, width=200, markup=False)
    demo = Demo(console, tmp_path)
    demo.checks.append(Check("worker runs tasks", True, ""))
    demo.checks.append(Check("email delivered", False, "no message arrived"))

    assert demo._summarize(1.0) == 1
    output = console.export_text()
    assert "demo failed" in output
    assert "email delivered" in output
    # Checks that never ran count as failures too.
    assert "task cancelled" in output.split("demo failed", 1)[1]


def test_dataset_path_finds_csv_without_pandas() -> None:
    path = dataset_path()
    assert path.name == "seattle-weather.csv"
    assert path.is_file()
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from taskfuture.demo.runner import dataset_path; dataset_path(); "
            "print('pandas' in sys.modules)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert completed.stdout.strip() == "False"
