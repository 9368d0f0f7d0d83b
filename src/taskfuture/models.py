"""Plain data shared by the service, the worker and every backend: no I/O here."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any


class TaskStatus(enum.StrEnum):
    """The lifecycle state of a task.

    ``PENDING`` -> ``RUNNING`` -> ``COMPLETED`` | ``FAILED``; ``PENDING`` ->
    ``CANCELLED``; ``RUNNING`` -> ``CANCELLED``. Terminal states never change.
    """

    #: Queued, waiting for a worker or for its next attempt.
    PENDING = "PENDING"
    #: Claimed by a worker that holds a lease on it.
    RUNNING = "RUNNING"
    #: Finished and returned a result.
    COMPLETED = "COMPLETED"
    #: Finished by raising, or lost with its attempts spent.
    FAILED = "FAILED"
    #: Cancelled before it could finish.
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """Whether the state is final."""
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value


_TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
TERMINAL_STATUSES = _TERMINAL


@dataclasses.dataclass(frozen=True, slots=True)
class Progress:
    """The last progress a running task reported."""

    #: Units of work done so far.
    done: float
    #: Units of work in all, or None when unknown.
    total: float | None = None
    #: A short human-readable note.
    message: str = ""

    @property
    def fraction(self) -> float | None:
        """``done / total`` between 0 and 1, or None when the total is unknown."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "total": self.total, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(float(data["done"]), data.get("total"), str(data.get("message", "")))


@dataclasses.dataclass(slots=True)
class TaskRecord:
    """One task as stored: its state, its payload and its outcome.

    ``payload``, ``result``, ``error`` and ``progress`` hold JSON text made by
    :mod:`taskfuture.codec`; times are POSIX timestamps in seconds.
    """

    task_id: str
    name: str
    queue: str
    status: TaskStatus
    #: JSON text ``{"args": [...], "kwargs": {...}}``.
    payload: str
    #: Bumped by every state transition; transitions compare and set it.
    version: int = 0
    #: How many times a worker claimed the task.
    attempts: int = 0
    max_attempts: int = 1
    created_at: float = 0.0
    #: Earliest time a worker may claim the task.
    available_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    #: When a terminal task may be deleted; None while the task is not terminal.
    expires_at: float | None = None
    #: When the claiming worker's lease runs out; None unless RUNNING.
    lease_until: float | None = None
    worker_id: str | None = None
    result: str | None = None
    error: str | None = None
    progress: str | None = None
    #: Why the stored record cannot be trusted, or None when every field is sound.
    #: Set only by :func:`checked_record`, for records written by something else.
    damage: str | None = None

    def copy(self) -> TaskRecord:
        return dataclasses.replace(self)

    @property
    def sound(self) -> bool:
        """Whether every field holds a value of its type and range, and a RUNNING task has a lease.

        Backends check it on every read and pass a record that fails it to
        :func:`checked_record`. Plain comparisons keep it cheap on that path.
        """
        return (
            type(self.version) is int
            and type(self.attempts) is int
            and type(self.max_attempts) is int
            and self.attempts >= 0
            and self.max_attempts >= 1
            and type(self.created_at) is float
            and type(self.available_at) is float
            and type(self.name) is str
            and type(self.queue) is str
            and type(self.payload) is str
            and (self.started_at is None or type(self.started_at) is float)
            and (self.finished_at is None or type(self.finished_at) is float)
            and (self.expires_at is None or type(self.expires_at) is float)
            and (
                type(self.lease_until) is float
                if self.lease_until is not None
                else self.status is not TaskStatus.RUNNING
            )
            and (self.worker_id is None or type(self.worker_id) is str)
            and (self.result is None or type(self.result) is str)
            and (self.error is None or type(self.error) is str)
            and (self.progress is None or type(self.progress) is str)
        )


_STATUSES = {member.value: member for member in TaskStatus}

#: Largest value of the version and attempts counters: the INTEGER columns of
#: PostgreSQL and MariaDB hold no more.
COUNTER_LIMIT = 2**31 - 1


#: The version of a record whose stored version is not an integer; no
#: compare-and-set can match it.
UNKNOWN_VERSION = -(2**63)


def next_version(version: int) -> int:
    """Return the version after ``version``, wrapping to ``-COUNTER_LIMIT`` at the limit.

    Only a record changed by hand gets near the limit. Wrapping keeps its task
    claimable and failable instead of overflowing the column, and wrapping to
    the far end of the range, not to a small number, keeps the versions that
    workers and callers hold from matching again.
    """
    return version + 1 if UNKNOWN_VERSION < version < COUNTER_LIMIT else -COUNTER_LIMIT


#: The stored fields of a record, in the order of TaskRecord's fields.
RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(TaskRecord))[:-1]

#: Longest stored value quoted in a damage report.
_SHOWN_CHARS = 60


