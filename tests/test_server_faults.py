"""Server faults on private servers: crashes, restarts and dropped connections.

Each engine runs on a server of the tests' own (see ``servers.py``), started
once for this module on a free loopback port, so the tests may kill it. Every
test uses its own task table. Workers are subprocesses that load
``worker_app:tasks``; its ``touch_file`` task writes a file per run, so the
test can tell which keys ran. The side effect needs no database on purpose: a
task that wrote to the crashed server would wait out the outage itself, and
the worker's claims and stored outcomes would never meet it.

The tests check that a submit either returns a future whose task is stored
whole, or raises StorageError. No stored record is partial, and every stored
task completes. Workers and the caller's waiter outlive every fault.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from servers import SERVER_CLASSES, PrivateRedis, PrivateServer
from taskfuture import StorageError, TaskFuture, TaskService, TaskStatus, Worker, codec
from taskfuture.backends.redis import RedisStorage
from taskfuture.backends.sql import SQLStorage
from taskfuture.errors import TaskTimeoutError

from apptasks import register
from conftest import TESTS, stop_processes, unique_table

pytestmark = pytest.mark.slow

#: Seconds a crashed server stays down before it starts again.
DOWN_S = 1.0
#: Generous bound, in seconds, for anything that must not hang: far above the expected time.
NO_HANG_S = 20.0
#: A short connect timeout, so that a submit to a dead server fails fast.
CONNECT_TIMEOUT_S = 1.0
#: Lease of the worker subprocesses. A claim whose reply was lost keeps its
#: task until the lease runs out, so a short lease keeps the tests short.
LEASE_S = 5.0
#: Attempts per task: a run lost to a fault counts as one.
MAX_ATTEMPTS = 10

#: The columns, or hash fields, that every record contains from its submit on.
REQUIRED_FIELDS = (
    "id",
    "name",
    "queue",
    "status",
    "payload",
    "version",
    "attempts",
    "max_attempts",
    "created_at",
    "available_at",
)


@pytest.fixture(scope="module", params=list(SERVER_CLASSES))
def private_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateServer]:
    server = SERVER_CLASSES[request.param](tmp_path_factory.mktemp(request.param))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(private_server: PrivateServer) -> PrivateServer:
    # A test that failed while the server was down leaves it down.
    private_server.ensure_running()
    return private_server


def wait_until(condition: Callable[[], bool], timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {description}")
        time.sleep(0.05)


class Workload:
    """One test's task table on a private server, its worker subprocesses and their runs."""

    def __init__(self, server: PrivateServer, folder: Path) -> None:
        self.server = server
        self.folder = folder
        self.table = unique_table()
        self.sql = server.engine != "redis"
        self.task_name = "touch_file"
        self.effects = folder / "effects"
        self.effects.mkdir()
        self.services: list[TaskService] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    def _admin(self) -> sa.Engine:
        admin = getattr(self.server, "admin", None)
        assert isinstance(admin, sa.Engine)
        return admin

    # -- submitting --------------------------------------------------------------

    def service(self, **options: Any) -> TaskService:
        """Build a caller's service on the private server, with the task declared by name."""
        options.setdefault("poll_interval_s", 0.05)
        options.setdefault("connect_timeout_s", CONNECT_TIMEOUT_S)
        options.setdefault("max_attempts", MAX_ATTEMPTS)
        service = TaskService(self.server.dsn, table=self.table, **options)
        self.services.append(service)
        service.create_schema()
        service.declare(self.task_name)
        return service

    def arguments(self, key: int, seconds: float = 0.0) -> list[Any]:
        """Return the task's arguments for ``key``; the task sleeps ``seconds`` after its write."""
        return [str(self.effects), f"key{key}", seconds]

    @staticmethod
    def value(key: int) -> str:
        """Return the result of the task for ``key``."""
        return f"key{key}"

    @staticmethod
    def key_of(payload: str) -> int:
        """Return the key that a stored payload was submitted with."""
        args, _ = codec.decode_call(payload)
        return int(str(args[1]).removeprefix("key"))

    # -- workers -----------------------------------------------------------------

    def _start_worker(self, concurrency: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            TASKFUTURE_DSN=self.server.dsn,
            TASKFUTURE_TABLE=self.table,
            TASKFUTURE_LEASE=str(LEASE_S),
            TASKFUTURE_POLL_INTERVAL="0.05",
            TASKFUTURE_CONNECT_TIMEOUT=str(CONNECT_TIMEOUT_S),
            PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        )
        log = (self.folder / f"worker-{len(self.workers)}.log").open("wb")
        command = [sys.executable, "-m", "taskfuture", "worker", "--app", "worker_app:tasks"]
        process = subprocess.Popen(
            [*command, "-c", str(concurrency)],
            cwd=TESTS,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.workers.append(process)
        return process

    def start_workers(self, count: int, concurrency: int = 4) -> list[subprocess.Popen[bytes]]:
        """Start ``count`` workers and wait until each has set up its storage.

        A worker that cannot reach the server at start waits for it, so a test
        that crashes the server waits for its workers' start first, or the
        fault would meet a worker that has not claimed anything yet.
        """
        first = len(self.workers)
        started = [self._start_worker(concurrency) for _ in range(count)]
        logs = [self.folder / f"worker-{index}.log" for index in range(first, first + count)]
        wait_until(
            lambda: all("starting on" in log.read_text(errors="replace") for log in logs),
            NO_HANG_S,
            f"{count} worker(s) started",
        )
        return started

    def dead_workers(self) -> list[str]:
        """Describe each worker subprocess that exited, with the end of its log."""
        dead = []
        for index, process in enumerate(self.workers):
            if process.poll() is not None:
                log = (self.folder / f"worker-{index}.log").read_text(errors="replace")
                tail = "\n".join(log.splitlines()[-15:])
                dead.append(f"worker {index} exited with {process.returncode}:\n{tail}")
        return dead

    def ran_keys(self) -> set[int]:
        """Return the keys whose task started at least once: each run writes a file first."""
        return {int(path.name.split(".")[0].removeprefix("key")) for path in self.effects.iterdir()}

    # -- what is stored ------------------------------------------------------------

    def records(self) -> dict[str, dict[str, Any]]:
        """Read every stored record of the table by id, bypassing taskfuture."""
        if self.sql:
            with self._admin().connect() as connection:
                rows = connection.exec_driver_sql(f"SELECT * FROM {self.table}").mappings()
                return {str(row["id"]): dict(row) for row in rows}
        assert isinstance(self.server, PrivateRedis)
        client = self.server.admin
        records: dict[str, dict[str, Any]] = {}
        for key in client.scan_iter(match=f"{{{self.table}}}:task:*", count=1000):
            fields = client.hgetall(key).items()
            records[str(key).rsplit(":", 1)[1]] = {str(name): value for name, value in fields}
        return records

    def defects(self, task_id: str, record: dict[str, Any]) -> list[str]:
        """Return what makes a stored record partial or inconsistent; empty when it is whole."""
        found = [f"{field} is missing" for field in REQUIRED_FIELDS if record.get(field) is None]
        if found:
            return found
        if str(record["id"]) != task_id:
            found.append(f"id field {record['id']!r} differs from the key")
        if record["status"] not in {status.value for status in TaskStatus}:
            found.append(f"status {record['status']!r} is not a task status")
        if record["name"] != self.task_name:
            found.append(f"name {record['name']!r} is not {self.task_name!r}")
        try:
            self.key_of(str(record["payload"]))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            found.append(f"payload {str(record['payload'])[:80]!r} does not decode: {exc}")
        if not self.sql:
            found += self._redis_index_defects(task_id, record)
        return found

    def _redis_index_defects(self, task_id: str, record: dict[str, Any]) -> list[str]:
        """Check that a PENDING task is queued or delayed, and a RUNNING one is leased."""
        assert isinstance(self.server, PrivateRedis)
        client = self.server.admin
        prefix = f"{{{self.table}}}"
        status = record["status"]
        if status not in (TaskStatus.PENDING.value, TaskStatus.RUNNING.value):
            return []
        if (
            status == TaskStatus.RUNNING.value
            and client.zscore(f"{prefix}:leases", task_id) is None
        ):
            return ["RUNNING but not in the lease index"]
        if (
            status == TaskStatus.PENDING.value
            and client.zscore(f"{prefix}:delayed", task_id) is not None
        ):
            return []
        entry = record.get("entry")
        if entry is None:
            return [f"{status} but neither queued in a stream nor delayed"]
        if not client.xrange(f"{prefix}:queue:{record['queue']}", entry, entry):
            return [f"{status} with stream entry {entry} that its stream does not hold"]
        return []

    def close(self) -> None:
        stop_processes(self.workers)
        if self.services:
            storage = self.services[0].storage
            assert isinstance(storage, SQLStorage | RedisStorage)
            with contextlib.suppress(StorageError):
                storage.drop()
        for service in self.services:
            service.close()


@pytest.fixture
def workload(server: PrivateServer, tmp_path: Path) -> Iterator[Workload]:
    workload = Workload(server, tmp_path)
    try:
        yield workload
    finally:
        workload.close()


def check_records(workload: Workload) -> dict[str, dict[str, Any]]:
    """Read every stored record and fail on any partial one; return them by id."""
    records = workload.records()
    defects = {
        task_id: found
        for task_id, record in records.items()
        if (found := workload.defects(task_id, record))
    }
    assert defects == {}, f"partial records: {defects}"
    return records


# -- submit ---------------------------------------------------------------------------------


def test_submit_to_stopped_server_raises(
    server: PrivateServer, workload: Workload, caplog: pytest.LogCaptureFixture
) -> None:
    service = workload.service()
    name = workload.task_name
    [worker] = workload.start_workers(1)
    # A stored task and a warm pool: the submits below meet dead pooled connections first.
    before = service.submit_with_options(name, workload.arguments(0))
    assert before.result(timeout=NO_HANG_S) == workload.value(0)
    server.kill()

    started = time.monotonic()
    with pytest.raises(StorageError) as single:
        service.submit_with_options(name, workload.arguments(1))
    single_s = time.monotonic() - started
    started = time.monotonic()
    with pytest.raises(StorageError) as batch:
        service.submit_many(name, [workload.arguments(key) for key in (2, 3, 4)])
    batch_s = time.monotonic() - started
    server.start()

    assert single_s < NO_HANG_S, f"a submit to a stopped server took {single_s:.1f} s"
    assert batch_s < NO_HANG_S, f"submit_many to a stopped server took {batch_s:.1f} s"
    for caught in (single, batch):
        assert server.password not in str(caught.value)
        assert "***" in str(caught.value)
    stored_keys = {
        workload.key_of(record["payload"]) for record in check_records(workload).values()
    }
    assert stored_keys == {0}
    after = service.submit_with_options(name, workload.arguments(5))
    assert after.result(timeout=NO_HANG_S * 2) == workload.value(5)
    assert workload.ran_keys() == {0, 5}
    assert worker.poll() is None, workload.dead_workers()
    assert server.password not in caplog.text


#: What the server goes through in the submit stream test, in order: "down"
#: from the kill until the server accepts connections again, "disconnected"
#: after every connection was terminated.
PHASES = ("up", "down", "restarted", "disconnected")


@dataclasses.dataclass
class SubmitAttempt:
    """One submit call of the stream: its keys, its futures or its error, and when it ran."""

    keys: list[int]
    #: Indexes into PHASES when the call started and when it returned.
    first_phase: int
    last_phase: int
    seconds: float
    futures: list[TaskFuture[Any]]
    error: BaseException | None = None

    def overlaps(self, phase: str) -> bool:
        return self.first_phase <= PHASES.index(phase) <= self.last_phase


def test_submits_across_crash_are_whole_or_absent(
    server: PrivateServer, workload: Workload
) -> None:
    service = workload.service(poll_interval_s=0.2)
    name = workload.task_name
    workload.start_workers(2)
    attempts: list[SubmitAttempt] = []
    stop = threading.Event()
    phase = [0]

    def submit_stream() -> None:
        next_key = 0
        while not stop.is_set():
            # Every third call stores a batch of four, which must be all or none.
            keys = list(range(next_key, next_key + (4 if len(attempts) % 3 == 2 else 1)))
            next_key += len(keys)
            first_phase = phase[0]
            started = time.monotonic()
            futures: list[TaskFuture[Any]] = []
            error: BaseException | None = None
            try:
                if len(keys) == 1:
                    futures = [service.submit_with_options(name, workload.arguments(keys[0]))]
                else:
                    futures = service.submit_many(name, [workload.arguments(k) for k in keys])
            except BaseException as exc:
                error = exc
            seconds = time.monotonic() - started
            attempts.append(SubmitAttempt(keys, first_phase, phase[0], seconds, futures, error))
            time.sleep(0.005)

    def stored_calls() -> int:
        return sum(1 for attempt in attempts if attempt.error is None)

    submitter = threading.Thread(target=submit_stream, name="submit-stream")
    submitter.start()
    try:
        wait_until(lambda: stored_calls() >= 30, NO_HANG_S, "30 submits were stored")
        phase[0] = PHASES.index("down")
        server.kill()
        time.sleep(DOWN_S)
        server.start()
        phase[0] = PHASES.index("restarted")
        stored_before = stored_calls()
        wait_until(
            lambda: stored_calls() >= stored_before + 30,
            NO_HANG_S,
            "30 more submits were stored after the restart",
        )
        phase[0] = PHASES.index("disconnected")
        terminated = server.terminate_connections()
        stored_before = stored_calls()
        wait_until(
            lambda: stored_calls() >= stored_before + 30,
            NO_HANG_S,
            "30 more submits were stored after the connections were terminated",
        )
    finally:
        stop.set()
        submitter.join(timeout=NO_HANG_S)
    assert not submitter.is_alive(), "a submit hung"

    slowest = max(attempt.seconds for attempt in attempts)
    assert slowest < NO_HANG_S, f"a submit took {slowest:.1f} s"
    errors = [attempt.error for attempt in attempts if attempt.error is not None]
    unexpected = [error for error in errors if not isinstance(error, StorageError)]
    assert unexpected == [], f"submits raised other than StorageError: {unexpected!r}"
    assert errors, "no submit met the crash, so the test showed nothing"
    assert not any(server.password in str(error) for error in errors)
    # A dropped connection is retried on a new one, so only a stopped server fails a submit.
    assert terminated >= 1
    failed_up = [
        f"{PHASES[attempt.first_phase]}: {attempt.error!r}"
        for attempt in attempts
        if attempt.error is not None and not attempt.overlaps("down")
    ]
    assert failed_up == []

    futures = [future for attempt in attempts for future in attempt.futures]
    _, not_done = concurrent.futures.wait(futures, timeout=60)
    assert not not_done, f"{len(not_done)} of {len(futures)} submitted tasks did not finish"
    records = check_records(workload)
    keys_by_id = {
        task_id: workload.key_of(record["payload"]) for task_id, record in records.items()
    }
    stored_keys = set(keys_by_id.values())
    assert len(stored_keys) == len(keys_by_id), "a key was stored twice"
    for attempt in attempts:
        if attempt.error is not None:
            # The commit may have reached the server before the reply was lost:
            # then the whole call is stored, never a part of it.
            found = [key for key in attempt.keys if key in stored_keys]
            assert found in ([], attempt.keys), f"a failed call stored {found} of {attempt.keys}"
            continue
        for key, future in zip(attempt.keys, attempt.futures, strict=True):
            assert keys_by_id.get(future.task_id) == key, f"task of key {key} is not stored"
            assert future.result(timeout=0) == workload.value(key)
    wait_until(
        lambda: all(r["status"] == "COMPLETED" for r in workload.records().values()),
        NO_HANG_S * 2,
        "every stored task completed, including those stored by a failed submit",
    )
    assert stored_keys <= workload.ran_keys()
    assert workload.dead_workers() == []


# -- claims and outcomes ----------------------------------------------------------------------


def test_workers_outlive_crashes_and_dropped_connections(
    server: PrivateServer, workload: Workload
) -> None:
    task_count = 300
    # A slow waiter leaves the two cores to the workers.
    service = workload.service(poll_interval_s=0.5)
    workers = workload.start_workers(2)
    calls = [workload.arguments(key, 0.05) for key in range(task_count)]
    futures = service.submit_many(workload.task_name, calls)
    progress = [0]

    def progressed(count: int) -> Callable[[], bool]:
        def check() -> bool:
            ran = len(workload.ran_keys())
            if ran >= progress[0] + count:
                progress[0] = ran
                return True
            return False

        return check

    wait_until(progressed(40), NO_HANG_S * 2, "the workers ran 40 tasks")
    server.restart(DOWN_S)
    wait_until(progressed(40), NO_HANG_S * 2, "the workers ran 40 tasks after the first crash")
    terminated = server.terminate_connections()
    wait_until(progressed(40), NO_HANG_S * 2, "the workers ran 40 tasks after the disconnect")
    server.restart(DOWN_S)
    _, not_done = concurrent.futures.wait(futures, timeout=60)

    assert terminated >= 2, "too few connections were terminated to reach both workers"
    assert progress[0] < task_count, "the tasks finished before the last fault"
    assert not not_done, f"{len(not_done)} of {task_count} futures did not resolve"
    results = [future.result(timeout=0) for future in futures]
    assert results == [workload.value(key) for key in range(task_count)]
    statuses = {record["status"] for record in check_records(workload).values()}
    assert statuses == {"COMPLETED"}
    assert workload.ran_keys() == set(range(task_count))
    assert all(worker.poll() is None for worker in workers), workload.dead_workers()


def test_worker_waits_for_down_server(server: PrivateServer, workload: Workload) -> None:
    service = workload.service()
    server.kill()
    try:
        waiting = workload._start_worker(concurrency=2)
        stopped = workload._start_worker(concurrency=1)
        logs = [workload.folder / f"worker-{index}.log" for index in (0, 1)]
        wait_until(
            lambda: all("cannot set up its storage" in log.read_text() for log in logs),
            NO_HANG_S,
            "both workers reported the unreachable server",
        )
        stopped.send_signal(signal.SIGTERM)
        assert stopped.wait(timeout=NO_HANG_S) == 0, workload.dead_workers()
        assert waiting.poll() is None, workload.dead_workers()
    finally:
        server.start()

    future = service.submit(workload.task_name, *workload.arguments(1))

    assert future.result(timeout=NO_HANG_S) == workload.value(1)
    assert server.password not in logs[0].read_text()


# -- waits ------------------------------------------------------------------------------------


def test_wait_times_out_then_resolves(
    server: PrivateServer, workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only a push, a resubscribe's re-read or the MariaDB poll may resolve a
    # future now, not the periodic re-check of push engines.
    monkeypatch.setattr("taskfuture.future.SAFETY_RECHECK_S", 3600.0)
    caller = workload.service()
    register(caller)
    runner = workload.service()
    register(runner)
    worker = Worker(runner, concurrency=2)
    worker.start()
    try:
        # The task runs on through the outage and stops early when the worker stops.
        future = caller.submit("cooperative", 3.0)
        wait_until(lambda: future.status() is TaskStatus.RUNNING, NO_HANG_S, "the task started")
        outcome: list[BaseException | object] = []

        def wait_for_result() -> None:
            try:
                outcome.append(future.result(timeout=1.0))
            except BaseException as exc:
                outcome.append(exc)

        waiting = threading.Thread(target=wait_for_result, name="waiting-caller")
        waiting.start()
        server.kill()
        waiting.join(timeout=NO_HANG_S)
        waiter_thread = caller._waiter._thread
        time.sleep(DOWN_S)
        server.start()

        assert not waiting.is_alive(), "result(timeout=1.0) hung while the server was down"
        assert len(outcome) == 1
        assert isinstance(outcome[0], TaskTimeoutError), f"expected a timeout, got {outcome[0]!r}"
        assert waiter_thread is not None and waiter_thread.is_alive()
        done, _ = concurrent.futures.wait([future], timeout=NO_HANG_S)
        assert future in done, "the finished task did not reach the future after the restart"
        assert future.result(timeout=0) == "finished"
        later = caller.submit("add", 2, 3)
        done, _ = concurrent.futures.wait([later], timeout=NO_HANG_S)
        assert later in done, "a task submitted after the restart did not reach its future"
        assert later.result(timeout=0) == 5
    finally:
        worker.stop(timeout_s=2)
