"""The exception tree of taskfuture.

Every error the library raises on purpose derives from :class:`TaskFutureError`::

    TaskFutureError
    ├── ConfigurationError          (also ValueError): bad DSN, setting or table name
    ├── UnknownTaskError            (also LookupError): task name not registered
    ├── TaskTimeoutError            (also TimeoutError): a wait ran out
    ├── TaskNotFoundError           (also LookupError): unknown id, or expired and cleaned
    │   └── TaskExpiredError        the id existed and its record was cleaned away
    ├── TaskCancelledError          (also concurrent.futures.CancelledError)
    ├── TaskNotCompletedError       a non-blocking read of an unfinished task
    ├── ConcurrentModificationError a lost compare-and-set on the version column
    ├── StorageError                the engine failed or cannot be reached
    └── TaskFailedError             the task raised; carries the remote details
        ├── WorkerLostError         the worker died and the attempts are spent
        └── TaskTimeLimitError      the task ran past its time limit

Arguments that cannot be encoded raise the builtin :class:`TypeError`, and
invalid timeouts raise the builtin :class:`ValueError`.
"""

from __future__ import annotations

import concurrent.futures
from typing import Self


class TaskFutureError(Exception):
    """Base class of every error raised by taskfuture."""


class ConfigurationError(TaskFutureError, ValueError):
    """A DSN, setting or name is invalid; the message names the value and the fix."""


class UnknownTaskError(TaskFutureError, LookupError):
    """The task name is not registered in this process."""


class TaskTimeoutError(TaskFutureError, TimeoutError):
    """The wait ran out before the task finished; the task itself goes on."""

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(
            f"task {task_id} did not finish within {timeout:g} s; it is still queued or running"
        )
        self.task_id = task_id
        self.timeout = timeout


class TaskNotFoundError(TaskFutureError, LookupError):
    """No task has this id: it never existed, or it expired and was cleaned."""

    def __init__(self, task_id: str, detail: str = "") -> None:
        message = f"task {task_id} not found"
        message += f": {detail}" if detail else " (unknown id, or expired and cleaned)"
        super().__init__(message)
        self.task_id = task_id


class TaskExpiredError(TaskNotFoundError):
    """The task existed, finished, and its record was cleaned after the retention."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id, "it finished and its record expired after the retention period")


class TaskCancelledError(TaskFutureError, concurrent.futures.CancelledError):
    """The task was cancelled, so it has no result."""

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was cancelled")
        self.task_id = task_id


class TaskNotCompletedError(TaskFutureError):
    """The task has not finished yet, so a non-blocking read has nothing to return."""

    def __init__(self, task_id: str, status: str) -> None:
        super().__init__(f"task {task_id} is {status}, not finished; use result(timeout) to wait")
        self.task_id = task_id
        self.status = status


class ConcurrentModificationError(TaskFutureError):
    """A transition lost its compare-and-set: another process changed the task first.

    Raised inside the library; public calls turn it into their documented result.
    """

    def __init__(self, task_id: str, expected_version: int) -> None:
        super().__init__(f"task {task_id} changed since version {expected_version}")
        self.task_id = task_id
        self.expected_version = expected_version


class StorageError(TaskFutureError):
    """The storage engine failed or cannot be reached; the message masks the password."""


class TaskFailedError(TaskFutureError):
    """The task raised an exception in the worker.

    Attributes:
        task_id: the failed task's id.
        type_name: the qualified name of the remote exception type.
        message: the remote exception's message.
        remote_traceback: the traceback text formatted in the worker.
    """

    # The constructor takes plain exception arguments, so that a rebuilt remote
    # exception whose own __init__ calls super().__init__(...) still works when
    # its class also derives from TaskFailedError.
    task_id: str = ""
    type_name: str = ""
    message: str = ""
    remote_traceback: str = ""

    @classmethod
    def create(cls, task_id: str, type_name: str, message: str, remote_traceback: str = "") -> Self:
        """Build the error with its remote details and a message naming the task."""
        error = cls(f"task {task_id} failed with {type_name}: {message}")
        error.task_id = task_id
        error.type_name = type_name
        error.message = message
        error.remote_traceback = remote_traceback
        return error


class DamagedRecordError(TaskFailedError):
    """The stored record contains values taskfuture never writes, so the task never ran.

    Something other than taskfuture changed the record: a hand edit, a script
    or a bad migration. The message names each bad field and what it held.
    """


class WorkerLostError(TaskFailedError):
    """The worker running the task stopped sending heartbeats and no attempts are left."""


class TaskTimeLimitError(TaskFailedError):
    """The task ran longer than its time limit and was stopped."""
