"""taskfuture: background tasks sent through a queue, handled as real Python futures.

>>> from taskfuture import TaskService
>>> tasks = TaskService("sqlite:///taskfuture.db")
>>> @tasks.task("reports.build")
... def build_report(month: str) -> dict: ...
>>> future = build_report.submit("2026-11")   # doctest: +SKIP
>>> future.result(timeout=30)                  # doctest: +SKIP
"""

from taskfuture.config import Settings
from taskfuture.context import TaskContext, current_context
from taskfuture.errors import (
    ConcurrentModificationError,
    ConfigurationError,
    DamagedRecordError,
    StorageError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskFutureError,
    TaskNotCompletedError,
    TaskNotFoundError,
    TaskTimeLimitError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerLostError,
)
from taskfuture.future import TaskFuture
from taskfuture.models import Progress, TaskStatus
from taskfuture.service import Call, Task, TaskService
from taskfuture.worker import Worker

__all__ = [
    "Call",
    "ConcurrentModificationError",
    "ConfigurationError",
    "DamagedRecordError",
    "Progress",
    "Settings",
    "StorageError",
    "Task",
    "TaskCancelledError",
    "TaskContext",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskFuture",
    "TaskFutureError",
    "TaskNotCompletedError",
    "TaskNotFoundError",
    "TaskService",
    "TaskStatus",
    "TaskTimeLimitError",
    "TaskTimeoutError",
    "UnknownTaskError",
    "Worker",
    "WorkerLostError",
    "current_context",
]

__version__ = "0.1.0"
