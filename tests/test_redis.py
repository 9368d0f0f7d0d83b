"""Redis backend: key layout, DSN options, and failures with real processes.

Tests that kill connections or restart the server start a redis-server of
their own on a free loopback port, so the shared server on 6379 is never
disturbed. Worker subprocesses load ``worker_app:tasks``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from servers import PrivateRedis, free_port
from taskfuture import TaskService, TaskStatus
from taskfuture.backends.redis import DEFAULT_SOCKET_TIMEOUT_S, MIN_TTL_S, RedisStorage
from taskfuture.config import Settings
from taskfuture.errors import (
    ConcurrentModificationError,
    ConfigurationError,
    StorageError,
    TaskNotFoundError,
)
from taskfuture.models import Transition

from apptasks import register
from conftest import ENGINE_DSNS, TESTS, WaitFor, require_engine, unique_table

SHARED_DSN = ENGINE_DSNS["redis"] or "redis://127.0.0.1:6379/0"


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


class Workers:
    """Worker subprocesses running ``worker_app:tasks``, killed at teardown."""

    def __init__(self, dsn: str, table: str, folder: Path) -> None:
        self.dsn = dsn
        self.table = table
        self.folder = folder
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, concurrency: int = 1, lease_s: float = 30) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            TASKFUTURE_DSN=self.dsn,
            TASKFUTURE_TABLE=self.table,
            TASKFUTURE_LEASE=str(lease_s),
            TASKFUTURE_POLL_INTERVAL="0.05",
            PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        )
        log = (self.folder / f"worker-{len(self.processes)}.log").open("wb")
        command = [sys.executable, "-m", "taskfuture", "--dsn", self.dsn, "worker"]
        command += ["--app", "worker_app:tasks", "-c", str(concurrency)]
        process = subprocess.Popen(
            command,
            cwd=TESTS,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)


@pytest.fixture
def shared_service() -> Iterator[TaskService]:
    """A service on the shared server, under a key prefix of its own that is dropped after."""
    require_engine("redis")
    service = TaskService(SHARED_DSN, table=unique_table(), poll_interval_s=0.02)
    service.create_schema()
    register(service)
    yield service
    storage = service.storage
    assert isinstance(storage, RedisStorage)
    storage.drop()
    service.close()


def storage_of(service: TaskService) -> RedisStorage:
    storage = service.storage
    assert isinstance(storage, RedisStorage)
    return storage


def raw_client(service: TaskService) -> redis.Redis:
    return redis.Redis.from_url(service.settings.dsn, decode_responses=True)


# -- DSN and connection options ----------------------------------------------------------


def test_dsn_sets_database_user_and_timeouts() -> None:
    dsn = "redis://app:s3cret@127.0.0.1:6390/3?socket_timeout=2.5&socket_connect_timeout=0.5"
    storage = RedisStorage(Settings(dsn=dsn, connect_timeout_s=4))

    options = storage._pool.connection_kwargs
    assert options["db"] == 3
    assert options["username"] == "app"
    assert options["password"] == "s3cret"
    assert options["socket_timeout"] == 2.5
    assert options["socket_connect_timeout"] == 0.5
    storage.close()


def test_dsn_without_timeouts_uses_settings() -> None:
    storage = RedisStorage(Settings(dsn="redis://127.0.0.1:6390", connect_timeout_s=4))

    options = storage._pool.connection_kwargs
    assert options["socket_connect_timeout"] == 4
    assert options["socket_timeout"] == DEFAULT_SOCKET_TIMEOUT_S
    assert options.get("db", 0) == 0
    storage.close()


def test_rediss_dsn_uses_tls() -> None:
    storage = RedisStorage(Settings(dsn="rediss://127.0.0.1:6390/0?ssl_cert_reqs=none"))

    assert issubclass(storage._pool.connection_class, redis.SSLConnection)
    storage.close()


def test_unknown_dsn_option_is_rejected_masked() -> None:
    with pytest.raises(ConfigurationError, match="unknown option") as caught:
        RedisStorage(Settings(dsn="redis://app:s3cret@127.0.0.1:6390/0?colour=blue"))

    assert "colour" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert "***" in str(caught.value)


def test_invalid_dsn_value_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="socket_timeout"):
        RedisStorage(Settings(dsn="redis://127.0.0.1:6390/0?socket_timeout=soon"))


def test_resp2_replies_are_read(shared_service: TaskService) -> None:
    settings = shared_service.settings.replace(dsn=SHARED_DSN.split("?")[0] + "?protocol=2")
    storage = RedisStorage(settings)
    future = shared_service.tasks["add"].submit(1, 2)

    try:
        record = storage.get(future.task_id)
        records = storage.get_many([future.task_id, str(uuid.uuid4())])
    finally:
        storage.close()

    assert record is not None
    assert record.task_id == future.task_id
    assert [found.task_id for found in records] == [future.task_id]


def test_commands_packed_without_hiredis(
    shared_service: TaskService, monkeypatch: pytest.MonkeyPatch
) -> None:
    import taskfuture.backends.redis as backend

    monkeypatch.setattr(backend, "_pack_command", None)
    future = shared_service.tasks["echo"].submit("naïve", b"\x00")

    record = shared_service.storage.get(future.task_id)

    assert record is not None
    assert record.payload == shared_service.storage.get_many([future.task_id])[0].payload


def test_transaction_connection_is_rejected(shared_service: TaskService) -> None:
    record = shared_service._new_record("add", (1, 2), {}, None, None, None, None)

    with pytest.raises(ConfigurationError, match="connection="):
        shared_service.storage.enqueue([record], connection=object())


def test_wrong_key_type_raises_storage_error(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 2)
    client = raw_client(shared_service)
    prefix = "{" + shared_service.settings.table + "}"
    client.set(f"{prefix}:leases", "not a sorted set")
    client.delete(f"{prefix}:task:{future.task_id}")
    client.set(f"{prefix}:task:{future.task_id}", "not a hash")

    with pytest.raises(StorageError, match="WRONGTYPE"):
        storage.claim("probe", ["default"], 1, 30)
    with pytest.raises(StorageError, match="WRONGTYPE"):
        storage.get(future.task_id)
    with pytest.raises(StorageError, match="WRONGTYPE"):
        storage.get_many([future.task_id, str(uuid.uuid4())])
    client.close()


# -- unreachable server ------------------------------------------------------------------------


def test_closed_port_raises_storage_error_masked() -> None:
    dsn = f"redis://app:s3cret@127.0.0.1:{free_port()}/0"
    service = TaskService(dsn, table=unique_table(), connect_timeout_s=2)
    register(service)

    started = time.monotonic()
    with pytest.raises(StorageError) as caught:
        service.tasks["add"].submit(1, 2)
    elapsed = time.monotonic() - started

    assert elapsed < 2, f"failing took {elapsed:.2f} s, more than the connect timeout"
    assert "s3cret" not in str(caught.value)
    assert "app:***@" in str(caught.value)
    service.close()


def test_silent_listener_times_out_at_connect_timeout() -> None:
    # A listener whose accept queue is full drops new handshakes, like an
    # unreachable host, so only the connect timeout ends the wait.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    storage = RedisStorage(
        Settings(dsn=f"redis://:s3cret@127.0.0.1:{port}/0", connect_timeout_s=0.5)
    )

    started = time.monotonic()
    try:
        with pytest.raises(StorageError) as caught:
            storage.get(str(uuid.uuid4()))
        elapsed = time.monotonic() - started
    finally:
        storage.close()
        for filler in fillers:
            filler.close()
        listener.close()

    assert elapsed < 1.5, f"failing took {elapsed:.2f} s with a 0.5 s connect timeout"
    assert "s3cret" not in str(caught.value)


def test_waiting_on_unreachable_server_logs(caplog: pytest.LogCaptureFixture) -> None:
    storage = RedisStorage(Settings(dsn=f"redis://127.0.0.1:{free_port()}/0"))
    stop = threading.Event()

    started = time.monotonic()
    storage.wait_for_work(["default"], 0.3, stop)
    elapsed = time.monotonic() - started
    storage.close()

    assert 0.25 < elapsed < 2
    assert "Waiting for work" in caplog.text


def test_feed_retries_unreachable_server(
    caplog: pytest.LogCaptureFixture, wait_for: WaitFor
) -> None:
    storage = RedisStorage(Settings(dsn=f"redis://:s3cret@127.0.0.1:{free_port()}/0"))
    calls: list[list[str]] = []
    unsubscribe = storage.subscribe(lambda ids: calls.append(list(ids)))
    assert unsubscribe is not None

    wait_for(lambda: "lost its connection" in caplog.text, 5)
    unsubscribe()
    storage.close()

    assert calls == []
    assert "s3cret" not in caplog.text


# -- key layout and bookkeeping -------------------------------------------------------------------


def test_finished_task_leaves_only_its_hash(shared_service: TaskService) -> None:
    service = shared_service
    worker_service = TaskService(settings=service.settings)
    register(worker_service)
    from taskfuture import Worker

    worker = Worker(worker_service, concurrency=1)
    worker.start()
    try:
        future = service.tasks["add"].submit(1, 2)
        assert future.result(timeout=10) == 3
    finally:
        worker.stop(timeout_s=2)
        worker_service.close()
    prefix = "{" + service.settings.table + "}"
    client = raw_client(service)

    keys = set(client.scan_iter(match="*" + service.settings.table + "*", count=1000))
    ttl_ms = client.pttl(f"{prefix}:task:{future.task_id}")
    record = service.storage.get(future.task_id)

    assert all(key.startswith(prefix + ":") for key in keys)
    assert 0 < ttl_ms <= service.settings.retention_s * 1000
    assert client.xlen(f"{prefix}:queue:default") == 0
    assert client.xpending(f"{prefix}:queue:default", "taskfuture")["pending"] == 0
    assert client.zcard(f"{prefix}:leases") == 0
    assert record is not None
    assert client.zscore(f"{prefix}:expiring", future.task_id) == record.expires_at
    client.close()


def test_short_retention_keeps_minimum_ttl(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 1)
    [claimed] = storage.claim("probe", ["default"], 1, 30)
    now = time.time()
    storage.transition(
        future.task_id,
        claimed.version,
        Transition(TaskStatus.COMPLETED, finished_at=now, expires_at=now, result="2", release=True),
    )
    client = raw_client(shared_service)

    ttl_ms = client.pttl("{" + shared_service.settings.table + "}:task:" + future.task_id)

    assert MIN_TTL_S * 1000 - 5000 < ttl_ms <= MIN_TTL_S * 1000
    client.close()


def test_cancelled_queued_task_leaves_stream(shared_service: TaskService) -> None:
    future = shared_service.tasks["add"].submit(1, 2)
    client = raw_client(shared_service)
    stream = "{" + shared_service.settings.table + "}:queue:default"
    assert client.xlen(stream) == 1

    assert future.cancel() is True

    assert client.xlen(stream) == 0
    assert shared_service.storage.claim("probe", ["default"], 10, 30) == []
    client.close()


def test_claim_skips_entry_of_cancelled_task(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 2)
    record = storage.get(future.task_id)
    assert record is not None
    client = raw_client(shared_service)
    key = "{" + shared_service.settings.table + "}:task:" + future.task_id
    # The scripts never leave an entry for a CANCELLED record; make one to
    # check that a claim skips and deletes such a stale entry.
    client.hset(key, "status", "CANCELLED")

    assert storage.claim("probe", ["default"], 10, 30) == []
    assert client.xlen("{" + shared_service.settings.table + "}:queue:default") == 0
    client.close()


def test_delayed_task_is_claimed_when_due(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.submit_with_options("add", (1, 2), delay=0.4)

    assert storage.claim("probe", ["default"], 10, 30) == []
    time.sleep(0.45)
    claimed = storage.claim("probe", ["default"], 10, 30)

    assert [record.task_id for record in claimed] == [future.task_id]
    assert claimed[0].attempts == 1


def test_release_queues_task_again(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 2)
    [first] = storage.claim("worker-a", ["default"], 1, 30)

    storage.transition(
        future.task_id,
        first.version,
        Transition(TaskStatus.PENDING, available_at=time.time(), release=True),
    )
    [second] = storage.claim("worker-b", ["default"], 1, 30)

    assert second.task_id == future.task_id
    assert second.attempts == 2
    assert second.worker_id == "worker-b"
    assert storage.find_expired_leases(10) == []


def test_expired_lease_is_found(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 2)
    storage.claim("dead-worker", ["default"], 1, 0.05)
    time.sleep(0.1)

    expired = storage.find_expired_leases(10)

    assert [record.task_id for record in expired] == [future.task_id]
    assert storage.extend_leases("other-worker", [future.task_id], 30) == set()
    assert storage.extend_leases("dead-worker", [future.task_id], 30) == {future.task_id}
    assert storage.find_expired_leases(10) == []


def test_transition_many_reports_each_outcome(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    futures = shared_service.submit_many("add", [(1, 1), (2, 2)])
    claimed = {record.task_id: record for record in storage.claim("probe", ["default"], 2, 30)}
    first, second = (claimed[future.task_id] for future in futures)
    done = Transition(TaskStatus.COMPLETED, finished_at=time.time(), result="2", release=True)
    missing_id = str(uuid.uuid4())

    outcomes = storage.transition_many(
        [
            (first.task_id, first.version, done),
            (second.task_id, second.version - 1, done),
            (missing_id, 1, done),
        ]
    )

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ConcurrentModificationError)
    assert isinstance(outcomes[2], TaskNotFoundError)
    assert storage.get(first.task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    assert storage.get(second.task_id).status is TaskStatus.RUNNING  # type: ignore[union-attr]


def test_duplicate_task_id_is_rejected(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 2)
    record = storage.get(future.task_id)
    assert record is not None

    storage.enqueue([record])  # the same submit again, as after a lost reply: stored once
    record.created_at += 1
    with pytest.raises(ConcurrentModificationError):
        storage.enqueue([record])

    assert len(storage.claim("probe", ["default"], 10, 30)) == 1


def test_delete_expired_counts_and_keeps_tombstones(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    futures = shared_service.submit_many("add", [(1, 1), (2, 2), (3, 3)])
    now = time.time()
    for record in storage.claim("probe", ["default"], 3, 30):
        storage.transition(
            record.task_id,
            record.version,
            Transition(TaskStatus.COMPLETED, finished_at=now, expires_at=now, release=True),
        )
    ids = [future.task_id for future in futures]
    client = raw_client(shared_service)
    # As if its TTL had run out: gone, and not counted as deleted by the sweep.
    client.delete("{" + shared_service.settings.table + "}:task:" + ids[2])
    assert storage.expired_ids(ids) == {ids[2]}

    deleted = storage.delete_expired(100)

    assert deleted == 2
    assert storage.get_many(ids) == []
    assert storage.expired_ids([*ids, str(uuid.uuid4())]) == set(ids)
    assert client.zcard("{" + shared_service.settings.table + "}:expiring") == 0
    client.close()


def test_sweep_removes_orphaned_pending_entry(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    future = shared_service.tasks["add"].submit(1, 2)
    storage.claim("probe", ["default"], 1, 30)
    client = raw_client(shared_service)
    client.delete("{" + shared_service.settings.table + "}:task:" + future.task_id)
    stream = "{" + shared_service.settings.table + "}:queue:default"
    assert client.xpending(stream, "taskfuture")["pending"] == 1

    storage.delete_expired(100)

    assert client.xpending(stream, "taskfuture")["pending"] == 0
    assert client.xlen(stream) == 0
    client.close()


def test_drop_deletes_every_key(shared_service: TaskService) -> None:
    shared_service.submit_many("add", [(1, 1), (2, 2)])
    shared_service.submit_with_options("add", (1, 1), delay=60)
    client = raw_client(shared_service)
    pattern = "{" + shared_service.settings.table + "}:*"
    assert list(client.scan_iter(match=pattern, count=1000))

    storage_of(shared_service).drop()

    assert list(client.scan_iter(match=pattern, count=1000)) == []
    client.close()


def test_wait_for_work_wakes_on_submit(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    assert storage.claim("probe", ["default"], 1, 30) == []
    stop = threading.Event()
    timer = threading.Timer(0.2, lambda: shared_service.tasks["add"].submit(1, 2))

    timer.start()
    started = time.monotonic()
    storage.wait_for_work(["default"], 5.0, stop)
    elapsed = time.monotonic() - started

    assert 0.1 < elapsed < 2.0
    assert len(storage.claim("probe", ["default"], 1, 30)) == 1


def test_wait_for_work_returns_on_stop(shared_service: TaskService) -> None:
    storage = storage_of(shared_service)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()

    started = time.monotonic()
    storage.wait_for_work(["default"], 30.0, stop)

    assert time.monotonic() - started < 1.5


# -- lost connections, restarts and killed workers ------------------------------------------------


def test_feed_resubscribes_after_client_kill(
    private_redis: PrivateRedis, wait_for: WaitFor
) -> None:
    storage = RedisStorage(Settings(dsn=private_redis.dsn, table=unique_table()))
    calls: list[list[str]] = []
    unsubscribe = storage.subscribe(lambda ids: calls.append(list(ids)))
    assert unsubscribe is not None
    try:
        wait_for(lambda: calls == [[]], 5)

        assert private_redis.terminate_connections() >= 1
        wait_for(lambda: len(calls) == 2, 5)
        private_redis.admin.publish(storage._channel, "some-task")
        wait_for(lambda: len(calls) == 3, 5)
    finally:
        unsubscribe()
        storage.close()

    assert calls == [[], [], ["some-task"]]


def test_waits_survive_client_kill(private_redis: PrivateRedis, tmp_path: Path) -> None:
    table = unique_table()
    service = TaskService(private_redis.dsn, table=table, poll_interval_s=0.05)
    service.create_schema()
    register(service)
    workers = Workers(private_redis.dsn, table, tmp_path)
    workers.start(concurrency=4)
    try:
        futures = [service.tasks["sleep"].submit(1.0) for _ in range(4)]
        deadline = time.monotonic() + 15
        while any(future.status() is not TaskStatus.RUNNING for future in futures):
            assert time.monotonic() < deadline, "the worker did not start the tasks"
            time.sleep(0.02)

        killed = private_redis.terminate_connections()

        assert killed >= 3, "expected the caller's, the feed's and the worker's connections"
        assert [future.result(timeout=15) for future in futures] == [1.0] * 4
        assert service.tasks["add"].submit(2, 3).result(timeout=10) == 5
    finally:
        workers.close()
        service.close()


def test_waits_survive_server_restart(private_redis: PrivateRedis, tmp_path: Path) -> None:
    table = unique_table()
    service = TaskService(private_redis.dsn, table=table, poll_interval_s=0.05)
    service.create_schema()
    register(service)
    workers = Workers(private_redis.dsn, table, tmp_path)
    workers.start(concurrency=4)
    try:
        futures = [service.tasks["sleep"].submit(1.0) for _ in range(3)]
        deadline = time.monotonic() + 15
        while any(future.status() is not TaskStatus.RUNNING for future in futures):
            assert time.monotonic() < deadline, "the worker did not start the tasks"
            time.sleep(0.02)

        private_redis.restart(down_s=0.5)

        assert [future.result(timeout=20) for future in futures] == [1.0] * 3
        assert service.tasks["add"].submit(2, 3).result(timeout=10) == 5
    finally:
        workers.close()
        service.close()


def test_killed_worker_task_is_reclaimed(shared_service: TaskService, tmp_path: Path) -> None:
    table = shared_service.settings.table
    workers = Workers(SHARED_DSN, table, tmp_path)
    first = workers.start(concurrency=1, lease_s=2)
    try:
        # The pid task sleeps on its first attempt only and reports its pid as progress.
        future: Any = shared_service.tasks["pid"].submit(30)
        deadline = time.monotonic() + 15
        while future.progress() is None or future.progress().message != str(first.pid):
            assert time.monotonic() < deadline, "the first worker did not start the task"
            time.sleep(0.02)

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        second = workers.start(concurrency=1, lease_s=2)

        assert future.result(timeout=20) == second.pid
        assert future.attempts == 2
    finally:
        workers.close()
