"""Bad input and hostile storage content: clear errors, nothing stored, nothing lost."""

from __future__ import annotations

import concurrent.futures
import contextlib
import random
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskfuture import (
    StorageError,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskService,
    TaskStatus,
    Worker,
)
from taskfuture import future as future_module
from taskfuture.codec import PayloadTooLargeError
from taskfuture.models import TaskRecord, new_task_id

from apptasks import register
from conftest import ServiceFactory


def pending_record(name: str, payload: str) -> TaskRecord:
    now = time.time()
    return TaskRecord(
        task_id=new_task_id(),
        name=name,
        queue="default",
        status=TaskStatus.PENDING,
        payload=payload,
        max_attempts=1,
        created_at=now,
        available_at=now,
    )


# -- payloads written by something other than taskfuture ----------------------------------

HOSTILE_PAYLOADS = [
    "",
    "{",
    "null",
    "[]",
    '{"args": "not a list", "kwargs": {}}',
    '{"args": [], "kwargs": []}',
    '{"args": [{"__tf__": ["pickle", "gASV"]}], "kwargs": {}}',
    '{"args": [{"__tf__": ["decimal", "not a number"]}], "kwargs": {}}',
    '{"args": [{"__tf__": "wrong shape"}], "kwargs": {}}',
    '{"args": [1, 2, 3, 4], "kwargs": {}}',
    '{"args": [], "kwargs": {"unexpected": 1}}',
    '{"args": [' + "1," * 5000 + "1]}",
]


@pytest.mark.parametrize("payload", HOSTILE_PAYLOADS, ids=range(len(HOSTILE_PAYLOADS)))
def test_hostile_payload_fails_task_not_worker(make_service: ServiceFactory, payload: str) -> None:
    service = make_service()
    register(service)
    make_service.worker(service, concurrency=2)
    record = pending_record("add", payload)
    service.storage.enqueue([record])
    hostile = service.future(record.task_id)

    with pytest.raises((TypeError, TaskFailedError)) as caught:
        hostile.result(timeout=10)

    assert "invalid arguments for task 'add'" in str(caught.value)
    assert service.tasks["add"].submit(1, 2).result(timeout=10) == 3


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
# PostgreSQL text cannot hold NUL, and the codec never writes a raw one (JSON escapes it).
@given(
    # Engines store text, so payloads hold no NUL and no lone surrogates; the
    # codec never writes either (it escapes them).
    payload=st.text(
        st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=200
    ),
    name=st.sampled_from(["add", "echo", "no.such.task"]),
)
def test_fuzzed_payloads_never_stop_the_worker(
    make_service: ServiceFactory, payload: str, name: str
) -> None:
    service = _fuzz_service(make_service)
    record = pending_record(name, payload)
    service.storage.enqueue([record])

    future = service.future(record.task_id)
    concurrent.futures.wait([future], timeout=10)

    assert future.done()
    assert service.storage.get(record.task_id).status.terminal  # type: ignore[union-attr]


_FUZZ_SERVICES: dict[int, TaskService] = {}


def _fuzz_service(make_service: ServiceFactory) -> TaskService:
    key = id(make_service)
    if key not in _FUZZ_SERVICES:
        service = make_service()
        register(service)
        make_service.worker(service, concurrency=2)
        _FUZZ_SERVICES[key] = service
    return _FUZZ_SERVICES[key]


def test_huge_stored_result_is_rejected_by_worker(make_service: ServiceFactory) -> None:
    service = make_service(max_payload_bytes=1000)
    register(service)
    make_service.worker(service, concurrency=1)

    with pytest.raises(ValueError, match="over the limit of 1000 bytes"):
        service.tasks["echo"].submit("x" * 600, "y" * 600).result(timeout=10)


def test_oversized_arguments_store_nothing(make_service: ServiceFactory) -> None:
    service = make_service(max_payload_bytes=1000)
    register(service)

    with pytest.raises(PayloadTooLargeError, match="max_payload_bytes"):
        service.tasks["echo"].submit("x" * 2000)

    assert service.storage.claim("probe", ["default"], 10, 30) == []


def test_unbuildable_registered_exception_becomes_task_failed(
    make_service: ServiceFactory,
) -> None:
    service = make_service()

    class NeedsKeyword(Exception):
        def __init__(self, *, code: int) -> None:
            super().__init__(f"code {code}")

    @service.task("raise_keyword_only")
    def raise_keyword_only() -> None:
        raise NeedsKeyword(code=7)

    service.register_exception(NeedsKeyword)
    make_service.worker(service, concurrency=1)

    with pytest.raises(TaskFailedError) as caught:
        service.tasks["raise_keyword_only"].submit().result(timeout=10)

    assert not isinstance(caught.value, NeedsKeyword)
    assert caught.value.type_name.endswith("NeedsKeyword")
    assert caught.value.message == "code 7"


# -- engines that cannot be reached ---------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres:pw@127.0.0.1:1/test",
        "mysql://root:pw@127.0.0.1:1/test",
        "redis://:pw@127.0.0.1:1/0",
        "postgresql://postgres@127.0.0.1:99999/test",
    ],
)
def test_unreachable_engine_raises_storage_error(dsn: str) -> None:
    started = time.monotonic()
    with pytest.raises((StorageError, ValueError)) as caught:
        service = TaskService(dsn, connect_timeout_s=2)
        service.status(new_task_id())

    assert time.monotonic() - started < 15
    assert ":pw@" not in str(caught.value)


