"""TaskFuture and the per-process waiter that resolves every open future.

A :class:`TaskFuture` is a real :class:`concurrent.futures.Future`: it works
with ``concurrent.futures.wait``, ``as_completed``, ``asyncio.wrap_future``
and ``await``. The :class:`Waiter` of its service keeps it up to date with
one batched status query per poll interval for all open futures together,
and at once when the engine pushes a change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from taskfuture import codec
from taskfuture.errors import (
    StorageError,
    TaskCancelledError,
    TaskExpiredError,
    TaskNotCompletedError,
    TaskNotFoundError,
    TaskTimeoutError,
)
from taskfuture.models import Progress, TaskRecord, TaskStatus

if TYPE_CHECKING:
    from taskfuture.backends.base import TaskStorage
    from taskfuture.service import TaskService

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Most status queries the waiter makes per second, however many futures are open.
MAX_QUERIES_PER_S = 10.0
#: Ids per status query.
QUERY_BATCH = 5000
#: Open futures above which reads after pushes are also spaced to MAX_QUERIES_PER_S;
#: with fewer, each push is read at once, which keeps a single wait fast.
CROWD_SIZE = 1000
#: With push wake-up, how often the waiter still re-checks every open future.
SAFETY_RECHECK_S = 5.0
#: With push, how long after each (re)subscription new futures are read once,
#: and how long a pushed id that no future watched is remembered.
FRESH_WINDOW_S = 1.0
RECENT_PUSH_S = 2.0

ProgressCallback = Callable[["TaskFuture[Any]", Progress], object]


def check_timeout(timeout: float | None) -> float | None:
    """Return ``timeout`` in seconds, None for no limit, or raise ValueError.

    Infinity means no limit, like None.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"invalid timeout {timeout!r}: expected None or a number of seconds >= 0")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"invalid timeout {timeout!r}: expected None or a number of seconds >= 0")
    if math.isinf(timeout):
        return None
    return float(timeout)


