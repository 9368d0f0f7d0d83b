"""TaskService: configuration, the task registry, submit and re-attaching futures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from taskfuture import codec, errors
from taskfuture.backends.base import TaskStorage
from taskfuture.config import Settings, parse_duration, validate_queue_name
from taskfuture.dsn import open_storage
from taskfuture.errors import (
    ConcurrentModificationError,
    ConfigurationError,
    TaskNotFoundError,
    UnknownTaskError,
)
from taskfuture.future import TaskFuture, Waiter
from taskfuture.models import (
    UNKNOWN_VERSION,
    TaskRecord,
    TaskStatus,
    Transition,
    new_task_id,
    normalize_task_id,
)
from taskfuture.remote import exception_key, rebuild_exception

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

_NAME_LIMIT = 200


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """Queue, retry and time-limit options of a registered task."""

    #: Queue the task goes to unless a submit names another; None: the first configured queue.
    queue: str | None = None
    #: Most runs of one submit, counting retries and runs lost with a worker;
    #: None: the service's ``max_attempts``.
    max_attempts: int | None = None
    #: Exception types after which the worker runs the task again (while attempts remain).
    retry_on: tuple[type[BaseException], ...] = ()
    #: Pause before the first retry; each later retry doubles it, up to ``retry_backoff_max_s``.
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 300.0
    #: Whether each pause is shortened by a random factor between 0.5 and 1.
    retry_jitter: bool = True
    #: Maximum seconds a run may take before it is stopped and fails with TaskTimeLimitError.
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        if self.queue is not None:
            validate_queue_name(self.queue)
        attempts = self.max_attempts
        if attempts is not None and (
            not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1
        ):
            raise ConfigurationError(f"invalid max_attempts {attempts!r}: expected a number >= 1")
        retry_on = (self.retry_on,) if isinstance(self.retry_on, type) else tuple(self.retry_on)
        for kind in retry_on:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError(
                    f"invalid retry_on entry {kind!r}: expected an exception type"
                )
        object.__setattr__(self, "retry_on", retry_on)
        for field in ("retry_backoff_s", "retry_backoff_max_s"):
            object.__setattr__(self, field, parse_duration(getattr(self, field), field))
        if self.time_limit_s is not None:
            limit = parse_duration(self.time_limit_s, "time_limit_s")
            if limit <= 0:
                raise ConfigurationError(
                    f"invalid time_limit_s {self.time_limit_s!r}: expected > 0"
                )
            object.__setattr__(self, "time_limit_s", limit)

    def retry_delay(self, attempt: int) -> float:
        """Return the pause in seconds before the run that follows run number ``attempt``."""
        delay = min(self.retry_backoff_max_s, self.retry_backoff_s * 2.0 ** max(0, attempt - 1))
        if self.retry_jitter:
            delay *= 0.5 + random.random() / 2
        return delay


class Task(Generic[P, R]):
    """A registered task: call it to run it here, ``submit`` it to run it in a worker."""

    def __init__(
        self,
        service: TaskService,
        name: str,
        fn: Callable[..., Any] | None,
        options: TaskOptions,
    ) -> None:
        self.service = service
        self.name = name
        #: The function, or None for a task declared by name that only workers run.
        self.fn = fn
        self.options = options
        self.queue = options.queue or service.settings.queues[0]
        self.max_attempts = options.max_attempts
        self.is_async = fn is not None and inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn) if fn is not None else None

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.fn is None:
            raise UnknownTaskError(
                f"task {self.name!r} was declared by name only, so it cannot run in this "
                "process; submit it and let a worker that registers it run it"
            )
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]:
        """Queue a run of this task and return its future at once."""
        return self.service.submit_with_options(self, args, kwargs)

    def submit_with_options(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> TaskFuture[R]:
        """Queue a run with options; see :meth:`TaskService.submit_with_options`."""
        return self.service.submit_with_options(self, args, kwargs, **options)

    def submit_many(
        self, calls: Iterable[Sequence[Any] | Call], **options: Any
    ) -> list[TaskFuture[R]]:
        """Queue many runs in one round trip; see :meth:`TaskService.submit_many`."""
        return self.service.submit_many(self, calls, **options)

    def __repr__(self) -> str:
        return f"<Task {self.name!r} queue={self.queue!r}>"


class Call:
    """Arguments for one run in :meth:`TaskService.submit_many`."""

    __slots__ = ("args", "kwargs")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return f"Call(*{self.args!r}, **{self.kwargs!r})"


class TaskService:
    """Entry point: registers tasks, submits them and hands out their futures.

    Args:
        dsn: the engine that stores tasks, such as ``sqlite:///taskfuture.db``,
            ``postgresql://user@host/db`` or ``redis://localhost:6379/0``.
            None reads the environment like :meth:`from_env`.
        settings: a complete :class:`Settings`; keyword options override it.
        **options: any :class:`Settings` field, such as ``retention_s=3600``.
    """

    def __init__(
        self, dsn: str | None = None, *, settings: Settings | None = None, **options: Any
    ) -> None:
        if dsn:
            options["dsn"] = dsn
        if settings is None:
            settings = Settings.from_env(None, **options)
        else:
            settings = settings.replace(**options)
        self.settings = settings
        self.storage: TaskStorage = open_storage(settings)
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._exception_types: dict[str, type[Exception]] = {
            exception_key(errors.UnknownTaskError): errors.UnknownTaskError,
        }
        self._waiter = Waiter(self, self.storage, settings.poll_interval_s)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> TaskService:
        """Build a service from ``TASKFUTURE_*`` variables (DSN from ``TASKFUTURE_DSN``,
        then ``MESSENGER_TRANSPORT_DSN``, else ``sqlite:///taskfuture.db``)."""
        return cls(settings=Settings.from_env(environ, **options))

    def __repr__(self) -> str:
        return f"<TaskService {self.settings.masked_dsn} tasks={len(self._tasks)}>"

    def __enter__(self) -> TaskService:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the waiter and release connections."""
        self._waiter.close()
        self.storage.close()

    # -- registry --------------------------------------------------------------

    @overload
    def task(self, name: Callable[P, Awaitable[R]], /) -> Task[P, R]: ...

    @overload
    def task(self, name: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, name: str | None = None, /, **options: Any) -> _TaskDecorator: ...

    def task(
        self, name: str | Callable[..., Any] | None = None, /, **options: Any
    ) -> Task[Any, Any] | _TaskDecorator:
        """Register a function as a task, by default named ``module.qualname``.

        Use it as ``@tasks.task``, ``@tasks.task("reports.build")`` or
        ``@tasks.task("reports.build", queue="reports", max_attempts=5,
        retry_on=(ConnectionError,), time_limit_s=60)``; the keyword options
        are the fields of :class:`TaskOptions`.
        """
        if callable(name):
            return self._register(None, name, TaskOptions(**options))
        task_options = TaskOptions(**options)

        def decorate(fn: Callable[..., Any]) -> Task[Any, Any]:
            return self._register(name, fn, task_options)

        return decorate

    def declare(self, name: str, /, **options: Any) -> Task[..., Any]:
        """Declare a task that only the workers register, so that it can be submitted by name."""
        return self._register(name, None, TaskOptions(**options))

    def _register(
        self, name: str | None, fn: Callable[..., Any] | None, options: TaskOptions
    ) -> Task[Any, Any]:
        if name is None and fn is not None:
            name = f"{fn.__module__}.{fn.__qualname__}"
        if not isinstance(name, str) or not name or len(name) > _NAME_LIMIT:
            raise ConfigurationError(
                f"invalid task name {name!r}: use 1 to {_NAME_LIMIT} characters"
            )
        existing = self._tasks.get(name)
        if (
            existing is not None
            and existing.fn is not None
            and fn is not None
            and existing.fn is not fn
        ):
            raise ConfigurationError(
                f"task name {name!r} is already registered to {existing.fn!r}; pick another name"
            )
        task: Task[Any, Any] = Task(self, name, fn, options)
        self._tasks[name] = task
        return task

    def get_task(self, name: str) -> Task[Any, Any]:
        """Return the task registered or declared as ``name``.

        Raises:
            UnknownTaskError: no task of that name is known in this process.
        """
        task = self._tasks.get(name)
        if task is None:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTaskError(
                f"task {name!r} is not registered in this process (registered: {known}); "
                f"register it with @tasks.task({name!r}), or call tasks.declare({name!r}) "
                "if only the workers have its code"
            )
        return task

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """Registered and declared tasks by name (a copy)."""
        return dict(self._tasks)

    def register_exception(self, *types: type[Exception]) -> None:
        """Let the caller rebuild these exception types from task failures, as themselves."""
        for kind in types:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise ConfigurationError(
                    f"cannot register {kind!r}: expected an Exception subclass"
                )
            self._exception_types[exception_key(kind)] = kind

    # -- submit ----------------------------------------------------------------

    def submit(self, task: Task[P, R] | str, /, *args: Any, **kwargs: Any) -> TaskFuture[Any]:
        """Queue a run of ``task`` (a Task or a registered name) and return its future at once."""
        return self.submit_with_options(task, args, kwargs)

    def submit_with_options(
        self,
        task: Task[Any, Any] | str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        queue: str | None = None,
        delay: dt.timedelta | float | None = None,
        eta: dt.datetime | None = None,
        max_attempts: int | None = None,
        connection: Any = None,
    ) -> TaskFuture[Any]:
        """Queue a run with options and return its future at once.

        Args:
            task: a Task or the name of a registered or declared task.
            args, kwargs: the task's arguments; they must survive JSON encoding.
            queue: overrides the task's queue.
            delay: run no earlier than this long from now (timedelta or seconds).
            eta: run no earlier than this timezone-aware datetime.
            max_attempts: how often the task may be claimed before a lost worker fails it.
            connection: a SQLAlchemy Connection or Session to write the task in, so
                that the task exists only if that transaction commits. Until then
                the future stays PENDING and ``cancel()`` returns False; after a
                rollback it fails with TaskNotFoundError.

        Raises:
            TypeError: an argument cannot be encoded; the message names its path.
            UnknownTaskError: ``task`` is a name not known in this process.
            StorageError: the engine failed; nothing was queued.
        """
        record = self._new_record(task, args, kwargs or {}, queue, delay, eta, max_attempts)
        self.storage.enqueue([record], connection)
        return self._track_submitted([record], connection)[0]

    def submit_many(
        self,
        task: Task[Any, Any] | str,
        calls: Iterable[Sequence[Any] | Call],
        *,
        queue: str | None = None,
        delay: dt.timedelta | float | None = None,
        eta: dt.datetime | None = None,
        max_attempts: int | None = None,
        connection: Any = None,
    ) -> list[TaskFuture[Any]]:
        """Queue one run per item of ``calls``, all or none, in one round trip.

        Each item is a sequence of positional arguments or a :class:`Call`.
        Every item is encoded before anything is stored, so one bad item
        stores nothing.
        """
        records: list[TaskRecord] = []
        for index, item in enumerate(calls):
            if isinstance(item, Call):
                args, kwargs = item.args, item.kwargs
            elif isinstance(item, Sequence) and not isinstance(item, str | bytes):
                args, kwargs = tuple(item), {}
            else:
                raise TypeError(
                    f"invalid calls[{index}] {item!r}: "
                    "expected a sequence of arguments or Call(...)"
                )
            try:
                records.append(
                    self._new_record(task, args, kwargs, queue, delay, eta, max_attempts)
                )
            except TypeError as exc:
                raise TypeError(f"calls[{index}]: {exc}") from None
        self.storage.enqueue(records, connection)
        return self._track_submitted(records, connection)

    def _new_record(
        self,
        task: Task[Any, Any] | str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        queue: str | None,
        delay: dt.timedelta | float | None,
        eta: dt.datetime | None,
        max_attempts: int | None,
    ) -> TaskRecord:
        if isinstance(task, str):
            task = self.get_task(task)
        elif not isinstance(task, Task) or task.service is not self:
            if isinstance(task, Task):
                task = self.get_task(task.name)
            else:
                raise TypeError(
                    f"cannot submit {task!r}: expected a Task or a registered task name"
                )
        _check_call(task, args, kwargs)
        payload = codec.encode_call(args, kwargs, self.settings.max_payload_bytes)
        now = time.time()
        if max_attempts is not None:
            TaskOptions(max_attempts=max_attempts)
        attempts_limit = next(
            limit
            for limit in (max_attempts, task.max_attempts, self.settings.max_attempts)
            if limit is not None
        )
        return TaskRecord(
            task_id=new_task_id(),
            name=task.name,
            queue=validate_queue_name(queue) if queue is not None else task.queue,
            status=TaskStatus.PENDING,
            payload=payload,
            max_attempts=attempts_limit,
            created_at=now,
            available_at=_start_time(now, delay, eta),
        )

    # -- futures -----------------------------------------------------------------

    def future(self, task_id: str) -> TaskFuture[Any]:
        """Re-attach to a task by id, from any process that uses the same engine.

        Raises:
            ValueError: ``task_id`` is not a UUID.
            TaskNotFoundError: no such task, or it expired and was cleaned.
        """
        task_id = normalize_task_id(task_id)
        record = self.storage.get(task_id)
        if record is None:
            raise self._missing_error(task_id)
        future: TaskFuture[Any] = TaskFuture(self, task_id, record.status)
        self._apply(future, record)
        if not future.done():
            self._waiter.track(future)
        return future

    def status(self, task_id: str) -> TaskStatus:
        """Read a task's status from storage (raises TaskNotFoundError if there is none)."""
        task_id = normalize_task_id(task_id)
        record = self.storage.get(task_id)
        if record is None:
            raise self._missing_error(task_id)
        return record.status

    def touch(self, task_id: str, retention_s: float | None = None) -> bool:
        """Keep a finished task ``retention_s`` more seconds from now; see TaskFuture.touch."""
        task_id = normalize_task_id(task_id)
        seconds = self.settings.retention_s if retention_s is None else retention_s
        seconds = parse_duration(seconds, "retention_s")
        record = self.storage.touch(task_id, time.time() + seconds)
        if record is None:
            raise self._missing_error(task_id)
        return record.status.terminal

    def cancel(self, task_id: str) -> bool:
        """Cancel a task by id; see :meth:`TaskFuture.cancel`."""
        return self.future(task_id).cancel()

    def clean_expired(self, batch: int = 1000) -> int:
        """Delete every finished task past its retention; return how many were deleted."""
        deleted = 0
        while True:
            count = self.storage.delete_expired(batch)
            deleted += count
            if count < batch:
                return deleted

    def finish_change(
        self,
        status: TaskStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        release: bool = True,
    ) -> Transition:
        """Build the transition to a terminal ``status``, with retention starting now."""
        now = time.time()
        return Transition(
            status,
            finished_at=now,
            expires_at=now + self.settings.retention_s,
            result=result,
            error=error,
            release=release,
        )

    def damage_error(self, record: TaskRecord) -> str:
        """Return the stored error of a task failed because its record is damaged."""
        message = (
            f"the stored record of task {record.task_id} holds values taskfuture never writes "
            f"({record.damage}), so the task was failed without running; find what else "
            f"writes to the table {self.settings.table!r}, then submit the task again"
        )
        return codec.make_error("taskfuture.errors", "DamagedRecordError", message)

    def fail_damaged(self, record: TaskRecord) -> bool:
        """Fail a task whose record is damaged; return whether the failure was stored.

        The waiter calls it for damaged tasks that no worker holds, so that the
        caller gets a clear error instead of waiting for a task no worker can
        claim. A lost compare-and-set leaves the task to the process that won.
        """
        change = self.finish_change(TaskStatus.FAILED, error=self.damage_error(record))
        try:
            self.storage.transition(record.task_id, record.version, change)
        except (ConcurrentModificationError, TaskNotFoundError, errors.StorageError) as exc:
            logger.warning(
                "Task %s has a damaged record and was not failed: %s", record.task_id, exc
            )
            return False
        logger.error("Task %s failed: its record is damaged: %s", record.task_id, record.damage)
        return True

    def recover_lost_task(self, record: TaskRecord) -> bool:
        """Requeue a RUNNING task whose lease ran out, or fail it when its attempts are spent.

        Workers call it for expired leases they find, and the waiter for open
        futures whose worker stopped sending heartbeats. Returns False when
        another process changed the task first.
        """
        now = time.time()
        if record.damage is not None:
            change = self.finish_change(TaskStatus.FAILED, error=self.damage_error(record))
            outcome = "failed as damaged"
        elif record.attempts < record.max_attempts:
            change = Transition(TaskStatus.PENDING, available_at=now, release=True)
            outcome = "requeued"
        else:
            message = (
                f"worker {record.worker_id} stopped sending heartbeats while running the task, "
                f"and all {record.max_attempts} attempt(s) are spent"
            )
            error = codec.make_error("taskfuture.errors", "WorkerLostError", message)
            change = self.finish_change(TaskStatus.FAILED, error=error)
            outcome = "failed as worker lost"
        try:
            self.storage.transition(record.task_id, record.version, change)
        except (ConcurrentModificationError, TaskNotFoundError):
            return False
        except errors.StorageError as exc:
            logger.error("Recovering task %s failed: %s", record.task_id, exc)
            return False
        logger.warning(
            "Task %s (%s) lost its worker %s (attempt %d of %d); %s",
            record.task_id,
            record.name,
            record.worker_id,
            record.attempts,
            record.max_attempts,
            outcome,
        )
        return True

    def create_schema(self) -> None:
        """Create the table or keys the engine needs; safe to repeat."""
        self.storage.setup()

    @property
    def status_queries(self) -> int:
        """Status queries the waiter has made in this process so far."""
        return self._waiter.status_queries

    def _track(self, task_id: str, status: TaskStatus) -> TaskFuture[Any]:
        future: TaskFuture[Any] = TaskFuture(self, task_id, status)
        self._waiter.track(future)
        return future

    def _track_submitted(
        self, records: Sequence[TaskRecord], connection: Any
    ) -> list[TaskFuture[Any]]:
        """Track new futures; those written in an application transaction wait for its end."""
        if connection is None:
            return [self._track(record.task_id, TaskStatus.PENDING) for record in records]
        transaction_ended = self.storage.watch_transaction(connection)
        futures: list[TaskFuture[Any]] = []
        for record in records:
            future: TaskFuture[Any] = TaskFuture(self, record.task_id, TaskStatus.PENDING)
            self._waiter.track(future, transaction_ended)
            futures.append(future)
        return futures

    # -- resolution, called by futures and the waiter -------------------------------

    def _apply(self, future: TaskFuture[Any], record: TaskRecord) -> None:
        if record.damage is not None and not record.status.terminal and not _held(record):
            # With both its status and its version damaged, no worker claims the
            # task and no compare-and-set can fail it: only then is the future
            # failed without a stored outcome.
            if self.fail_damaged(record) or (
                record.version == UNKNOWN_VERSION and record.damage.startswith("status ")
            ):
                error = rebuild_exception(record.task_id, self.damage_error(record), {})
                future._set_outcome(TaskStatus.FAILED, error=error)
            return
        if _lease_lost(record) and self.recover_lost_task(record):
            refreshed = self.storage.get(record.task_id)
            if refreshed is None:
                self._resolve_missing(future)
                return
            record = refreshed
        callbacks = future._update(record)
        if record.status.terminal:
            self._resolve(future, record)
        progress = future.progress()
        for callback in callbacks:
            if progress is None:
                break
            try:
                callback(future, progress)
            except Exception:
                logger.exception("Progress callback of task %s raised", future.task_id)

    def _resolve(self, future: TaskFuture[Any], record: TaskRecord) -> None:
        if record.status is TaskStatus.COMPLETED:
            try:
                value = codec.decode(record.result) if record.result is not None else None
            except (ValueError, TypeError, KeyError) as exc:
                failure = errors.TaskFailedError.create(
                    record.task_id, "ValueError", f"the stored result cannot be decoded: {exc}"
                )
                future._set_outcome(TaskStatus.FAILED, error=failure)
                return
            future._set_outcome(TaskStatus.COMPLETED, value=value)
        elif record.status is TaskStatus.FAILED:
            error_text = record.error or codec.make_error(
                "builtins", "RuntimeError", "no error stored"
            )
            future._set_outcome(
                TaskStatus.FAILED,
                error=rebuild_exception(record.task_id, error_text, self._exception_types),
            )
        else:
            future._set_outcome(TaskStatus.CANCELLED)

    def _missing_error(self, task_id: str) -> TaskNotFoundError:
        """Return TaskExpiredError if a tombstone exists for the task, else TaskNotFoundError."""
        if task_id in self.storage.expired_ids([task_id]):
            return errors.TaskExpiredError(task_id)
        return TaskNotFoundError(task_id)

    def _resolve_missing(
        self, future: TaskFuture[Any], error: TaskNotFoundError | None = None
    ) -> None:
        failure = error if error is not None else self._missing_error(future.task_id)
        future._set_outcome(TaskStatus.FAILED, error=failure)

    def _cancel(self, future: TaskFuture[Any]) -> bool:
        """Move the task to CANCELLED unless it already finished; compare-and-set, retried."""
        while True:
            uncommitted = self._waiter.awaits_commit(future.task_id)
            record = self.storage.get(future.task_id)
            if record is None:
                if not uncommitted:
                    self._resolve_missing(future)
                return False
            if record.status.terminal:
                self._apply(future, record)
                return record.status is TaskStatus.CANCELLED
            error = codec.make_error("builtins", "CancelledError", "cancelled by the caller")
            change = self.finish_change(TaskStatus.CANCELLED, error=error, release=False)
            try:
                record = self.storage.transition(record.task_id, record.version, change)
            except ConcurrentModificationError:
                continue
            except TaskNotFoundError:
                self._resolve_missing(future)
                return False
            logger.info("Task %s cancelled", record.task_id)
            self._apply(future, record)
            return True


def _check_call(task: Task[Any, Any], args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Reject arguments of the wrong shape, and calls the task's signature cannot bind."""
    if isinstance(args, str | bytes | Mapping) or not isinstance(args, Sequence):
        raise TypeError(
            f"invalid args {args!r} for task {task.name!r}: expected a list or tuple of "
            "positional arguments"
        )
    if not isinstance(kwargs, Mapping):
        raise TypeError(
            f"invalid kwargs {kwargs!r} for task {task.name!r}: "
            "expected a dict of keyword arguments"
        )
    if task.signature is not None:
        try:
            task.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"invalid arguments for task {task.name!r}: {exc}") from None


#: Seconds past a lease's end before a caller treats the worker as lost; covers clock skew.
LEASE_GRACE_S = 2.0


def _held(record: TaskRecord) -> bool:
    """Whether a worker holds the task and will store its outcome or lose its lease."""
    return record.status is TaskStatus.RUNNING and record.lease_until is not None


def _lease_lost(record: TaskRecord) -> bool:
    return (
        record.status is TaskStatus.RUNNING
        and record.lease_until is not None
        and record.lease_until + LEASE_GRACE_S < time.time()
    )


_TaskDecorator = Callable[[Callable[..., Any]], Task[Any, Any]]


def _start_time(now: float, delay: dt.timedelta | float | None, eta: dt.datetime | None) -> float:
    if delay is not None and eta is not None:
        raise ValueError("pass either delay or eta, not both")
    if eta is not None:
        if not isinstance(eta, dt.datetime):
            raise TypeError(f"invalid eta {eta!r}: expected a timezone-aware datetime")
        if eta.tzinfo is None or eta.utcoffset() is None:
            raise ValueError(
                f"invalid eta {eta.isoformat()}: it is a naive datetime; "
                "give it a timezone, for example eta.replace(tzinfo=datetime.timezone.utc)"
            )
        return max(now, eta.timestamp())
    if delay is None:
        return now
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise ValueError(f"invalid delay {delay!r}: expected a timedelta or seconds >= 0")
    return now + seconds
