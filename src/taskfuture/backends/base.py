"""The narrow port every storage engine implements.

A backend stores task records and their queue in one engine and offers a
handful of primitives. The rules of the task lifecycle (which transition is
allowed, what a cancel or a lost worker means) live in the service and the
worker; a backend only applies a :class:`~taskfuture.models.Transition` when
the record still has the expected version.

Every method raises :class:`~taskfuture.errors.StorageError` when the engine
fails, with the DSN's password masked.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskfuture.config import Settings
from taskfuture.errors import (
    ConcurrentModificationError,
    StorageError,
    TaskFutureError,
    TaskNotFoundError,
)
from taskfuture.models import TaskRecord, Transition

#: Called with the ids of tasks whose state or progress changed. An empty
#: sequence means changes may have been missed (the engine's connection was
#: lost and restored), so the listener should re-check everything it watches.
ChangeListener = Callable[[Sequence[str]], None]


class TaskStorage(abc.ABC):
    """Records and queue of tasks in one engine."""

    #: True when the engine pushes changes to :meth:`subscribe` listeners, so
    #: that the waiter's batched poll is only a slow safety re-check.
    pushes_changes: bool = False

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def description(self) -> str:
        """The engine and DSN with the password masked, for messages and logs."""
        return self.settings.masked_dsn

    @abc.abstractmethod
    def setup(self) -> None:
        """Create the table, indexes or keys the backend needs; safe to repeat."""

    @abc.abstractmethod
    def enqueue(self, records: Sequence[TaskRecord], connection: Any = None) -> None:
        """Store new PENDING records and queue them, all or none, in one round trip.

        ``connection`` is an application transaction to write in, for engines
        that support it; others raise ConfigurationError when it is given.
        """

    def watch_transaction(self, connection: Any) -> Callable[[], bool]:
        """Return a function that returns whether the transaction of ``connection`` has ended.

        Called after :meth:`enqueue` wrote into that application transaction.
        The function returns True once the transaction committed or rolled
        back, so that a record still missing then will never appear. Engines
        whose writes are visible at once keep this default.
        """
        return _transaction_ended

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """Return the record of ``task_id``, or None when there is none."""

    @abc.abstractmethod
    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """Return the records that exist among ``task_ids``, in one query per batch."""

    @abc.abstractmethod
    def transition(self, task_id: str, expected_version: int, change: Transition) -> TaskRecord:
        """Apply ``change`` if the record still has ``expected_version``; return the new record.

        Raises:
            ConcurrentModificationError: the version differs.
            TaskNotFoundError: there is no such record.
        """

    def transition_many(
        self, changes: Sequence[tuple[str, int, Transition]]
    ) -> list[TaskFutureError | None]:
        """Apply each ``(task_id, expected_version, change)``; return one outcome per item.

        An outcome is None when the change was applied, else the error that
        :meth:`transition` raises for that item (ConcurrentModificationError,
        TaskNotFoundError or StorageError); nothing is raised. Each item is its
        own compare-and-set. The default calls :meth:`transition` per item;
        engines that can apply a batch in one round trip override it.
        """
        outcomes: list[TaskFutureError | None] = []
        for task_id, expected_version, change in changes:
            try:
                self.transition(task_id, expected_version, change)
            except (ConcurrentModificationError, TaskNotFoundError, StorageError) as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    @abc.abstractmethod
    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_s: float
    ) -> list[TaskRecord]:
        """Move up to ``limit`` due PENDING tasks of ``queues`` to RUNNING for ``worker_id``.

        Each claimed task gets ``attempts + 1``, a lease of ``lease_s`` seconds
        and a new version. No two workers ever claim the same task version.
        """

    @abc.abstractmethod
    def extend_leases(self, worker_id: str, task_ids: Sequence[str], lease_s: float) -> set[str]:
        """Extend the leases ``worker_id`` holds; return the ids it still holds.

        An id missing from the returned set was cancelled, reclaimed or deleted, so
        the worker should stop that task. The version is not changed.
        """

    @abc.abstractmethod
    def set_progress(self, task_id: str, worker_id: str, progress: str) -> bool:
        """Store progress JSON for a task ``worker_id`` runs; False if it no longer does."""

    @abc.abstractmethod
    def find_expired_leases(self, limit: int) -> list[TaskRecord]:
        """Return up to ``limit`` RUNNING records whose lease has run out."""

    @abc.abstractmethod
    def delete_expired(self, limit: int) -> int:
        """Delete up to ``limit`` terminal records past their expiry; return how many.

        Safe to run from several processes at once: each record is deleted once.
        """

    def subscribe(self, listener: ChangeListener) -> Callable[[], None] | None:
        """Call ``listener`` with ids of tasks that changed, if the engine pushes changes.

        Returns a function that unsubscribes, or None when the engine cannot push.
        """
        return None

    def wait_for_work(self, queues: Sequence[str], timeout_s: float, stop: threading.Event) -> None:
        """Block up to ``timeout_s`` or until work may be available or ``stop`` is set."""
        stop.wait(timeout_s)

    def touch(self, task_id: str, expires_at: float) -> TaskRecord | None:
        """Set a terminal task's expiry; return the record, or None if it is missing.

        Returns the unchanged record when the task is not terminal yet. The
        default applies a same-status transition, so it is a compare-and-set
        like every other change.
        """
        from taskfuture.errors import ConcurrentModificationError, TaskNotFoundError

        while True:
            record = self.get(task_id)
            if record is None or not record.status.terminal:
                return record
            change = Transition(record.status, expires_at=expires_at)
            try:
                return self.transition(task_id, record.version, change)
            except ConcurrentModificationError:
                continue
            except TaskNotFoundError:
                return None

    def expired_ids(self, task_ids: Sequence[str]) -> set[str]:
        """Return the ids among ``task_ids`` whose records expired and were cleaned.

        Backends keep a small tombstone per cleaned task for
        ``settings.tombstone_s`` seconds; one without tombstones returns an
        empty set, so callers report such ids as never existing.
        """
        return set()

    def reserve_connections(self, count: int) -> None:  # noqa: B027 - optional hook
        """Keep enough pooled connections for ``count`` threads that use storage at once."""

    def upgrade_schema(self) -> list[str]:
        """Apply pending schema migrations, creating what is missing; describe each one applied."""
        self.setup()
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the storage may not be used afterwards."""


def _transaction_ended() -> bool:
    return True
