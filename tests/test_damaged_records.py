"""Records and queue entries changed by something other than taskfuture.

A hand edit, a script or a bad migration can leave a record with an unknown
status, a value of the wrong type, a missing field or a huge one. Each test
writes such values straight into the engine, then checks that the worker
goes on, that the damaged task fails with a DamagedRecordError naming the
bad field, and that other tasks still run.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from taskfuture import DamagedRecordError, TaskFailedError, TaskService, TaskStatus, Worker
from taskfuture import future as future_module
from taskfuture.backends.local_channel import WAITERS
from taskfuture.backends.redis import RedisStorage
from taskfuture.backends.sql import SQLStorage
from taskfuture.models import COUNTER_LIMIT, RECORD_FIELDS, TaskRecord, checked_record
from test_hostile import pending_record

from apptasks import register
from conftest import ServiceFactory, WaitFor

#: Engines whose records something else can write: all but the in-memory one.
STORED = ["sqlite", "postgresql", "mariadb", "redis"]
#: SQLite and Redis store any value in any field; the server engines only text in text columns.
LOOSE_TYPES = ["sqlite", "redis"]


def damage(service: TaskService, task_id: str, **fields: Any) -> None:
    """Write ``fields`` into the stored record as they are; None deletes a Redis field."""
    storage = service.storage
    if isinstance(storage, RedisStorage):
        client = redis.Redis.from_url(service.settings.dsn)
        key = storage._task_key(task_id)
        try:
            for name, value in fields.items():
                if value is None:
                    client.hdel(key, name)
                else:
                    client.hset(key, name, value)
            # Waiters re-read a task on its change message, else only every few
            # seconds; announcing the change keeps the tests short.
            client.publish(storage._channel, task_id)
        finally:
            client.close()
        return
    assert isinstance(storage, SQLStorage)
    table = service.settings.table
    assignments = ", ".join(f"{name} = :{name}" for name in fields)
    with storage.engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE {table} SET {assignments} WHERE id = :task_id"),
            {**fields, "task_id": task_id},
        )
    if storage._channel is not None:
        # SQLite's waiters also hear of changes through a channel of their own.
        storage._channel.announce(WAITERS, [task_id])


@pytest.fixture(params=STORED)
def make_service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServiceFactory]:
    """The shared factory on the engines that store text, not Python objects."""
    factory = ServiceFactory(request.param, tmp_path)
    yield factory
    factory.close()


#: Run a test only on the engines that let a field hold a value of any type.
on_loose_engines = pytest.mark.parametrize("make_service", LOOSE_TYPES, indirect=True)


# -- the check itself ------------------------------------------------------------------------


def test_checked_record_names_each_bad_field() -> None:
    fields = {
        "name": "add",
        "queue": "default",
        "status": "LOST",
        "payload": '{"args": [], "kwargs": {}}',
        "version": "seven",
        "attempts": "1",
        "max_attempts": 3,
        "created_at": "nan",
        "available_at": 1.5,
        "lease_until": "x" * 500,
    }

    record = checked_record("some-id", fields)

    assert record.task_id == "some-id"
    assert record.status is TaskStatus.PENDING
    assert record.attempts == 1
    assert record.available_at == 1.5
    assert record.damage is not None
    assert "status holds 'LOST', not one of PENDING, RUNNING" in record.damage
    assert "version holds 'seven', not an integer" in record.damage
    assert "created_at holds 'nan', not a finite number" in record.damage
    assert "lease_until holds 'xxxx" in record.damage
    assert len(record.damage) < 500


def test_checked_record_of_sound_values_has_no_damage() -> None:
    sound = TaskRecord("an-id", "add", "default", TaskStatus.PENDING, "{}", created_at=1.0)
    values = {name: getattr(sound, name) for name in RECORD_FIELDS}

    record = checked_record("an-id", values)

    assert record == sound
    assert record.damage is None


def test_running_without_lease_is_damage() -> None:
    record = checked_record(
        "an-id",
        {
            "name": "add",
            "queue": "default",
            "status": "RUNNING",
            "payload": "{}",
            "version": 1,
            "attempts": 1,
            "max_attempts": 1,
            "created_at": 1.0,
            "available_at": 1.0,
        },
    )

    assert record.damage == "status is RUNNING but lease_until is empty"


# -- damaged records on real engines ---------------------------------------------------------

DAMAGE = {
    "unknown status": ({"status": "PAUSED"}, "status holds 'PAUSED'", False),
    "running without lease": ({"status": "RUNNING"}, "lease_until is empty", False),
    "text attempts": ({"attempts": "many"}, "attempts holds 'many'", True),
    "text available_at": ({"available_at": "soon"}, "available_at holds 'soon'", True),
    "blob payload": ({"payload": b"\x80\x81"}, "payload holds b'\\x80\\x81'", True),
    "negative attempts": ({"attempts": -5}, "attempts holds", False),
    "zero max_attempts": ({"max_attempts": 0}, "max_attempts holds", False),
}


@pytest.mark.parametrize("case", list(DAMAGE), ids=list(DAMAGE))
def test_damaged_record_fails_its_task_only(make_service: ServiceFactory, case: str) -> None:
    fields, named, needs_loose_types = DAMAGE[case]
    if needs_loose_types and make_service.engine not in LOOSE_TYPES:
        pytest.skip(f"{make_service.engine} columns reject values of the wrong type")
    if make_service.engine == "redis" and case == "blob payload":
        fields = {"payload": None}
        named = "payload holds None"
    service = make_service()
    register(service)
    damaged = service.tasks["add"].submit(1, 2)
    damage(service, damaged.task_id, **fields)

    # No worker yet: the caller's waiter fails a damaged task no worker holds.
    with pytest.raises(DamagedRecordError) as caught:
        damaged.result(timeout=15)
    make_service.worker(service, concurrency=2)

    assert named in str(caught.value)
    assert "failed without running" in str(caught.value)
    if case == "negative attempts":
        assert "not a count of 0 or more" in str(caught.value)
    assert service.tasks["add"].submit(2, 3).result(timeout=15) == 5
    stored = service.storage.get(damaged.task_id)
    assert stored is not None
    assert stored.status is TaskStatus.FAILED


@on_loose_engines
def test_damaged_claimed_record_is_failed_by_worker(
    make_service: ServiceFactory, wait_for: WaitFor
) -> None:
    service = make_service()
    register(service)
    # No future yet, so only the worker can find the damage.
    record = pending_record("add", '{"args": [1, 1], "kwargs": {}}')
    service.storage.enqueue([record])
    damage(service, record.task_id, max_attempts="several")
    worker = make_service.worker(service, concurrency=1)

    wait_for(lambda: worker.counts["FAILED"] == 1, 15)

    with pytest.raises(DamagedRecordError, match="max_attempts holds 'several'"):
        service.future(record.task_id).result(timeout=15)
    assert service.tasks["add"].submit(4, 4).result(timeout=15) == 8


def test_damaged_record_among_many_leaves_the_others(make_service: ServiceFactory) -> None:
    service = make_service()
    register(service)
    futures = service.submit_many("add", [(index, 0) for index in range(60)])
    damage(service, futures[30].task_id, status="?")
    make_service.worker(service, concurrency=4)

    _, not_done = concurrent.futures.wait(futures, timeout=30)

    assert not not_done
    assert isinstance(futures[30].exception(), DamagedRecordError)
    others = futures[:30] + futures[31:]
    assert [future.result() for future in others] == [i for i in range(60) if i != 30]


@on_loose_engines
def test_damaged_lease_is_failed_by_recovery(make_service: ServiceFactory) -> None:
    service = make_service()
    register(service)
    # No future yet: its waiter would find the lost lease before the worker does.
    record = pending_record("add", '{"args": [5, 5], "kwargs": {}}')
    service.storage.enqueue([record])
    (claimed,) = service.storage.claim("gone-worker", ["default"], 1, 0.01)
    damage(service, record.task_id, attempts="??")
    time.sleep(0.05)

    worker = make_service.worker(service, concurrency=1)
    recovered = worker.recover_expired_leases()

    assert claimed.task_id == record.task_id
    assert recovered == 1
    with pytest.raises(DamagedRecordError, match="attempts holds '\\?\\?'"):
        service.future(record.task_id).result(timeout=15)


def test_huge_stored_payload_fails_clearly(make_service: ServiceFactory) -> None:
    service = make_service(max_payload_bytes=1024)
    register(service)
    future = service.tasks["echo"].submit("small")
    damage(service, future.task_id, payload='{"args": ["' + "x" * 3_000_000 + '"], "kwargs": {}}')
    make_service.worker(service, concurrency=1)

    with pytest.raises(TaskFailedError, match="over the limit of 1024 bytes"):
        future.result(timeout=30)

    assert service.tasks["add"].submit(1, 1).result(timeout=15) == 2


# -- fuzzed records ---------------------------------------------------------------------------

#: Values that no taskfuture write produces, or that it produces only in another field.
HOSTILE_VALUES = st.one_of(
    st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=40),
    st.integers(min_value=-(2**40), max_value=2**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "", "{", "null"]),
    st.just("z" * 200_000),
)
#: Fields a fuzzed value may land in. ``queue`` and ``available_at`` are left
#: out: a sound value there legitimately moves the task to a queue no worker
#: serves, or into the far future.
FUZZED_FIELDS = [
    "status",
    "name",
    "payload",
    "version",
    "attempts",
    "max_attempts",
    "created_at",
    "started_at",
    "lease_until",
    "worker_id",
    "result",
    "error",
    "progress",
]

_FUZZ_SERVICES: dict[int, TaskService] = {}


def _fuzz_service(make_service: ServiceFactory) -> TaskService:
    key = id(make_service)
    if key not in _FUZZ_SERVICES:
        service = make_service(max_payload_bytes=100_000)
        register(service)
        _FUZZ_SERVICES[key] = service
    return _FUZZ_SERVICES[key]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    changes=st.dictionaries(st.sampled_from(FUZZED_FIELDS), HOSTILE_VALUES, min_size=1, max_size=3)
)
def test_fuzzed_records_end_and_never_stop_the_worker(
    make_service: ServiceFactory, changes: dict[str, str]
) -> None:
    service = _fuzz_service(make_service)
    if changes.get("status") == "RUNNING" and "lease_until" in changes:
        # A sound lease in the future is a live worker's: only its expiry ends the task.
        assume(not _is_number(changes["lease_until"]))
    future = service.tasks["add"].submit(1, 2)
    try:
        damage(service, future.task_id, **changes)
    except sa.exc.DBAPIError:
        # A typed column refused the value: nothing was written, so nothing to check.
        assume(False)
    # The worker starts after the damage: a record changed under a running task is
    # a different case, which the task's lease covers.
    worker = Worker(service, concurrency=2)
    worker.start()
    try:
        _t = time.monotonic()
        concurrent.futures.wait([future], timeout=15)
        print(
            "EX", round(time.monotonic() - _t, 2), {k: v[:30] for k, v in changes.items()}, future
        )

        assert future.done(), f"the task with {sorted(changes)} changed never ended"
        assert service.tasks["add"].submit(2, 2).result(timeout=15) == 4
    finally:
        worker.stop(timeout_s=5)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("make_service", ["redis"], indirect=True)
@pytest.mark.parametrize(
    "fields",
    [{"junk": "1"}, {"id": "not-a-task"}, {"id": str(uuid.uuid4())}, {"id": "a", "more": "b"}],
    ids=["no id", "bad id", "unknown id", "extra field"],
)
def test_hostile_stream_entries_are_dropped(
    make_service: ServiceFactory, fields: dict[str, str]
) -> None:
    service = make_service()
    register(service)
    storage = service.storage
    assert isinstance(storage, RedisStorage)
    client = redis.Redis.from_url(service.settings.dsn)
    try:
        first = service.tasks["add"].submit(1, 1)
        client.xadd(storage._queue_key("default"), fields)
        second = service.tasks["add"].submit(2, 2)
        make_service.worker(service, concurrency=1)

        assert first.result(timeout=15) == 2
        assert second.result(timeout=15) == 4
        assert client.xlen(storage._queue_key("default")) == 0
    finally:
        client.close()


@pytest.mark.parametrize(
    "version", ["4250197986769320.0", "1e3", "-4", "9" * 40, "99999999999999", "123456789012345"]
)
@on_loose_engines
def test_odd_version_is_claimed_and_ends(make_service: ServiceFactory, version: str) -> None:
    service = make_service()
    register(service)
    future = service.tasks["add"].submit(3, 4)
    damage(service, future.task_id, version=version)
    make_service.worker(service, concurrency=1)

    concurrent.futures.wait([future], timeout=15)

    assert future.done()
    assert service.tasks["add"].submit(1, 1).result(timeout=15) == 2


def test_deep_stored_outcome_fails_the_future(make_service: ServiceFactory) -> None:
    service = make_service()
    register(service)
    make_service.worker(service, concurrency=1)
    completed = service.tasks["add"].submit(1, 2)
    failed = service.tasks["fail"].submit("boom")
    assert completed.result(timeout=15) == 3
    with pytest.raises(TaskFailedError):
        failed.result(timeout=15)
    deep = "[" * 50_000 + "]" * 50_000
    damage(service, completed.task_id, result=deep)
    damage(service, failed.task_id, error=deep)

    with pytest.raises(TaskFailedError, match="nested too deeply"):
        service.future(completed.task_id).result(timeout=15)
    with pytest.raises(TaskFailedError, match="not valid JSON"):
        service.future(failed.task_id).result(timeout=15)


@pytest.mark.parametrize("value", [COUNTER_LIMIT, 2**63 - 1], ids=["int32 max", "int64 max"])
def test_counters_at_their_limit_leave_the_queue_going(
    make_service: ServiceFactory, value: int
) -> None:
    if value > COUNTER_LIMIT and make_service.engine not in LOOSE_TYPES:
        pytest.skip(f"{make_service.engine} INTEGER columns cannot hold {value}")
    service = make_service()
    register(service)
    at_limit = service.tasks["add"].submit(1, 1)
    cancelled = service.tasks["add"].submit(2, 2)
    damage(service, at_limit.task_id, version=value, attempts=value)
    damage(service, cancelled.task_id, version=value)

    assert cancelled.cancel()
    make_service.worker(service, concurrency=2)
    others = [service.tasks["add"].submit(index, 0) for index in range(20)]

    assert [future.result(timeout=15) for future in others] == list(range(20))
    concurrent.futures.wait([at_limit], timeout=15)
    assert at_limit.done()
    assert service.status(cancelled.task_id) is TaskStatus.CANCELLED


@on_loose_engines
def test_unfixable_record_not_read_again(
    make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Frequent full reads would show any read of the task after its future failed.
    monkeypatch.setattr(future_module, "SAFETY_RECHECK_S", 0.02)
    service = make_service()
    register(service)
    future = service.tasks["add"].submit(1, 1)
    # A damaged status stops every claim and a damaged version every compare-and-set.
    damage(service, future.task_id, status="?", version="v")

    with pytest.raises(DamagedRecordError):
        future.result(timeout=15)
    queries = service.status_queries
    time.sleep(0.3)

    assert service.status_queries == queries


@pytest.mark.parametrize(
    "value", [COUNTER_LIMIT, -1, -COUNTER_LIMIT - 1], ids=["int32 max", "minus one", "int32 min"]
)
def test_cancel_after_version_edit_stays_cancelled(
    make_service: ServiceFactory, wait_for: WaitFor, value: int
) -> None:
    service = make_service()
    register(service)
    worker = make_service.worker(service, concurrency=1)
    future = service.tasks["sleep"].submit(0.5)
    wait_for(lambda: service.status(future.task_id) is TaskStatus.RUNNING, 15)
    # The running worker has a small version from its claim. The edit and the cancel
    # move the stored version away, and must never bring it back to the worker's.
    damage(service, future.task_id, version=value)

    assert future.cancel()

    wait_for(lambda: worker.counts["COMPLETED"] + len(worker._running_ids()) == 0, 15)
    assert service.status(future.task_id) is TaskStatus.CANCELLED
    assert service.future(future.task_id).cancelled()