def short_repr(value: object) -> str:
    """Return ``repr(value)``, cut to a length that fits in a log line or an error."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _as_int(value: object) -> int:
    if type(value) is int:
        return value
    # SQLite's arithmetic turns a text counter that looks like a float into a REAL.
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError("an integer")


def _as_count(value: object) -> int:
    number = _as_int(value)
    if number < 0:
        raise ValueError("a count of 0 or more")
    return number


def _as_limit(value: object) -> int:
    number = _as_int(value)
    if number < 1:
        raise ValueError("a number of 1 or more")
    return number


def _as_float(value: object) -> float:
    if type(value) in (int, float) or isinstance(value, str):
        try:
            number = float(value)  # type: ignore[arg-type]
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    raise ValueError("a finite number")


def _as_text(value: object) -> str:
    if type(value) is str:
        return value
    raise ValueError("text")


_REQUIRED: dict[str, tuple[Any, Any]] = {
    "name": (_as_text, ""),
    "queue": (_as_text, ""),
    "payload": (_as_text, ""),
    "version": (_as_int, UNKNOWN_VERSION),
    "attempts": (_as_count, 0),
    "max_attempts": (_as_limit, 1),
    "created_at": (_as_float, 0.0),
    "available_at": (_as_float, 0.0),
}
_OPTIONAL: dict[str, Any] = {
    "started_at": _as_float,
    "finished_at": _as_float,
    "expires_at": _as_float,
    "lease_until": _as_float,
    "worker_id": _as_text,
    "result": _as_text,
    "error": _as_text,
    "progress": _as_text,
}


def checked_record(task_id: str, fields: Mapping[str, Any]) -> TaskRecord:
    """Build a record from stored values, describing bad values instead of raising.

    Backends call it when a stored record fails their fast decoding. Such a
    record was written by something other than taskfuture, such as a hand edit
    or a bad migration. It must fail its own task with a clear error, and never
    stop a worker or a waiter.
    A field that is missing or holds a value of the wrong type is replaced by a
    harmless one (an unknown status reads as PENDING, so the task gets failed),
    and ``damage`` says which fields were bad and what they held, starting
    with the status when it is one of them.
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    raw_status = fields.get("status")
    status = _STATUSES.get(raw_status) if isinstance(raw_status, str) else None
    if status is None:
        known = ", ".join(member.value for member in TaskStatus)
        problems.append(f"status holds {short_repr(raw_status)}, not one of {known}")
        status = TaskStatus.PENDING
    for name, (convert, fallback) in _REQUIRED.items():
        raw = fields.get(name)
        try:
            values[name] = convert(raw)
        except ValueError as exc:
            problems.append(f"{name} holds {short_repr(raw)}, not {exc}")
            values[name] = fallback
    for name, convert in _OPTIONAL.items():
        raw = fields.get(name)
        if raw is None:
            values[name] = None
            continue
        try:
            values[name] = convert(raw)
        except ValueError as exc:
            problems.append(f"{name} holds {short_repr(raw)}, not {exc}")
            values[name] = None
    if status is TaskStatus.RUNNING and values["lease_until"] is None:
        problems.append("status is RUNNING but lease_until is empty")
    damage = "; ".join(problems) if problems else None
    return TaskRecord(task_id=task_id, status=status, damage=damage, **values)


@dataclasses.dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, applied only if the task still has ``expected_version``.

    Fields left as ``KEEP`` are not changed. Applying it bumps the version by one.
    """

    status: TaskStatus
    attempts: int | None = None
    available_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    lease_until: float | None = None
    worker_id: str | None = None
    result: str | None = None
    error: str | None = None
    #: Clear lease and worker (used when leaving RUNNING).
    release: bool = False


#: Bits of a UUIDv7 that are not the timestamp, the version or the variant.
_RANDOM_MASK = ((1 << 80) - 1) & ~(0xF << 76) & ~(0x3 << 62)
#: Version 7 and the RFC 9562 variant, in place.
_VERSION_AND_VARIANT = (0x7 << 76) | (0x2 << 62)


#: The fields of a Transition that are written only when set (not None).
TRANSITION_FIELDS = (
    "attempts",
    "available_at",
    "started_at",
    "finished_at",
    "expires_at",
    "lease_until",
    "worker_id",
    "result",
    "error",
)


def new_task_id() -> str:
    """Return a new time-ordered UUID (version 7) as text."""
    milliseconds = time.time_ns() // 1_000_000
    value = (milliseconds & 0xFFFF_FFFF_FFFF) << 80
    value |= int.from_bytes(os.urandom(10), "big") & _RANDOM_MASK
    value |= _VERSION_AND_VARIANT
    # Formatting the hex digits directly gives the same text as str(uuid.UUID(int=value))
    # at a fraction of the cost; submit calls this once per task.
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def normalize_task_id(task_id: object) -> str:
    """Return the canonical text of a task id, or raise ValueError naming the bad value."""
    if isinstance(task_id, uuid.UUID):
        return str(task_id)
    if not isinstance(task_id, str):
        raise ValueError(f"invalid task id {task_id!r}: expected a UUID string")
    shown = task_id if len(task_id) <= 60 else task_id[:57] + "..."
    if len(task_id) != 36:
        raise ValueError(
            f"invalid task id {shown!r}: expected a 36-character UUID such as "
            "'0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091'"
        )
    try:
        return str(uuid.UUID(task_id))
    except ValueError:
        raise ValueError(
            f"invalid task id {shown!r}: expected a UUID such as "
            "'0190b2a4-5c1e-7d2f-9a3b-4c5d6e7f8091'"
        ) from None


@dataclasses.dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A task's exception as data: enough to report it and, when allowed, rebuild it."""

    #: Module of the exception type, such as ``builtins`` or ``myapp.errors``.
    module: str
    #: Qualified name of the exception type, such as ``ValueError``.
    type_name: str
    message: str
    #: The traceback formatted in the worker.
    traceback: str = ""
    #: The exception's ``args`` as JSON text, or None when they could not be encoded.
    args: str | None = None

    @property
    def qualified_name(self) -> str:
        if self.module in ("builtins", ""):
            return self.type_name
        return f"{self.module}.{self.type_name}"