class TaskFuture(concurrent.futures.Future[R]):
    """A handle on a task that runs in a worker, usable wherever a Future is.

    ``done()``, ``running()`` and ``progress()`` return the last state the
    waiter saw. On polling engines it is at most one poll interval old. On
    push engines a change arrives with its push, and a change that sends no
    push (a claim, on some engines) shows at the next safety re-check, up to
    SAFETY_RECHECK_S later. ``status()`` reads storage now.
    """

    def __init__(
        self, service: TaskService, task_id: str, status: TaskStatus = TaskStatus.PENDING
    ) -> None:
        super().__init__()
        self._service = service
        self.task_id = task_id
        self._status = status
        self._progress: Progress | None = None
        self._progress_text: str | None = None
        self._progress_callbacks: list[ProgressCallback] = []
        #: How many times a worker has claimed the task, as last seen.
        self.attempts = 0

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} {self._status.value}>"

    # -- reading state -------------------------------------------------------

    def status(self) -> TaskStatus:
        """Read the task's status from storage now.

        Raises:
            TaskNotFoundError: the task does not exist or was cleaned after expiry.
        """
        if super().done():
            return self._status
        uncommitted = self._service._waiter.awaits_commit(self.task_id)
        record = self._service.storage.get(self.task_id)
        if record is None and uncommitted:
            return self._status
        if record is None:
            error = self._service._missing_error(self.task_id)
            self._service._resolve_missing(self, error)
            raise error
        self._service._apply(self, record)
        return record.status

    def running(self) -> bool:
        """Return whether a worker was running the task when the waiter last read it."""
        return not super().done() and self._status is TaskStatus.RUNNING

    def progress(self) -> Progress | None:
        """Return the last progress the task reported, or None if it reported none."""
        return self._progress

    # -- waiting ---------------------------------------------------------------

    def result(self, timeout: float | None = None) -> R:
        """Wait up to ``timeout`` seconds (None: no limit) and return the task's result.

        Raises:
            TaskTimeoutError: the task did not finish in time; it goes on running.
                Also raised when the engine cannot be read at the deadline, with
                the StorageError as its cause.
            TaskCancelledError: the task was cancelled.
            TaskFailedError: the task raised; builtin and registered exception
                types are raised as themselves, also catchable as TaskFailedError.
            TaskNotFoundError: the task does not exist or was cleaned after expiry.
            ValueError: ``timeout`` is negative or not a number.
        """
        self._wait(check_timeout(timeout))
        if super().cancelled():
            raise TaskCancelledError(self.task_id)
        return super().result(0)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait like :meth:`result` and return the task's exception, or None if it completed."""
        self._wait(check_timeout(timeout))
        if super().cancelled():
            raise TaskCancelledError(self.task_id)
        return super().exception(0)

    def result_now(self) -> R:
        """Return the result without waiting.

        Raises:
            TaskNotCompletedError: the task has not finished.
        """
        if not super().done():
            status = self.status()
            if not super().done():
                raise TaskNotCompletedError(self.task_id, status.value)
        return self.result(0)

    def _wait(self, timeout: float | None) -> None:
        if super().done():
            return
        if timeout is None:
            with self._condition:
                while not super().done():
                    self._condition.wait()
            return
        deadline = time.monotonic() + timeout
        with self._condition:
            while not super().done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(min(remaining, threading.TIMEOUT_MAX))
        if not super().done():
            # One direct read at the deadline, so a task that finished in the
            # last poll interval is returned rather than reported as timed out.
            # When the engine cannot be reached, the wait still ends as a timeout.
            # NOTE: against a host that never replies, this read takes about
            # connect_timeout_s, so the timeout is raised that much late.
            try:
                self.status()
            except StorageError as exc:
                raise TaskTimeoutError(self.task_id, timeout) from exc
        if not super().done():
            raise TaskTimeoutError(self.task_id, timeout)

    def __await__(self) -> Generator[Any, None, R]:
        return self._await().__await__()

    async def _await(self) -> R:
        """Await completion without cancelling the task if the awaiting coroutine is cancelled."""
        if not super().done():
            waiter = asyncio.wrap_future(self._observer())
            await asyncio.shield(waiter)
        return self.result(0)

    def _observer(self) -> concurrent.futures.Future[None]:
        """Return a plain future that completes when this one does, whatever the outcome."""
        observer: concurrent.futures.Future[None] = concurrent.futures.Future()

        def finish(_: concurrent.futures.Future[Any]) -> None:
            if not observer.done():
                observer.set_result(None)

        self.add_done_callback(finish)
        return observer

    # -- commands --------------------------------------------------------------

    def cancel(self) -> bool:
        """Cancel the task unless it already finished; return True if it is now cancelled.

        A queued task is never run. A running task is marked CANCELLED at once
        and its worker stops it. Async tasks get CancelledError at
        their next await, sync tasks see ``context.cancelled()`` become True.
        Code already running may go on until it next checks.
        """
        if super().done():
            return super().cancelled()
        return self._service._cancel(self)

    def add_done_callback(self, fn: Callable[[concurrent.futures.Future[R]], object]) -> None:
        """Call ``fn(future)`` when the task finishes, in the waiter thread (or now if done)."""
        self._service._waiter.pin(self)
        super().add_done_callback(fn)

    def add_progress_callback(self, fn: ProgressCallback) -> None:
        """Call ``fn(future, progress)`` in the waiter thread whenever new progress arrives."""
        self._service._waiter.pin(self)
        self._progress_callbacks.append(fn)

    def touch(self, retention_s: float | None = None) -> bool:
        """Keep the finished task's record ``retention_s`` more seconds from now.

        ``None`` uses the service's retention. Returns False when the task has
        not finished yet (retention starts when it does).

        Raises:
            TaskNotFoundError: the record is gone (TaskExpiredError if it expired).
        """
        return self._service.touch(self.task_id, retention_s)

    async def progress_updates(self) -> AsyncIterator[Progress]:
        """Yield each new progress report as it arrives, ending when the task finishes.

        The first item is the last report seen so far, if any. Reports pushed
        faster than the caller reads them are coalesced to the latest.
        """
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake(*_: object) -> None:
            loop.call_soon_threadsafe(changed.set)

        self.add_progress_callback(wake)
        self.add_done_callback(wake)
        last: Progress | None = None
        while True:
            current = self._progress
            if current is not None and current != last:
                last = current
                yield current
            if super().done():
                return
            await changed.wait()
            changed.clear()

    # -- resolution, called by the waiter and the service ----------------------

    def _update(self, record: TaskRecord) -> list[ProgressCallback]:
        """Take the state of ``record``; return the progress callbacks to run."""
        self._status = record.status
        self.attempts = record.attempts
        if record.progress is None or record.progress == self._progress_text:
            return []
        self._progress_text = record.progress
        try:
            self._progress = Progress.from_dict(codec.decode(record.progress))
        except (ValueError, TypeError, KeyError) as exc:
            logger.warning(
                "Task %s has unreadable progress %r: %s", self.task_id, record.progress[:200], exc
            )
            return []
        return list(self._progress_callbacks)

    def _set_outcome(
        self, status: TaskStatus, value: Any = None, error: BaseException | None = None
    ) -> None:
        with self._condition:
            if super().done():
                return
            self._status = status
            if status is TaskStatus.CANCELLED:
                concurrent.futures.Future.cancel(self)
                self.set_running_or_notify_cancel()
            elif error is not None:
                self.set_exception(error)
            else:
                self.set_result(value)


