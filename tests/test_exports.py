import taskfuture

EXPECTED = [
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


def test_all_is_pinned() -> None:
    assert taskfuture.__all__ == EXPECTED


def test_all_is_sorted() -> None:
    assert taskfuture.__all__ == sorted(taskfuture.__all__)


def test_every_name_resolves() -> None:
    for name in taskfuture.__all__:
        assert getattr(taskfuture, name) is not None, name