# -- races -------------------------------------------------------------------------------------


def test_cancel_against_completion_many_times(make_service: ServiceFactory) -> None:
    service = make_service(poll_interval_s=0.01)
    register(service)
    make_service.worker(service, concurrency=4)
    calls = [(random.uniform(0, 0.002),) for _ in range(1000)]
    # Time a warm-up batch, so that the cancels spread over the time the workers
    # need for the real one: early ones find the task queued, late ones finished,
    # and those between race the worker that is storing the outcome.
    started = time.monotonic()
    concurrent.futures.wait(service.submit_many("sleep", calls[:200]), timeout=60)
    window_s = (time.monotonic() - started) * len(calls) / 200
    futures = service.submit_many("sleep", calls)
    chosen = random.sample(futures, len(futures) // 2)
    schedule = sorted(zip((random.uniform(0, window_s) for _ in chosen), chosen, strict=True))
    outcomes: dict[str, bool] = {}

    def cancel_on_schedule() -> None:
        begin = time.monotonic()
        for due, future in schedule:
            time.sleep(max(0.0, begin + due - time.monotonic()))
            outcomes[future.task_id] = future.cancel()

    canceller = threading.Thread(target=cancel_on_schedule)
    canceller.start()
    canceller.join()
    concurrent.futures.wait(futures, timeout=60)

    records = {r.task_id: r for r in service.storage.get_many([f.task_id for f in futures])}
    for call, future in zip(calls, futures, strict=True):
        record = records[future.task_id]
        assert record.status in (TaskStatus.COMPLETED, TaskStatus.CANCELLED)
        if outcomes.get(future.task_id):
            assert record.status is TaskStatus.CANCELLED
            assert future.cancelled()
        else:
            assert record.status is TaskStatus.COMPLETED
            assert future.result(timeout=0) == call[0]
    # Both outcomes occur, so the cancels really met the workers.
    assert 0 < sum(outcomes.values()) < len(schedule)


def test_cleanup_while_caller_waits(make_service: ServiceFactory) -> None:
    service = make_service(retention_s=0, poll_interval_s=0.01)
    register(service)
    futures = service.submit_many("add", [(index, 1) for index in range(50)])
    make_service.worker(service, concurrency=4)
    stop = threading.Event()

    def clean() -> None:
        while not stop.is_set():
            service.clean_expired()

    cleaner = threading.Thread(target=clean)
    cleaner.start()
    try:
        for index, future in enumerate(futures):
            with contextlib.suppress(TaskNotFoundError, TaskCancelledError):
                assert future.result(timeout=20) == index + 1
    finally:
        stop.set()
        cleaner.join()


def test_failed_tombstone_lookup_keeps_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    # The memory engine pushes changes, so only the periodic full read retries.
    monkeypatch.setattr(future_module, "SAFETY_RECHECK_S", 0.05)
    service = TaskService(f"memory://{new_task_id()}", poll_interval_s=0.01)
    storage = service.storage
    record = pending_record("add", '{"args": [1, 1], "kwargs": {}}')
    storage.enqueue([record])
    future = service.future(record.task_id)
    lookups: list[int] = []
    real_lookup = storage.expired_ids

    def failing_once(task_ids: list[str]) -> set[str]:
        lookups.append(len(task_ids))
        if len(lookups) == 1:
            raise StorageError("the engine went away")
        return real_lookup(task_ids)

    monkeypatch.setattr(storage, "expired_ids", failing_once)
    with storage._store.lock:  # type: ignore[attr-defined]
        del storage._store.records[record.task_id]  # type: ignore[attr-defined]

    try:
        with pytest.raises(TaskNotFoundError):
            future.result(timeout=10)
        waiter_thread = service._waiter._thread
        assert waiter_thread is not None
        assert waiter_thread.is_alive()
    finally:
        service.close()

    assert len(lookups) >= 2


def test_reclaimed_running_task_runs_once() -> None:
    service = TaskService(f"memory://{new_task_id()}", poll_interval_s=0.01)
    started = threading.Event()
    release = threading.Event()
    runs: list[int] = []

    @service.task("hold")
    def hold() -> int:
        runs.append(1)
        started.set()
        release.wait(10)
        return len(runs)

    worker = Worker(service, concurrency=2)
    worker.start()
    try:
        future = hold.submit()
        assert started.wait(10)
        # Undo the claim, as a crash undoes a claim whose commit was not flushed yet.
        store = service.storage._store  # type: ignore[attr-defined]
        with store.lock:
            record = store.records[future.task_id]
            record.status = TaskStatus.PENDING
            record.version -= 1
            record.attempts -= 1
            record.lease_until = None
            record.worker_id = None
            store.lock.notify_all()
        deadline = time.monotonic() + 10
        while service.status(future.task_id) is not TaskStatus.RUNNING:
            assert time.monotonic() < deadline, "the worker did not claim the task again"
            time.sleep(0.01)
        release.set()

        assert future.result(timeout=10) == 1
        assert runs == [1]
        assert worker.counts["COMPLETED"] == 1
    finally:
        release.set()
        worker.stop(timeout_s=5)
        service.close()
