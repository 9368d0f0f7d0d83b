"""The contract suite: the behaviour every engine must show, run once per engine.

Each test gets its own service (and table) on the engine of the ``make_service``
parameter and, where it needs one, an in-process worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import math
import time
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from taskfuture import (
    Call,
    TaskCancelledError,
    TaskFailedError,
    TaskFuture,
    TaskNotCompletedError,
    TaskNotFoundError,
    TaskService,
    TaskStatus,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerLostError,
)
from taskfuture.models import TaskStatus as Status

from apptasks import AppError, UnregisteredError, register
from conftest import ServiceFactory, WaitFor


@pytest.fixture
def app(make_service: ServiceFactory) -> TaskService:
    service = make_service()
    register(service)
    service.register_exception(AppError)
    return service


@pytest.fixture
def running_app(make_service: ServiceFactory, app: TaskService) -> TaskService:
    make_service.worker(app, concurrency=4)
    return app


# -- submit and result ---------------------------------------------------------------


def test_submit_returns_pending_future(app: TaskService) -> None:
    future = app.tasks["add"].submit(1, 2)

    assert isinstance(future, TaskFuture)
    assert isinstance(future, concurrent.futures.Future)
    assert uuid.UUID(future.task_id).version == 7
    assert future.status() is TaskStatus.PENDING
    assert not future.done()
    assert not future.running()


def test_result_of_sync_task(running_app: TaskService) -> None:
    assert running_app.tasks["add"].submit(2, 3).result(timeout=10) == 5


def test_result_of_async_task(running_app: TaskService) -> None:
    assert running_app.tasks["async_add"].submit(4, 5).result(timeout=10) == 9


def test_submit_by_registered_name(running_app: TaskService) -> None:
    assert running_app.submit("add", 20, 22).result(timeout=10) == 42


def test_arguments_round_trip_rich_types(running_app: TaskService) -> None:
    moment = dt.datetime(2026, 11, 5, 12, 30, tzinfo=dt.UTC)
    kwargs = {
        "when": moment,
        "day": dt.date(2026, 11, 5),
        "id": uuid.UUID("0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091"),
        "amount": Decimal("12.50"),
        "blob": b"\x00\xff",
        "pair": (1, "two"),
        "tags": {"a", "b"},
        "by_number": {1: "one"},
    }

    echoed = running_app.tasks["echo"].submit(1, **kwargs).result(timeout=10)

    assert echoed["args"] == (1,)
    assert echoed["kwargs"] == kwargs


def test_submit_many_returns_futures_in_order(running_app: TaskService) -> None:
    futures = running_app.submit_many("add", [(index, index) for index in range(50)])

    assert [future.result(timeout=10) for future in futures] == [2 * i for i in range(50)]


def test_submit_many_accepts_keyword_calls(running_app: TaskService) -> None:
    futures = running_app.tasks["add"].submit_many([Call(x=1, y=2), Call(3, y=4)])

    assert [future.result(timeout=10) for future in futures] == [3, 7]


def test_result_now_of_finished_task(running_app: TaskService) -> None:
    future = running_app.tasks["add"].submit(1, 1)
    future.result(timeout=10)

    assert future.result_now() == 2


def test_result_now_of_pending_task_raises(app: TaskService) -> None:
    future = app.tasks["add"].submit(1, 1)

    with pytest.raises(TaskNotCompletedError, match="PENDING"):
        future.result_now()


def test_done_callback_runs_once(running_app: TaskService) -> None:
    seen: list[Any] = []
    future = running_app.tasks["add"].submit(2, 2)
    future.add_done_callback(lambda done: seen.append(done.result()))

    assert future.result(timeout=10) == 4
    deadline = time.monotonic() + 5
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen == [4]


# -- concurrent.futures and asyncio ------------------------------------------------


def test_as_completed_over_task_futures(running_app: TaskService) -> None:
    futures = [running_app.tasks["add"].submit(index, 1) for index in range(20)]

    results = sorted(future.result() for future in concurrent.futures.as_completed(futures, 20))

    assert results == list(range(1, 21))


def test_wait_all_completed(running_app: TaskService) -> None:
    futures = [running_app.tasks["add"].submit(index, 0) for index in range(10)]

    done, not_done = concurrent.futures.wait(futures, timeout=20)

    assert len(done) == 10
    assert not not_done


def test_asyncio_gather_over_task_futures(running_app: TaskService) -> None:
    async def gather() -> list[int]:
        futures = [running_app.tasks["async_add"].submit(index, 1) for index in range(10)]
        return list(await asyncio.wait_for(asyncio.gather(*futures), 20))

    assert asyncio.run(gather()) == list(range(1, 11))


def test_asyncio_wrap_future(running_app: TaskService) -> None:
    async def wrapped() -> int:
        future = running_app.tasks["add"].submit(7, 8)
        return await asyncio.wait_for(asyncio.wrap_future(future), 10)

    assert asyncio.run(wrapped()) == 15


def test_await_failed_future_raises_remote_type(running_app: TaskService) -> None:
    async def awaited() -> None:
        await running_app.tasks["fail"].submit("async boom")

    with pytest.raises(ValueError, match="async boom"):
        asyncio.run(asyncio.wait_for(awaited(), 10))


def test_cancelled_await_leaves_task_alone(running_app: TaskService) -> None:
    future = running_app.tasks["sleep"].submit(0.3)

    async def impatient() -> None:
        await asyncio.wait_for(future, 0.01)

    with pytest.raises(TimeoutError):
        asyncio.run(impatient())
    assert future.result(timeout=10) == 0.3


# -- failures ------------------------------------------------------------------------


def test_builtin_exception_raised_as_itself(running_app: TaskService) -> None:
    future = running_app.tasks["fail"].submit("bad value")

    with pytest.raises(ValueError, match="bad value") as caught:
        future.result(timeout=10)

    error = caught.value
    assert isinstance(error, TaskFailedError)
    assert error.type_name == "ValueError"
    assert "raise ValueError(message)" in error.remote_traceback
    assert future.status() is TaskStatus.FAILED


def test_registered_exception_raised_as_itself(running_app: TaskService) -> None:
    with pytest.raises(AppError) as caught:
        running_app.tasks["fail_app"].submit(42).result(timeout=10)

    assert caught.value.code == 42
    assert caught.value.reason == "application rule broken"


def test_unregistered_exception_becomes_task_failed(running_app: TaskService) -> None:
    future = running_app.tasks["fail_unregistered"].submit()

    with pytest.raises(TaskFailedError) as caught:
        future.result(timeout=10)

    assert not isinstance(caught.value, UnregisteredError)
    assert caught.value.type_name == "apptasks.UnregisteredError"
    assert caught.value.message == "not registered by the caller"


def test_exception_returns_failure(running_app: TaskService) -> None:
    error = running_app.tasks["fail"].submit("returned").exception(timeout=10)

    assert isinstance(error, ValueError)
    assert str(error) == "returned"


def test_exception_of_completed_task_is_none(running_app: TaskService) -> None:
    assert running_app.tasks["add"].submit(1, 2).exception(timeout=10) is None


def test_unserializable_result_fails_task(running_app: TaskService) -> None:
    with pytest.raises(TypeError, match=r"result\['handle'\]"):
        running_app.tasks["unserializable"].submit().result(timeout=10)


def test_worker_fails_unknown_name_at_once(make_service: ServiceFactory) -> None:
    caller = make_service()
    worker_side = make_service()
    register(worker_side)
    make_service.worker(worker_side, concurrency=2)
    unknown = caller.declare("reports.not_in_worker")

    with pytest.raises(UnknownTaskError, match="not registered in worker"):
        unknown.submit(1).result(timeout=10)
    assert worker_side.tasks["add"].submit(1, 1).result(timeout=10) == 2


def test_wrong_argument_count_rejected_at_submit(app: TaskService) -> None:
    with pytest.raises(TypeError, match="invalid arguments for task 'add'"):
        app.submit("add", 1, 2, 3)

    assert app.storage.claim("probe", ["default"], 10, 30) == []


def test_worker_fails_wrong_argument_count(make_service: ServiceFactory) -> None:
    caller = make_service()
    worker_side = make_service()
    register(worker_side)
    make_service.worker(worker_side, concurrency=2)

    with pytest.raises(TypeError, match="invalid arguments for task 'add'"):
        caller.declare("add").submit(1, 2, 3).result(timeout=10)

    assert worker_side.submit("add", 1, 2).result(timeout=10) == 3


@pytest.mark.parametrize("max_attempts", [0, -1, 1.5, "a", True])
def test_invalid_max_attempts_stores_nothing(app: TaskService, max_attempts: Any) -> None:
    with pytest.raises(ValueError, match="invalid max_attempts"):
        app.submit_with_options("add", (1, 2), max_attempts=max_attempts)

    assert app.storage.claim("probe", ["default"], 10, 30) == []


@pytest.mark.parametrize("args", ["ab", {"x": 1}, 5])
def test_args_must_be_a_sequence(app: TaskService, args: Any) -> None:
    with pytest.raises(TypeError, match="invalid args"):
        app.submit_with_options("echo", args)


def test_infinite_timeout_waits_without_limit(running_app: TaskService) -> None:
    assert running_app.tasks["add"].submit(1, 1).result(timeout=math.inf) == 2


# -- bad input stores nothing -------------------------------------------------------------


def test_non_json_argument_names_its_path(app: TaskService) -> None:
    with pytest.raises(TypeError, match=r"kwargs\['rows'\]\[3\]"):
        app.tasks["echo"].submit(rows=[1, 2, 3, object()])


def test_cyclic_argument_is_rejected(app: TaskService) -> None:
    loop: list[Any] = []
    loop.append(loop)

    with pytest.raises(TypeError, match="cyclic"):
        app.tasks["echo"].submit(loop)


def test_bad_item_in_submit_many_stores_nothing(app: TaskService) -> None:
    before = app.storage.claim("probe", ["default"], 100, 30)
    assert before == []

    with pytest.raises(TypeError, match=r"calls\[1\]"):
        app.submit_many("echo", [(1,), (object(),), (3,)])

    assert app.storage.claim("probe", ["default"], 100, 30) == []


def test_unregistered_name_is_rejected_at_submit(app: TaskService) -> None:
    with pytest.raises(UnknownTaskError, match="declare"):
        app.submit("no.such.task", 1)


@pytest.mark.parametrize("timeout", [-1, -0.001, math.nan, "5"])
def test_invalid_timeout_is_rejected(app: TaskService, timeout: Any) -> None:
    future = app.tasks["add"].submit(1, 1)

    with pytest.raises(ValueError, match="invalid timeout"):
        future.result(timeout=timeout)


@pytest.mark.parametrize("task_id", ["", "abc", "x" * 300, "0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f809z"])
def test_malformed_task_id_is_rejected(app: TaskService, task_id: str) -> None:
    with pytest.raises(ValueError, match="invalid task id"):
        app.future(task_id)


def test_unknown_task_id_is_not_found(app: TaskService) -> None:
    with pytest.raises(TaskNotFoundError):
        app.future(str(uuid.uuid4()))


def test_naive_eta_is_rejected(app: TaskService) -> None:
    with pytest.raises(ValueError, match="naive"):
        app.submit_with_options("add", (1, 2), eta=dt.datetime(2030, 1, 1))


# -- waiting and timeouts ----------------------------------------------------------------


def test_short_timeout_ends_on_time(make_service: ServiceFactory) -> None:
    service = make_service(poll_interval_s=1.0)
    register(service)
    future = service.tasks["add"].submit(1, 1)

    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        future.result(timeout=0.05)
    elapsed = time.monotonic() - started

    assert elapsed < 0.9, f"a 50 ms wait took {elapsed:.3f} s with a 1 s poll interval"


def test_task_finished_at_deadline_is_returned(make_service: ServiceFactory) -> None:
    service = make_service(poll_interval_s=30.0)
    register(service)
    future = service.tasks["add"].submit(1, 2)
    worker_service = make_service(poll_interval_s=0.01)
    register(worker_service)
    make_service.worker(worker_service, concurrency=1)
    deadline = time.monotonic() + 10
    while worker_service.status(future.task_id) is not TaskStatus.COMPLETED:
        assert time.monotonic() < deadline
        time.sleep(0.01)

    assert future.result(timeout=0) == 3


def test_timeout_leaves_task_running(running_app: TaskService) -> None:
    future = running_app.tasks["sleep"].submit(0.3)

    with pytest.raises(TaskTimeoutError) as caught:
        future.result(timeout=0.01)

    assert caught.value.task_id == future.task_id
    assert isinstance(caught.value, TimeoutError)
    assert future.result(timeout=10) == 0.3


def test_reattached_future_sees_result(running_app: TaskService) -> None:
    task_id = running_app.tasks["add"].submit(5, 5).task_id

    assert running_app.future(task_id).result(timeout=10) == 10
    assert running_app.future(uuid.UUID(task_id)).result(timeout=0) == 10


def test_running_status_and_progress(running_app: TaskService, wait_for: WaitFor) -> None:
    future = running_app.tasks["progress"].submit(20)
    seen: list[float] = []
    future.add_progress_callback(lambda _, progress: seen.append(progress.done))

    wait_for(lambda: future.status() is TaskStatus.RUNNING, 10)
    wait_for(lambda: future.progress() is not None, 10)

    assert future.result(timeout=10) == 20
    final = future.progress()
    assert final is not None
    assert final.total == 20
    assert seen
    assert seen == sorted(seen)


def test_open_futures_share_batched_queries(make_service: ServiceFactory) -> None:
    service = make_service(poll_interval_s=0.05)
    register(service)
    futures = service.submit_many("add", [(index, 1) for index in range(1000)])
    before = service.status_queries

    started = time.monotonic()
    time.sleep(0.5)
    elapsed = time.monotonic() - started
    queries = service.status_queries - before

    assert all(not future.done() for future in futures)
    assert queries <= elapsed / 0.05 + 1, f"{queries} queries in {elapsed:.2f} s"


def test_thousand_futures_resolve(make_service: ServiceFactory) -> None:
    service = make_service(poll_interval_s=0.05)
    register(service)
    make_service.worker(service, concurrency=4)

    futures = service.submit_many("add", [(index, 1) for index in range(1000)])
    done, not_done = concurrent.futures.wait(futures, timeout=60)

    assert not not_done
    assert sum(future.result() for future in done) == sum(range(1, 1001))


# -- cancellation ---------------------------------------------------------------------


def test_cancel_pending_task_is_never_run(make_service: ServiceFactory, tmp_path: Path) -> None:
    service = make_service()
    register(service)
    future = service.tasks["touch_file"].submit(str(tmp_path), "cancelled")

    assert future.cancel() is True
    assert future.cancelled()
    assert future.status() is TaskStatus.CANCELLED
    make_service.worker(service, concurrency=2)
    assert service.tasks["add"].submit(1, 1).result(timeout=10) == 2
    assert not list(tmp_path.glob("cancelled.*"))
    with pytest.raises(TaskCancelledError):
        future.result(timeout=1)


def test_cancel_running_sync_task_through_context(
    running_app: TaskService, wait_for: WaitFor
) -> None:
    future = running_app.tasks["cooperative"].submit(30)
    wait_for(lambda: future.status() is TaskStatus.RUNNING, 10)

    assert future.cancel() is True

    with pytest.raises(TaskCancelledError):
        future.result(timeout=5)
    assert isinstance(future.exception.__self__, TaskFuture)
    assert running_app.tasks["add"].submit(1, 2).result(timeout=10) == 3


def test_cancel_running_async_task(running_app: TaskService, wait_for: WaitFor) -> None:
    future = running_app.tasks["async_sleep"].submit(30)
    wait_for(lambda: future.status() is TaskStatus.RUNNING, 10)

    assert future.cancel() is True
    assert future.status() is TaskStatus.CANCELLED
    assert running_app.tasks["async_add"].submit(1, 2).result(timeout=10) == 3


def test_cancel_finished_task_returns_false(running_app: TaskService) -> None:
    future = running_app.tasks["add"].submit(1, 2)
    future.result(timeout=10)

    assert future.cancel() is False
    assert running_app.future(future.task_id).cancel() is False
    assert future.status() is TaskStatus.COMPLETED


def test_cancel_races_completion_with_one_winner(make_service: ServiceFactory) -> None:
    service = make_service()
    register(service)
    futures = service.submit_many("add", [(index, 0) for index in range(40)])
    make_service.worker(service, concurrency=4)

    cancelled = {future.task_id for future in futures if future.cancel()}

    for future in futures:
        concurrent.futures.wait([future], timeout=10)
        reread = service.future(future.task_id)
        if future.task_id in cancelled:
            assert reread.status() is TaskStatus.CANCELLED
            assert future.cancelled()
        else:
            assert reread.status() is TaskStatus.COMPLETED
            assert future.result(timeout=0) == reread.result(timeout=0)


# -- expiry ------------------------------------------------------------------------------


def test_clean_expired_deletes_only_expired(make_service: ServiceFactory) -> None:
    service = make_service(retention_s=0)
    register(service)
    make_service.worker(service, concurrency=2)
    finished = service.tasks["add"].submit(1, 1)
    finished.result(timeout=10)
    pending = service.submit_with_options("add", (1, 1), queue="no-worker")

    assert service.clean_expired() >= 1

    with pytest.raises(TaskNotFoundError):
        service.future(finished.task_id)
    assert service.status(pending.task_id) is TaskStatus.PENDING


def test_expired_task_is_not_found_not_pending(make_service: ServiceFactory) -> None:
    service = make_service(retention_s=0)
    register(service)
    make_service.worker(service, concurrency=2)
    future = service.tasks["add"].submit(2, 2)
    future.result(timeout=10)
    service.clean_expired()

    with pytest.raises(TaskNotFoundError):
        service.status(future.task_id)
    assert future.result(timeout=0) == 4


def test_retention_keeps_finished_task(running_app: TaskService) -> None:
    future = running_app.tasks["add"].submit(3, 3)
    future.result(timeout=10)

    assert running_app.clean_expired() == 0
    assert running_app.future(future.task_id).result(timeout=0) == 6


def test_waiting_future_of_deleted_task_fails(make_service: ServiceFactory) -> None:
    service = make_service(retention_s=0)
    register(service)
    future = service.tasks["add"].submit(1, 1)
    record = service.storage.get(future.task_id)
    assert record is not None
    service.storage.transition(
        future.task_id,
        record.version,
        _expired_cancel(),
    )
    service.clean_expired()

    with pytest.raises((TaskNotFoundError, TaskCancelledError)):
        future.result(timeout=5)


def _expired_cancel() -> Any:
    from taskfuture.models import Transition

    return Transition(Status.CANCELLED, finished_at=time.time(), expires_at=time.time() - 1)


# -- leases and lost workers -----------------------------------------------------------------


def test_expired_lease_is_claimed_again(make_service: ServiceFactory) -> None:
    service = make_service(lease_s=1)
    register(service)
    future = service.tasks["attempt"].submit()
    claimed = service.storage.claim("dead-worker", ["default"], 1, 0.05)
    assert [record.task_id for record in claimed] == [future.task_id]
    time.sleep(0.1)

    worker = make_service.worker(service, concurrency=1)
    worker.recover_expired_leases()

    assert future.result(timeout=10) == 2
    assert future.attempts == 2


def test_lost_worker_with_attempts_spent_fails(make_service: ServiceFactory) -> None:
    service = make_service(lease_s=1)
    register(service)
    future = service.submit_with_options("attempt", max_attempts=1)
    service.storage.claim("dead-worker", ["default"], 1, 0.05)
    time.sleep(0.1)

    worker = make_service.worker(service, concurrency=1)
    worker.recover_expired_leases()

    with pytest.raises(WorkerLostError, match="dead-worker"):
        future.result(timeout=10)


def test_heartbeat_keeps_lease_alive(make_service: ServiceFactory) -> None:
    service = make_service(lease_s=1)
    register(service)
    worker = make_service.worker(service, concurrency=1)
    future = service.tasks["sleep"].submit(1.6)

    assert future.result(timeout=10) == 1.6
    assert future.attempts == 1
    assert worker.recover_expired_leases() == 0


def test_claim_skips_other_queues(app: TaskService) -> None:
    app.submit_with_options("add", (1, 2), queue="reports")

    assert app.storage.claim("probe", ["default"], 10, 30) == []
    assert len(app.storage.claim("probe", ["reports"], 10, 30)) == 1


def test_two_claims_never_share_a_task(app: TaskService) -> None:
    app.submit_many("add", [(index, 0) for index in range(30)])

    first = app.storage.claim("worker-a", ["default"], 20, 30)
    second = app.storage.claim("worker-b", ["default"], 20, 30)

    first_ids = {record.task_id for record in first}
    second_ids = {record.task_id for record in second}
    assert len(first_ids) == 20
    assert len(second_ids) == 10
    assert not first_ids & second_ids


def test_delay_holds_task_until_due(running_app: TaskService) -> None:
    started = time.monotonic()
    future = running_app.submit_with_options("add", (1, 2), delay=dt.timedelta(seconds=0.5))

    assert future.result(timeout=10) == 3
    assert time.monotonic() - started >= 0.5


def test_eta_in_past_runs_now(running_app: TaskService) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    assert running_app.submit_with_options("add", (2, 2), eta=past).result(timeout=10) == 4


def test_graceful_stop_releases_unfinished_task(
    make_service: ServiceFactory, wait_for: WaitFor
) -> None:
    service = make_service()
    register(service)
    worker = make_service.worker(service, concurrency=1, shutdown_timeout_s=0.1)
    future = service.tasks["cooperative"].submit(30)
    wait_for(lambda: future.status() is TaskStatus.RUNNING, 10)

    worker.stop()

    assert future.status() is TaskStatus.PENDING
    record = service.storage.get(future.task_id)
    assert record is not None
    assert record.attempts == 0
    assert record.worker_id is None


# -- retries and time limits -------------------------------------------------------------


def test_retry_until_success(running_app: TaskService) -> None:
    future = running_app.tasks["flaky"].submit(2)

    assert future.result(timeout=20) == 3
    assert future.attempts == 3


def test_retry_gives_up_after_max_attempts(running_app: TaskService) -> None:
    future = running_app.tasks["flaky"].submit(5)

    with pytest.raises(ConnectionError, match="attempt 3 failed"):
        future.result(timeout=20)
    assert future.attempts == 3


def test_retrying_task_is_pending_between_attempts(make_service: ServiceFactory) -> None:
    service = make_service()
    register(service)
    future = service.submit_with_options("flaky", (1,))
    worker = make_service.worker(service, concurrency=1)

    assert future.result(timeout=20) == 2
    assert worker.counts["PENDING"] == 1


def test_other_exceptions_are_not_retried(running_app: TaskService) -> None:
    future = running_app.tasks["fail"].submit("no retry")

    with pytest.raises(ValueError, match="no retry"):
        future.result(timeout=10)
    assert future.attempts == 1


def test_time_limit_stops_sync_task(running_app: TaskService) -> None:
    from taskfuture import TaskTimeLimitError

    with pytest.raises(TaskTimeLimitError, match=r"time limit of 0\.3 s"):
        running_app.tasks["limited"].submit(30).result(timeout=10)

    assert running_app.tasks["limited"].submit(0.01).result(timeout=10) == "finished"


def test_time_limit_cancels_async_task(running_app: TaskService) -> None:
    from taskfuture import TaskTimeLimitError

    with pytest.raises(TaskTimeLimitError):
        running_app.tasks["async_limited"].submit(30).result(timeout=10)


def test_progress_updates_async_iterator(running_app: TaskService) -> None:
    async def collect() -> list[float]:
        future = running_app.tasks["progress"].submit(10)
        seen = [progress.done async for progress in future.progress_updates()]
        assert await future == 10
        return seen

    seen = asyncio.run(asyncio.wait_for(collect(), 20))

    assert seen
    assert seen == sorted(seen)
    assert seen[-1] == 10


def test_lost_worker_is_told_by_waiter(make_service: ServiceFactory) -> None:
    service = make_service(lease_s=1)
    register(service)
    future = service.submit_with_options("attempt", max_attempts=1)
    service.storage.claim("dead-worker", ["default"], 1, 0.05)

    with pytest.raises(WorkerLostError, match="dead-worker"):
        future.result(timeout=15)


# -- honest expiry -----------------------------------------------------------------------------


def test_expired_task_reads_as_expired(make_service: ServiceFactory) -> None:
    from taskfuture import TaskExpiredError

    service = make_service(retention_s=0)
    register(service)
    future = service.tasks["add"].submit(2, 2)
    assert future.cancel()
    service.clean_expired()

    with pytest.raises(TaskExpiredError):
        service.status(future.task_id)
    with pytest.raises(TaskExpiredError):
        service.future(future.task_id)
    with pytest.raises(TaskNotFoundError) as unknown:
        service.future(str(uuid.uuid4()))
    assert not isinstance(unknown.value, TaskExpiredError)


def test_touch_extends_retention(make_service: ServiceFactory) -> None:
    service = make_service(retention_s=0)
    register(service)
    future = service.tasks["add"].submit(1, 1)
    assert future.cancel()

    assert future.touch(3600) is True
    assert service.clean_expired() == 0
    assert service.status(future.task_id) is TaskStatus.CANCELLED


def test_touch_of_pending_task_returns_false(app: TaskService) -> None:
    future = app.tasks["add"].submit(1, 1)

    assert future.touch(60) is False
    assert future.status() is TaskStatus.PENDING


def test_crowd_of_futures_caps_status_queries(make_service: ServiceFactory) -> None:
    service = make_service(poll_interval_s=0.1)
    register(service)
    # 3 000 tasks of 10 ms on four slots keep well over 1 000 futures open
    # while the queries are counted.
    futures = service.submit_many("sleep", [(0.01,)] * 3000)
    make_service.worker(service, concurrency=4)
    time.sleep(0.3)
    before = service.status_queries

    started = time.monotonic()
    time.sleep(1.5)
    elapsed = time.monotonic() - started
    queries = service.status_queries - before
    still_open = sum(not future.done() for future in futures)

    assert still_open > 1000
    assert queries <= elapsed * 10 + 2, f"{queries} status queries in {elapsed:.2f} s"
