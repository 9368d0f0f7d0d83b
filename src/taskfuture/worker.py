"""The worker: claims tasks, runs them, records outcomes, keeps leases alive.

Sync tasks run in a thread pool and async tasks on one event loop thread; in
all at most ``concurrency`` tasks run at once. In process mode (``processes=N``)
sync tasks run in N child processes instead: see :mod:`taskfuture.processes`.
A heartbeat thread extends the leases of running tasks, stops tasks that were
cancelled, and puts back the tasks of workers whose leases ran out. Expired
records are swept on an interval.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from types import FrameType
from typing import Any

from taskfuture import codec
from taskfuture.config import validate_queue_name
from taskfuture.context import TaskContext, reset_current_context, set_current_context
from taskfuture.errors import (
    ConcurrentModificationError,
    StorageError,
    TaskNotFoundError,
)
from taskfuture.models import Progress, TaskRecord, TaskStatus, Transition, short_repr
from taskfuture.processes import ProcessPool
from taskfuture.service import Task, TaskService

logger = logging.getLogger(__name__)

#: Attempts to store an outcome while the engine fails, and the pause between them.
FINISH_RETRIES = 5
FINISH_RETRY_PAUSE_S = 0.5
#: Maximum pause between tries to set up an engine that is unreachable at start.
MAX_SETUP_PAUSE_S = 5.0


@dataclasses.dataclass
class _Running:
    record: TaskRecord
    task: Task[Any, Any]
    context: TaskContext
    #: ``time.monotonic()`` past which the run breaks its time limit, if it has one.
    deadline: float | None = None
    async_task: asyncio.Task[Any] | None = None
    #: Set once the run was cancelled, reclaimed or timed out: its outcome is discarded.
    cancelled: bool = False


class Worker:
    """Runs the tasks of ``service`` from ``queues`` until stopped.

    Args:
        service: the service whose registered tasks this worker runs.
        queues: queues to consume; defaults to the service's configured queues.
        concurrency: most tasks running at once.
        shutdown_timeout_s: on stop, how long running tasks may finish before
            they are released back to their queue.
        processes: run sync tasks in this many child processes, one task per
            child, for CPU-bound work; it replaces ``concurrency``. Async tasks
            still run on the worker's event loop and take one of these slots.
        app_spec: ``MODULE:ATTRIBUTE`` of ``service``, which child processes
            import; required with ``processes``.
        process_grace_s: how long a cancelled or timed-out task may run on in
            its child before SIGTERM, and how long after SIGTERM before SIGKILL.
    """

    def __init__(
        self,
        service: TaskService,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 4,
        shutdown_timeout_s: float = 30.0,
        worker_id: str | None = None,
        processes: int | None = None,
        app_spec: str | None = None,
        process_grace_s: float = 2.0,
    ) -> None:
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"invalid concurrency {concurrency!r}: expected a whole number >= 1")
        if processes is not None:
            _check_process_options(processes, app_spec, process_grace_s)
            concurrency = processes

        self.service = service
        self.storage = service.storage
        self.settings = service.settings
        self.queues = tuple(
            validate_queue_name(queue) for queue in (queues or self.settings.queues)
        )
        self.concurrency = concurrency
        self.shutdown_timeout_s = shutdown_timeout_s
        self.worker_id = (
            worker_id or f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self.heartbeat_interval_s = min(self.settings.lease_s / 3, 1.0)
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._slot_freed = threading.Event()
        #: Outcomes waiting to be stored, and whether a thread is storing them.
        self._outbox: list[tuple[TaskRecord, Transition]] = []
        self._outbox_lock = threading.Lock()
        self._storing = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            concurrency, thread_name_prefix="taskfuture-task"
        )
        self._loop = asyncio.new_event_loop()
        self._processes: ProcessPool | None = None
        if processes is not None and app_spec is not None:
            self._processes = ProcessPool(self, app_spec, processes, process_grace_s)
        #: Outcomes stored so far, by status; tests and the CLI read it.
        self.counts: dict[str, int] = {status.value: 0 for status in TaskStatus}

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the worker's threads and return; stop it with :meth:`stop`."""
        self.storage.setup()
        self._start_threads()

    def _start_threads(self) -> None:
        # One connection per task thread, plus the fetch, heartbeat, sweep and waiter threads.
        self.storage.reserve_connections(self.concurrency + 4)
        logger.info(
            "Worker %s starting on %s, queues %s, concurrency %d",
            self.worker_id,
            self.storage.description,
            ",".join(self.queues),
            self.concurrency,
        )
        if self._processes is not None:
            self._processes.start()
        for target, name in (
            (self._loop.run_forever, "taskfuture-loop"),
            (self._fetch_loop, "taskfuture-fetch"),
            (self._heartbeat_loop, "taskfuture-heartbeat"),
            (self._sweep_loop, "taskfuture-sweep"),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self) -> None:
        """Run until SIGTERM or SIGINT; a second signal releases running tasks at once.

        Unlike :meth:`start`, which raises StorageError at once, ``run`` waits
        for an engine that cannot be reached yet, retrying with a growing
        pause of up to ``MAX_SETUP_PAUSE_S``, so that workers started before
        their database or Redis come up once it does.
        """
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if not self._wait_for_storage():
            logger.info("Worker %s stopped before its storage could be reached", self.worker_id)
            return
        self._start_threads()
        while not self._stopping.wait(0.5):
            pass
        self.stop()

    def _wait_for_storage(self) -> bool:
        """Set up the storage, retrying while it fails; return False if stopped first."""
        pause = self.settings.poll_interval_s
        started = time.monotonic()
        tries = 0
        while True:
            tries += 1
            try:
                self.storage.setup()
            except StorageError as exc:
                # The count and the time tell an operator a typo in the DSN from a slow start.
                logger.error(
                    "Worker %s cannot set up its storage (try %d, %.0f s so far): %s; "
                    "retrying in %.1f s",
                    self.worker_id,
                    tries,
                    time.monotonic() - started,
                    exc,
                    pause,
                )
            else:
                return True
            if self._stopping.wait(pause):
                return False
            pause = min(pause * 2, MAX_SETUP_PAUSE_S)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._stopping.is_set():
            logger.warning(
                "Worker %s got %s again; releasing running tasks now", self.worker_id, name
            )
            self.shutdown_timeout_s = 0.0
            self._slot_freed.set()
            return
        logger.info("Worker %s got %s; finishing running tasks", self.worker_id, name)
        self._stopping.set()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop claiming, let running tasks finish, then release what is left."""
        if self._stopped.is_set():
            return
        self._stopping.set()
        self._slot_freed.set()
        grace = self.shutdown_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + grace
        # The fetch thread must be gone before tasks are released, or it could
        # claim a released task again.
        fetch = next((t for t in self._threads if t.name == "taskfuture-fetch"), None)
        if fetch is not None:
            fetch.join(timeout=self.settings.poll_interval_s + 10)
        while self._running_ids() and time.monotonic() < deadline and self.shutdown_timeout_s > 0:
            self._slot_freed.wait(0.05)
            self._slot_freed.clear()
        # Worst case: every try of the batch that is being stored fails.
        self._wait_outcomes_stored(FINISH_RETRY_PAUSE_S * FINISH_RETRIES * (FINISH_RETRIES + 1))
        self._release_all()
        if self._processes is not None:
            self._processes.stop()
        self._stopped.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        for thread in self._threads:
            thread.join(timeout=5)
        if not self._loop.is_running():
            self._loop.close()
        logger.info("Worker %s stopped; outcomes %s", self.worker_id, self._summary())

    def _summary(self) -> str:
        counts = [f"{status.lower()}={count}" for status, count in self.counts.items() if count]
        return ", ".join(counts) or "none"

    def _running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    # -- claiming ----------------------------------------------------------------

    def _fetch_loop(self) -> None:
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            if free <= 0:
                self._slot_freed.wait(self.settings.poll_interval_s)
                self._slot_freed.clear()
                continue
            try:
                records = self.storage.claim(
                    self.worker_id, self.queues, free, self.settings.lease_s
                )
            except StorageError as exc:
                logger.error("Worker %s failed to claim tasks: %s; retrying", self.worker_id, exc)
                self._stopping.wait(min(5.0, self.settings.poll_interval_s * 10))
                continue
            except Exception:
                # A damaged record must not stop the worker: log it and go on.
                logger.exception("Worker %s failed to claim tasks; retrying", self.worker_id)
                self._stopping.wait(min(5.0, self.settings.poll_interval_s * 10))
                continue
            if not records:
                self._wait_for_work()
                continue
            for record in records:
                self._dispatch_safely(record)

    def _wait_for_work(self) -> None:
        try:
            self.storage.wait_for_work(self.queues, self.settings.poll_interval_s, self._stopping)
        except StorageError as exc:
            logger.error("Worker %s failed to wait for work: %s", self.worker_id, exc)
            self._stopping.wait(self.settings.poll_interval_s)

    def _dispatch_safely(self, record: TaskRecord) -> None:
        try:
            self._dispatch(record)
        except Exception as exc:
            logger.exception("Task %s (%s) could not be started", record.task_id, record.name)
            self._forget(record.task_id)
            self._fail_now(record, "RuntimeError", f"the worker could not start the task: {exc}")

    def _dispatch(self, record: TaskRecord) -> None:
        logger.debug(
            "Task %s (%s) claimed, attempt %d", record.task_id, record.name, record.attempts
        )
        with self._lock:
            current = self._running.get(record.task_id)
            if current is not None and not current.cancelled:
                # The storage lost this worker's earlier claim (a crash undid an
                # unflushed commit) and handed the task out again: the run goes on
                # under the new claim, instead of a second run beside it.
                current.record = record
                logger.warning(
                    "Task %s (%s) was claimed again while it runs here; the run goes on",
                    record.task_id,
                    record.name,
                )
                return
        if record.damage is not None:
            error = self.service.damage_error(record)
            logger.error(
                "Task %s failed before running: its record is damaged: %s",
                record.task_id,
                record.damage,
            )
            self._store_outcome(record, self.service.finish_change(TaskStatus.FAILED, error=error))
            return
        task = self.service.tasks.get(record.name)
        if task is None or task.fn is None:
            self._fail_now(
                record,
                "UnknownTaskError",
                f"task {short_repr(record.name)} is not registered in worker {self.worker_id}; "
                f"register it with @tasks.task({short_repr(record.name)}) in the module given "
                "to --app",
                module="taskfuture.errors",
            )
            return
        try:
            args, kwargs = codec.decode_call(record.payload, self.settings.max_payload_bytes)
            if task.signature is not None:
                task.signature.bind(*args, **kwargs)
        except (ValueError, TypeError) as exc:
            self._fail_now(
                record, "TypeError", f"invalid arguments for task {record.name!r}: {exc}"
            )
            return
        context = TaskContext(
            record.task_id,
            record.name,
            record.queue,
            record.attempts,
            record.max_attempts,
            lambda progress: self._store_progress(record.task_id, progress),
        )
        limit = task.options.time_limit_s
        deadline = time.monotonic() + limit if limit is not None else None
        running = _Running(record, task, context, deadline)
        with self._lock:
            self._running[record.task_id] = running
        if task.is_async:
            asyncio.run_coroutine_threadsafe(
                self._run_async(task, running, args, kwargs), self._loop
            )
        elif self._processes is not None:
            self._processes.submit(running)
        else:
            self._pool.submit(self._run_sync, task, running, args, kwargs)

    # -- running -------------------------------------------------------------------

    def _run_sync(
        self, task: Task[Any, Any], running: _Running, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        token = set_current_context(running.context)
        try:
            assert task.fn is not None
            value = task.fn(*args, **kwargs)
            if inspect.isawaitable(value):
                raise TypeError(
                    f"task {task.name!r} returned an awaitable; declare it with async def"
                )
        except BaseException as exc:
            self._finish_failed(running, exc)
        else:
            self._finish_completed(running, value)
        finally:
            reset_current_context(token)

    async def _run_async(
        self, task: Task[Any, Any], running: _Running, args: list[Any], kwargs: dict[str, Any]
    ) -> None:
        assert task.fn is not None
        fn = task.fn

        async def call() -> Any:
            set_current_context(running.context)
            return await fn(*args, **kwargs)

        running.async_task = asyncio.ensure_future(call())
        if running.cancelled:
            running.async_task.cancel()
        try:
            value = await running.async_task
        except asyncio.CancelledError as exc:
            await asyncio.to_thread(self._finish_failed, running, exc)
        except BaseException as exc:
            await asyncio.to_thread(self._finish_failed, running, exc)
        else:
            await asyncio.to_thread(self._finish_completed, running, value)

    def _finish_completed(self, running: _Running, value: Any) -> None:
        try:
            result = codec.encode(value, "result")
            codec.check_size(result, "result", self.settings.max_payload_bytes)
        except (TypeError, ValueError, RecursionError) as exc:
            self._finish_failed(running, exc)
            return
        self._store_result(running, result)

    def _store_result(self, running: _Running, result: str) -> None:
        """Complete the run with ``result``, JSON text made by :func:`codec.encode`."""
        change = self.service.finish_change(TaskStatus.COMPLETED, result=result)
        self._finish(running, change)

    def _finish_failed(self, running: _Running, exc: BaseException) -> None:
        text = "".join(traceback.format_exception(exc))
        self._store_error(
            running,
            codec.encode_exception(exc, text),
            f"{type(exc).__qualname__}: {exc}",
            retryable=isinstance(exc, running.task.options.retry_on),
        )

    def _store_error(self, running: _Running, error: str, summary: str, *, retryable: bool) -> None:
        """Queue the next attempt, or fail the run with ``error``, JSON text from :mod:`codec`.

        ``summary`` is the exception type and message for the log; a run that
        was cancelled, reclaimed or timed out is only forgotten.
        """
        record = running.record
        if running.cancelled:
            logger.info("Task %s (%s) stopped after cancellation", record.task_id, record.name)
            self._forget(record.task_id, running)
            return
        if retryable and self._retry(running, error, summary):
            return
        logger.warning("Task %s (%s) failed: %s", record.task_id, record.name, summary)
        change = self.service.finish_change(TaskStatus.FAILED, error=error)
        self._finish(running, change)

    def _retry(self, running: _Running, error: str, summary: str) -> bool:
        """Queue the next attempt if attempts remain."""
        record = running.record
        options = running.task.options
        if record.attempts >= record.max_attempts:
            return False
        delay = options.retry_delay(record.attempts)
        change = Transition(
            TaskStatus.PENDING,
            available_at=time.time() + delay,
            error=error,
            release=True,
        )
        logger.info(
            "Task %s (%s) failed with %s on attempt %d of %d; retrying in %.2f s",
            record.task_id,
            record.name,
            summary,
            record.attempts,
            record.max_attempts,
            delay,
        )
        self._finish(running, change)
        return True

    def _fail_now(
        self, record: TaskRecord, type_name: str, message: str, module: str = "builtins"
    ) -> None:
        # The name may be anything that was stored: a hostile one must not flood the log.
        logger.error(
            "Task %s (%s) failed before running: %s",
            record.task_id,
            short_repr(record.name),
            message,
        )
        error = codec.make_error(module, type_name, message)
        change = self.service.finish_change(TaskStatus.FAILED, error=error)
        self._store_outcome(record, change)

    def _finish(self, running: _Running, change: Transition) -> None:
        running.context.flush_progress()
        try:
            self._store_outcome(running.record, change)
        finally:
            self._forget(running.record.task_id, running)

    def _forget(self, task_id: str, running: _Running | None = None) -> None:
        """Drop the task from the running ones; given ``running``, only if it is that run.

        A task this worker claims again while an earlier run of it still ends
        (a cancelled run that ignores its cancel) has a new entry, which the
        earlier run must leave in place.
        """
        with self._lock:
            if running is None or self._running.get(task_id) is running:
                self._running.pop(task_id, None)
        self._slot_freed.set()

    def _store_outcome(self, record: TaskRecord, change: Transition) -> None:
        """Queue an outcome and store it, batched with outcomes other threads queue.

        The thread that finds no batch being stored stores the queue with one
        ``transition_many`` call, then stores what was queued meanwhile, so
        outcomes of many tasks share one round trip and no thread waits for
        another's.
        """
        with self._outbox_lock:
            self._outbox.append((record, change))
            if self._storing:
                return
            self._storing = True
        while True:
            with self._outbox_lock:
                batch, self._outbox = self._outbox, []
                if not batch:
                    self._storing = False
                    return
            self._store_batch(batch)

    def _store_batch(self, batch: list[tuple[TaskRecord, Transition]]) -> None:
        for attempt in range(1, FINISH_RETRIES + 1):
            outcomes = self.storage.transition_many(
                [(record.task_id, record.version, change) for record, change in batch]
            )
            failed: list[tuple[TaskRecord, Transition]] = []
            error: StorageError | None = None
            for (record, change), outcome in zip(batch, outcomes, strict=True):
                if outcome is None:
                    with self._lock:
                        self.counts[change.status.value] += 1
                    logger.debug(
                        "Task %s (%s) %s", record.task_id, record.name, change.status.value.lower()
                    )
                elif isinstance(outcome, StorageError):
                    failed.append((record, change))
                    error = outcome
                else:
                    logger.info(
                        "Task %s (%s) changed while it ran (cancelled, reclaimed or deleted); "
                        "its %s outcome is discarded",
                        record.task_id,
                        record.name,
                        change.status.value,
                    )
            if not failed:
                return
            logger.error(
                "Storing the outcomes of %d task(s), first %s, failed (try %d of %d): %s",
                len(failed),
                failed[0][0].task_id,
                attempt,
                FINISH_RETRIES,
                error,
            )
            time.sleep(FINISH_RETRY_PAUSE_S * attempt)
            batch = failed
        for record, _ in batch:
            logger.error(
                "Task %s outcome lost; another worker will run it after its lease", record.task_id
            )

    def _wait_outcomes_stored(self, timeout_s: float) -> None:
        """Wait until every queued outcome is stored, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._outbox_lock:
                if not self._storing and not self._outbox:
                    return
            time.sleep(0.01)

    def _store_progress(self, task_id: str, progress: Progress) -> None:
        try:
            self.storage.set_progress(task_id, self.worker_id, codec.encode(progress.to_dict()))
        except StorageError as exc:
            logger.warning("Storing progress of task %s failed: %s", task_id, exc)

    # -- heartbeat, cancellation and lost workers ------------------------------------

    def _heartbeat_loop(self) -> None:
        next_heartbeat = time.monotonic() + self.heartbeat_interval_s
        next_recovery = 0.0
        while not self._stopped.wait(self._until_next_check(next_heartbeat)):
            now = time.monotonic()
            try:
                self._enforce_time_limits()
                if now >= next_heartbeat:
                    next_heartbeat = now + self.heartbeat_interval_s
                    self._heartbeat()
                if now >= next_recovery and not self._stopping.is_set():
                    next_recovery = now + self.settings.lease_s / 2
                    self.recover_expired_leases()
            except Exception:
                # The heartbeat keeps every lease alive: it must outlive any one error.
                logger.exception("Worker %s heartbeat failed; retrying", self.worker_id)

    def _until_next_check(self, next_heartbeat: float) -> float:
        with self._lock:
            deadlines = [
                r.deadline for r in self._running.values() if r.deadline and not r.cancelled
            ]
        wake = min([next_heartbeat, *deadlines])
        return max(0.0, min(wake - time.monotonic(), self.heartbeat_interval_s))

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        with self._lock:
            overdue = [
                running
                for running in self._running.values()
                if running.deadline is not None
                and running.deadline <= now
                and not running.cancelled
            ]
        for running in overdue:
            self._stop_overdue(running)

    def _stop_overdue(self, running: _Running) -> None:
        """Fail a run that broke its time limit, then tell the running code to stop."""
        record = running.record
        limit = running.task.options.time_limit_s
        message = f"task {record.name!r} ran longer than its time limit of {limit:g} s"
        logger.warning("Task %s (%s) stopped: %s", record.task_id, record.name, message)
        error = codec.make_error("taskfuture.errors", "TaskTimeLimitError", message)
        change = self.service.finish_change(TaskStatus.FAILED, error=error)
        running.cancelled = True
        running.context.request_cancel()
        if running.async_task is not None:
            self._loop.call_soon_threadsafe(running.async_task.cancel)
        if self._processes is not None:
            self._processes.cancel(record.task_id)
        self._store_outcome(record, change)

    def _heartbeat(self) -> None:
        ids = self._running_ids()
        if not ids:
            return
        try:
            held = self.storage.extend_leases(self.worker_id, ids, self.settings.lease_s)
        except StorageError as exc:
            logger.error("Worker %s failed to extend leases: %s", self.worker_id, exc)
            return
        for task_id in ids:
            if task_id not in held:
                self._cancel_running(task_id)

    def _cancel_running(self, task_id: str) -> None:
        with self._lock:
            running = self._running.get(task_id)
        if running is None or running.cancelled:
            return
        logger.info(
            "Task %s (%s) was cancelled or reclaimed; stopping it", task_id, running.record.name
        )
        running.cancelled = True
        running.context.request_cancel()
        if running.async_task is not None:
            self._loop.call_soon_threadsafe(running.async_task.cancel)
        if self._processes is not None:
            self._processes.cancel(task_id)

    def recover_expired_leases(self, limit: int = 500) -> int:
        """Requeue or fail the tasks of workers whose leases ran out; return how many."""
        try:
            expired = self.storage.find_expired_leases(limit)
        except StorageError as exc:
            logger.error("Finding expired leases failed: %s", exc)
            return 0
        recovered = 0
        for record in expired:
            try:
                if self.service.recover_lost_task(record):
                    recovered += 1
            except Exception:
                logger.exception("Recovering task %s failed; will retry", record.task_id)
        return recovered

    def _release_all(self) -> None:
        for task_id in self._running_ids():
            with self._lock:
                running = self._running.get(task_id)
            if running is None:
                continue
            self._cancel_running(task_id)
            record = running.record
            change = Transition(
                TaskStatus.PENDING,
                attempts=max(0, record.attempts - 1),
                available_at=time.time(),
                release=True,
            )
            try:
                self.storage.transition(record.task_id, record.version, change)
                logger.warning(
                    "Task %s (%s) released back to queue %s at shutdown",
                    task_id,
                    record.name,
                    record.queue,
                )
            except (ConcurrentModificationError, TaskNotFoundError):
                pass
            except StorageError as exc:
                logger.error("Releasing task %s failed: %s; its lease will run out", task_id, exc)

    # -- expiry --------------------------------------------------------------------------

    def _sweep_loop(self) -> None:
        while not self._stopping.wait(self.settings.sweep_interval_s):
            try:
                deleted = self.service.clean_expired()
            except StorageError as exc:
                logger.error("Sweeping expired tasks failed: %s", exc)
                continue
            if deleted:
                logger.info("Worker %s deleted %d expired task(s)", self.worker_id, deleted)


def _check_process_options(processes: object, app_spec: str | None, grace_s: object) -> None:
    if not isinstance(processes, int) or isinstance(processes, bool) or processes < 1:
        raise ValueError(f"invalid processes {processes!r}: expected a whole number >= 1")
    module_name, _, attribute = (app_spec or "").partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"invalid app_spec {app_spec!r}: process mode needs the MODULE:ATTRIBUTE "
            "of the TaskService that child processes import, for example myapp.tasks:tasks"
        )
    if isinstance(grace_s, bool) or not isinstance(grace_s, int | float) or not grace_s >= 0:
        raise ValueError(f"invalid process_grace_s {grace_s!r}: expected seconds >= 0")
    if os.name != "posix":
        raise ValueError("process mode needs POSIX pipes and signals; run without processes")
