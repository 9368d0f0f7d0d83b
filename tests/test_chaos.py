"""Chaos: worker processes killed with SIGKILL while they drain a queue.

The bounded run is part of ``make test``; ``make chaos`` runs the full one
(5 000 tasks per engine). Every task writes a side-effect file named after
itself, so the files prove what ran: a completed task ran at least once, a
task cancelled before any worker claimed it never ran.
"""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from taskfuture import TaskService, TaskStatus

from apptasks import register
from conftest import ENGINES, engine_dsn, unique_table

TESTS = Path(__file__).parent
FULL = os.environ.get("TASKFUTURE_CHAOS_FULL") == "1"
SUBPROCESS_ENGINES = [engine for engine in ENGINES if engine != "memory"]


class WorkerFleet:
    """Worker subprocesses on one engine, with a thread that kills one about every second."""

    def __init__(self, dsn: str, table: str, size: int) -> None:
        self.env = {
            **os.environ,
            "TASKFUTURE_DSN": dsn,
            "TASKFUTURE_TABLE": table,
            "TASKFUTURE_LEASE": "2",
            "TASKFUTURE_POLL_INTERVAL": "50ms",
            "TASKFUTURE_MAX_ATTEMPTS": "50",
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        self.size = size
        self.workers: list[subprocess.Popen[bytes]] = []
        self.kills = 0
        self._stop = threading.Event()
        self._killer = threading.Thread(target=self._kill_loop, daemon=True)

    def start(self) -> None:
        for _ in range(self.size):
            self.workers.append(self._spawn())
        self._killer.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "taskfuture", "worker", "--app", "worker_app:tasks", "-c", "2"],
            env=self.env,
            cwd=TESTS,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _kill_loop(self) -> None:
        while not self._stop.wait(random.uniform(0.7, 1.3)):
            index = random.randrange(len(self.workers))
            victim = self.workers[index]
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            self.kills += 1
            self.workers[index] = self._spawn()

    def calm(self) -> None:
        """Stop killing; the workers left running finish the queue."""
        self._stop.set()
        self._killer.join(10)

    def close(self) -> None:
        self.calm()
        for worker in self.workers:
            worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()


@pytest.fixture(params=SUBPROCESS_ENGINES)
def chaos_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskService]:
    dsn = engine_dsn(request.param, tmp_path)
    service = TaskService(
        dsn, table=unique_table(), lease_s=2, poll_interval_s=0.05, max_attempts=50
    )
    register(service)
    service.create_schema()
    yield service
    drop = getattr(service.storage, "drop", None)
    if drop is not None and request.param != "sqlite":
        drop()
    service.close()


def run_chaos(service: TaskService, folder: Path, task_count: int, chaos_s: float) -> int:
    """Drain ``task_count`` tasks, killing workers for up to ``chaos_s`` seconds; return kills."""
    fleet = WorkerFleet(service.settings.dsn, service.settings.table, size=4)
    # Each task takes 50 ms, so eight worker slots need seconds to drain the
    # queue and the killer thread hits workers that hold tasks.
    calls = [(str(folder), f"task{index}", 0.05) for index in range(task_count)]
    futures = service.submit_many("touch_file", calls)
    fleet.start()
    try:
        cancelled = [future for future in futures[::25] if future.cancel()]
        deadline = time.monotonic() + chaos_s
        while time.monotonic() < deadline and sum(f.done() for f in futures) < 0.9 * task_count:
            time.sleep(0.2)
        fleet.calm()
        _, not_done = concurrent.futures.wait(futures, timeout=240)
    finally:
        fleet.close()

    assert not not_done, f"{len(not_done)} of {task_count} futures never resolved"
    records = {
        record.task_id: record for record in service.storage.get_many([f.task_id for f in futures])
    }
    assert len(records) == task_count, "a task record was lost"
    ran = {path.name.split(".")[0] for path in folder.iterdir()}
    for index, future in enumerate(futures):
        record = records[future.task_id]
        assert record.status.terminal, f"task{index} is {record.status}"
        if record.status is TaskStatus.COMPLETED:
            assert future.result(timeout=0) == f"task{index}"
            assert f"task{index}" in ran, f"task{index} completed without running"
        elif record.status is TaskStatus.CANCELLED:
            assert future in cancelled
            if record.started_at is None:
                assert f"task{index}" not in ran, f"task{index} ran after a cancel while queued"
        else:
            pytest.fail(f"task{index} failed: {record.error}")
    return fleet.kills


@pytest.mark.slow
def test_chaos_bounded(chaos_service: TaskService, tmp_path: Path) -> None:
    folder = tmp_path / "effects"
    folder.mkdir()

    kills = run_chaos(chaos_service, folder, task_count=300, chaos_s=4)

    assert kills >= 1


@pytest.mark.chaos
@pytest.mark.skipif(not FULL, reason="set TASKFUTURE_CHAOS_FULL=1 (make chaos) for the full run")
def test_chaos_full(chaos_service: TaskService, tmp_path: Path) -> None:
    folder = tmp_path / "effects"
    folder.mkdir()

    kills = run_chaos(chaos_service, folder, task_count=5000, chaos_s=120)

    assert kills >= 2