class Waiter:
    """Resolves every open future of one service from a background thread.

    Open futures are held weakly unless a callback is attached, so a future the
    application dropped costs nothing. Each pass reads all open futures in
    batched queries; passes are spaced so that the process makes at most
    ``MAX_QUERIES_PER_S`` status queries a second.
    """

    def __init__(self, service: TaskService, storage: TaskStorage, poll_interval_s: float) -> None:
        self._service = service
        self._storage = storage
        self._poll_interval_s = poll_interval_s
        self._lock = threading.Lock()
        self._futures: dict[str, list[weakref.ref[TaskFuture[Any]]]] = {}
        self._pinned: set[TaskFuture[Any]] = set()
        self._changed: set[str] = set()
        self._resync = False
        #: Ids submitted in an application transaction, with a function that
        #: returns whether it ended; their missing records may still appear.
        self._uncommitted: dict[str, Callable[[], bool]] = {}
        #: With push, ids tracked since the last read; see :meth:`track`.
        self._fresh: set[str] = set()
        self._fresh_due = 0.0
        #: Until when new futures go to ``_fresh``: until the first
        #: subscription is confirmed, then FRESH_WINDOW_S after each one.
        self._fresh_until = math.inf
        #: With push, ids pushed while no future watched them -> monotonic arrival time.
        self._recent: dict[str, float] = {}
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None
        #: Status queries made so far; tests and benchmarks read it.
        self.status_queries = 0

    def track(
        self, future: TaskFuture[Any], transaction_ended: Callable[[], bool] | None = None
    ) -> None:
        """Watch ``future`` until it resolves.

        ``transaction_ended`` is given for a task written in an application
        transaction: until it returns True, a missing record means "not
        committed yet" rather than "not found", and the task is read every
        poll interval, because its commit sends no push.

        With push, a task may finish before its future is tracked. Its push
        is remembered for RECENT_PUSH_S, and tracking reads it at once. A task
        may also finish before the subscription is live, and that push is
        lost. So a future tracked before the subscription is confirmed, or
        within FRESH_WINDOW_S after, is read once, batched with others, one
        poll interval later.
        """
        with self._lock:
            was_idle = not self._futures
            self._futures.setdefault(future.task_id, []).append(weakref.ref(future))
            if transaction_ended is not None:
                self._uncommitted[future.task_id] = transaction_ended
            if self._thread is None and not self._closed:
                self._start()
            pushed_before = False
            if self._unsubscribe is not None:
                pushed_before = self._recent.pop(future.task_id, None) is not None
                if pushed_before:
                    self._changed.add(future.task_id)
                elif time.monotonic() < self._fresh_until:
                    if not self._fresh:
                        self._fresh_due = time.monotonic() + self._poll_interval_s
                    self._fresh.add(future.task_id)
        if was_idle or pushed_before:
            self._wake.set()

    def pin(self, future: TaskFuture[Any]) -> None:
        """Hold ``future`` strongly until it resolves, because a callback waits on it."""
        if future.done():
            return
        with self._lock:
            self._pinned.add(future)

    def open_count(self) -> int:
        with self._lock:
            return len(self._futures)

    def awaits_commit(self, task_id: str) -> bool:
        """Return whether ``task_id`` was written in a still-open application transaction.

        Call it before reading the record: a transaction that ends between the
        two would otherwise make a committed task look missing.
        """
        with self._lock:
            transaction_ended = self._uncommitted.get(task_id)
        return transaction_ended is not None and not transaction_ended()

    def notify(self, task_ids: Sequence[str]) -> None:
        """Ask for an immediate read of ``task_ids``; push listeners call it.

        An empty ``task_ids`` means the listener may have missed changes (it
        subscribed again after a lost connection), so every open future is read.
        """
        with self._lock:
            if not task_ids:
                self._resync = True
            else:
                now = time.monotonic()
                for task_id in task_ids:
                    if task_id in self._futures:
                        self._changed.add(task_id)
                    else:
                        # Re-inserted, so the dict stays ordered by arrival time.
                        self._recent.pop(task_id, None)
                        self._recent[task_id] = now
                self._forget_old_pushes(now)
            if not self._changed and not self._resync:
                return
        self._wake.set()

    def _forget_old_pushes(self, now: float) -> None:
        """Drop remembered pushes older than RECENT_PUSH_S; call with the lock held."""
        recent = self._recent
        while recent:
            oldest = next(iter(recent))
            if now - recent[oldest] < RECENT_PUSH_S:
                return
            del recent[oldest]

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _start(self) -> None:
        self._unsubscribe = self._storage.subscribe(self.notify)
        self._thread = threading.Thread(target=self._loop, name="taskfuture-waiter", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        full_pass_due = 0.0
        uncommitted_due = 0.0
        push_read_due = 0.0
        while True:
            with self._lock:
                if self._closed:
                    return
                changed, self._changed = self._changed, set()
                resync, self._resync = self._resync, False
                if self._fresh and time.monotonic() >= self._fresh_due:
                    changed.update(task_id for task_id in self._fresh if task_id in self._futures)
                    self._fresh = set()
                # Without push every full pass reads them; with push nothing
                # announces a commit, so they are read every poll interval.
                if self._uncommitted and self._unsubscribe and time.monotonic() >= uncommitted_due:
                    changed.update(self._uncommitted)
                    uncommitted_due = time.monotonic() + self._poll_interval_s
            now = time.monotonic()
            if now >= full_pass_due or resync:
                with self._lock:
                    self._fresh = set()
                ids = self._open_ids()
                queries = self._poll(ids)
                if resync:
                    with self._lock:
                        self._fresh_until = time.monotonic() + FRESH_WINDOW_S
                interval = SAFETY_RECHECK_S if self._unsubscribe else self._poll_interval_s
                budget_due = time.monotonic() + queries / MAX_QUERIES_PER_S
                full_pass_due = max(budget_due, time.monotonic() + interval)
                if len(ids) > CROWD_SIZE:
                    # The pass spent the crowd's query budget: pushed ids wait for it too.
                    push_read_due = max(push_read_due, budget_due)
            elif changed and now < push_read_due:
                # A crowd of open futures: keep the ids for the next batched read.
                with self._lock:
                    self._changed.update(changed)
            elif changed:
                queries = self._poll(sorted(changed))
                if len(self._futures) > CROWD_SIZE:
                    push_read_due = time.monotonic() + queries / MAX_QUERIES_PER_S
                    full_pass_due = max(full_pass_due, push_read_due)
            wait_s = max(0.0, full_pass_due - time.monotonic())
            if self._changed:
                wait_s = min(wait_s, max(0.0, push_read_due - time.monotonic()))
            with self._lock:
                if self._fresh:
                    wait_s = min(wait_s, max(0.0, self._fresh_due - time.monotonic()))
                if self._uncommitted and self._unsubscribe:
                    wait_s = min(wait_s, max(0.0, uncommitted_due - time.monotonic()))
            if not self._futures:
                wait_s = 3600.0
            self._wake.wait(wait_s)
            self._wake.clear()

    def _open_ids(self) -> list[str]:
        with self._lock:
            dead = [
                task_id
                for task_id, refs in self._futures.items()
                if all(ref() is None for ref in refs)
            ]
            for task_id in dead:
                del self._futures[task_id]
            return list(self._futures)

    def _poll(self, ids: list[str]) -> int:
        """Read ``ids`` in batches and resolve what finished; return the number of queries."""
        queries = 0
        for start in range(0, len(ids), QUERY_BATCH):
            batch = ids[start : start + QUERY_BATCH]
            queries += 1
            self.status_queries += 1
            uncommitted = self._open_transactions(batch)
            try:
                records = self._storage.get_many(batch)
            except Exception:
                logger.exception("Waiter failed to read %d task(s); retrying next poll", len(batch))
                continue
            self._dispatch(batch, records, uncommitted)
        return queries

    def _open_transactions(self, batch: list[str]) -> set[str]:
        """Return the ids of ``batch`` whose application transaction may still be open."""
        with self._lock:
            if not self._uncommitted:
                return set()
            watched = [
                (task_id, ended)
                for task_id in batch
                if (ended := self._uncommitted.get(task_id)) is not None
            ]
        return {task_id for task_id, ended in watched if not ended()}

    def _dispatch(
        self, batch: list[str], records: list[TaskRecord], uncommitted: set[str] | None = None
    ) -> None:
        found = {record.task_id: record for record in records}
        if uncommitted:
            # Not committed yet: keep waiting for the record to appear.
            batch = [task_id for task_id in batch if task_id in found or task_id not in uncommitted]
        missing = [task_id for task_id in batch if task_id not in found]
        expired: set[str] = set()
        if missing:
            try:
                expired = self._storage.expired_ids(missing)
            except Exception:
                # Without the tombstones a missing task cannot be distinguished from an
                # expired one: leave those futures open for the next pass.
                logger.exception("Waiter failed to look up %d missing task(s)", len(missing))
                batch = [task_id for task_id in batch if task_id in found]
        for task_id in batch:
            if self._uncommitted and task_id in found:
                with self._lock:
                    self._uncommitted.pop(task_id, None)
            futures = self._futures_of(task_id)
            for future in futures:
                record = found.get(task_id)
                try:
                    if record is None:
                        error = (TaskExpiredError if task_id in expired else TaskNotFoundError)(
                            task_id
                        )
                        self._service._resolve_missing(future, error)
                    else:
                        self._service._apply(future, record)
                except Exception:
                    logger.exception("Waiter failed to resolve task %s", task_id)
            # A future can end before its record does (a damaged record that no
            # process could fail): reading it again would only repeat that.
            if (
                task_id not in found
                or found[task_id].status.terminal
                or all(future.done() for future in futures)
            ):
                self._forget(task_id)

    def _futures_of(self, task_id: str) -> list[TaskFuture[Any]]:
        with self._lock:
            refs = self._futures.get(task_id, [])
            return [future for ref in refs if (future := ref()) is not None]

    def _forget(self, task_id: str) -> None:
        with self._lock:
            self._uncommitted.pop(task_id, None)
            refs = self._futures.pop(task_id, [])
            for ref in refs:
                future = ref()
                if future is not None:
                    self._pinned.discard(future)
