"""The running task's context: its id, its attempt, cancellation and progress."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable

from taskfuture.errors import TaskCancelledError
from taskfuture.models import Progress

_CURRENT: contextvars.ContextVar[TaskContext] = contextvars.ContextVar("taskfuture_context")

#: Shortest time between two progress writes to storage; the last report is always written.
PROGRESS_INTERVAL_S = 0.05


class TaskContext:
    """The running task's view of itself; get it with :func:`current_context`."""

    def __init__(
        self,
        task_id: str,
        name: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        store_progress: Callable[[Progress], None],
    ) -> None:
        self.task_id = task_id
        self.name = name
        self.queue = queue
        #: 1 on the first run, 2 on the first retry, and so on.
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._store_progress = store_progress
        self._cancelled = threading.Event()
        self._last_write = 0.0
        self._pending: Progress | None = None

    def cancelled(self) -> bool:
        """Return whether cancellation was requested (or the worker is shutting down)."""
        return self._cancelled.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise TaskCancelledError if cancellation was requested; call it between steps."""
        if self._cancelled.is_set():
            raise TaskCancelledError(self.task_id)

    def wait_cancelled(self, timeout_s: float | None = None) -> bool:
        """Sleep up to ``timeout_s`` seconds, waking early on cancellation; return cancelled()."""
        return self._cancelled.wait(timeout_s)

    def report_progress(self, done: float, total: float | None = None, message: str = "") -> None:
        """Publish progress to the caller's ``future.progress()``.

        Writes are spaced at least 50 ms apart; a report that reaches ``total``
        and the last report before the task ends are always written.
        """
        progress = Progress(float(done), None if total is None else float(total), str(message))
        now = time.monotonic()
        final = total is not None and done >= total
        if final or now - self._last_write >= PROGRESS_INTERVAL_S:
            self._last_write = now
            self._pending = None
            self._store_progress(progress)
        else:
            self._pending = progress

    def flush_progress(self) -> None:
        """Write a report that was held back by the spacing; the worker calls it at the end."""
        if self._pending is not None:
            progress, self._pending = self._pending, None
            self._store_progress(progress)

    def request_cancel(self) -> None:
        """Mark the task as cancelled; the worker calls it."""
        self._cancelled.set()

    def __repr__(self) -> str:
        return f"<TaskContext {self.name} id={self.task_id} attempt={self.attempt}>"


def current_context() -> TaskContext:
    """Return the context of the task running in this thread or coroutine.

    Raises:
        RuntimeError: no task is running here.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "current_context() was called outside a running task; "
            "call it from inside a task function that a worker runs"
        ) from None


def set_current_context(context: TaskContext) -> contextvars.Token[TaskContext]:
    """Make ``context`` current in this thread or coroutine; the worker calls it."""
    return _CURRENT.set(context)


def reset_current_context(token: contextvars.Token[TaskContext]) -> None:
    _CURRENT.reset(token)
