"""An in-process backend for tests and examples: records live in a dict.

Every ``MemoryStorage`` built from the same ``memory://NAME`` DSN shares one
store, so a service and an in-process worker see the same tasks. Nothing
survives the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from taskfuture.backends.base import ChangeListener, TaskStorage
from taskfuture.config import Settings
from taskfuture.errors import ConcurrentModificationError, ConfigurationError, TaskNotFoundError
from taskfuture.models import TRANSITION_FIELDS, TaskRecord, TaskStatus, Transition, next_version

_STORES: dict[str, _Store] = {}
_STORES_LOCK = threading.Lock()


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.records: dict[str, TaskRecord] = {}
        #: Id of a cleaned task -> when its tombstone may be forgotten.
        self.tombstones: dict[str, float] = {}
        self.listeners: list[ChangeListener] = []


def _store_for(dsn: str) -> _Store:
    name = dsn.split("://", 1)[1]
    with _STORES_LOCK:
        return _STORES.setdefault(name, _Store())


def apply_transition(record: TaskRecord, change: Transition) -> None:
    """Apply ``change`` to ``record`` in place and bump its version."""
    record.status = change.status
    record.version = next_version(record.version)
    for field in TRANSITION_FIELDS:
        value = getattr(change, field)
        if value is not None:
            setattr(record, field, value)
    if change.release:
        record.lease_until = None
        record.worker_id = None


class MemoryStorage(TaskStorage):
    """Tasks in a dict shared by every storage with the same ``memory://NAME``."""

    pushes_changes = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._store = _store_for(settings.dsn)

    def setup(self) -> None:
        return None

    def enqueue(self, records: Sequence[TaskRecord], connection: Any = None) -> None:
        if connection is not None:
            raise ConfigurationError(
                "the memory backend has no transactions; submit without connection="
            )
        with self._store.lock:
            for record in records:
                if record.task_id in self._store.records:
                    raise ConcurrentModificationError(record.task_id, record.version)
            for record in records:
                self._store.records[record.task_id] = record.copy()
            self._store.lock.notify_all()

    def get(self, task_id: str) -> TaskRecord | None:
        with self._store.lock:
            record = self._store.records.get(task_id)
            return None if record is None else record.copy()

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        with self._store.lock:
            records = self._store.records
            return [records[task_id].copy() for task_id in task_ids if task_id in records]

    def transition(self, task_id: str, expected_version: int, change: Transition) -> TaskRecord:
        with self._store.lock:
            record = self._store.records.get(task_id)
            if record is None:
                raise TaskNotFoundError(task_id)
            if record.version != expected_version:
                raise ConcurrentModificationError(task_id, expected_version)
            apply_transition(record, change)
            result = record.copy()
            if change.status is TaskStatus.PENDING:
                self._store.lock.notify_all()
        self._notify([task_id])
        return result

    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_s: float
    ) -> list[TaskRecord]:
        now = time.time()
        claimed: list[TaskRecord] = []
        with self._store.lock:
            due = [
                record
                for record in self._store.records.values()
                if record.status is TaskStatus.PENDING
                and record.queue in queues
                and record.available_at <= now
            ]
            due.sort(key=lambda record: (record.available_at, record.task_id))
            for record in due[:limit]:
                change = Transition(
                    TaskStatus.RUNNING,
                    attempts=record.attempts + 1,
                    started_at=now,
                    lease_until=now + lease_s,
                    worker_id=worker_id,
                )
                apply_transition(record, change)
                claimed.append(record.copy())
        if claimed:
            self._notify([record.task_id for record in claimed])
        return claimed

    def extend_leases(self, worker_id: str, task_ids: Sequence[str], lease_s: float) -> set[str]:
        held: set[str] = set()
        lease_until = time.time() + lease_s
        with self._store.lock:
            for task_id in task_ids:
                record = self._store.records.get(task_id)
                if record and record.status is TaskStatus.RUNNING and record.worker_id == worker_id:
                    record.lease_until = lease_until
                    held.add(task_id)
        return held

    def set_progress(self, task_id: str, worker_id: str, progress: str) -> bool:
        with self._store.lock:
            record = self._store.records.get(task_id)
            if (
                not record
                or record.status is not TaskStatus.RUNNING
                or record.worker_id != worker_id
            ):
                return False
            record.progress = progress
        self._notify([task_id])
        return True

    def find_expired_leases(self, limit: int) -> list[TaskRecord]:
        now = time.time()
        with self._store.lock:
            expired = [
                record.copy()
                for record in self._store.records.values()
                if record.status is TaskStatus.RUNNING and (record.lease_until or 0) < now
            ]
        return expired[:limit]

    def delete_expired(self, limit: int) -> int:
        now = time.time()
        with self._store.lock:
            expired = [
                task_id
                for task_id, record in self._store.records.items()
                if record.expires_at is not None and record.expires_at <= now
            ][:limit]
            for task_id in expired:
                del self._store.records[task_id]
                self._store.tombstones[task_id] = now + self.settings.tombstone_s
            forgotten = [key for key, until in self._store.tombstones.items() if until <= now]
            for task_id in forgotten:
                del self._store.tombstones[task_id]
        return len(expired)

    def expired_ids(self, task_ids: Sequence[str]) -> set[str]:
        now = time.time()
        with self._store.lock:
            tombstones = self._store.tombstones
            return {task_id for task_id in task_ids if tombstones.get(task_id, 0.0) > now}

    def subscribe(self, listener: ChangeListener) -> Callable[[], None] | None:
        with self._store.lock:
            self._store.listeners.append(listener)

        def unsubscribe() -> None:
            with self._store.lock:
                if listener in self._store.listeners:
                    self._store.listeners.remove(listener)

        return unsubscribe

    def wait_for_work(self, queues: Sequence[str], timeout_s: float, stop: threading.Event) -> None:
        with self._store.lock:
            if stop.is_set():
                return
            self._store.lock.wait(timeout_s)

    def _notify(self, task_ids: Sequence[str]) -> None:
        with self._store.lock:
            listeners = list(self._store.listeners)
        for listener in listeners:
            listener(task_ids)
