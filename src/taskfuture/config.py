"""Settings: one immutable object built from arguments, the environment and defaults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from taskfuture.dsn import mask_password, scheme_of
from taskfuture.errors import ConfigurationError

DEFAULT_DSN = "sqlite:///taskfuture.db"
DEFAULT_TABLE = "taskfuture_tasks"
DEFAULT_QUEUE = "default"

_TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object, name: str) -> float:
    """Return ``value`` in seconds: a number, a timedelta, or text such as ``250ms`` or ``24h``."""
    if isinstance(value, dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    else:
        raise ConfigurationError(
            f"invalid {name} {value!r}: expected seconds as a number, a timedelta, "
            "or text such as '250ms', '30s', '5m', '24h' or '7d'"
        )
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"invalid {name} {value!r}: it must be a finite duration >= 0")
    return seconds


def validate_table_name(name: object) -> str:
    """Return ``name`` if it is a safe SQL identifier, else raise ConfigurationError."""
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ConfigurationError(
            f"invalid table name {name!r}: use 1 to 63 letters, digits and underscores, "
            "starting with a letter or underscore"
        )
    return name


def validate_queue_name(name: object) -> str:
    """Return ``name`` if it is a valid queue name, else raise ConfigurationError."""
    if not isinstance(name, str) or not _QUEUE_NAME.match(name):
        raise ConfigurationError(
            f"invalid queue name {name!r}: use 1 to 100 letters, digits, '_', '.', ':' or '-'"
        )
    return name


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration of a :class:`~taskfuture.TaskService`.

    Durations are seconds. Every field can also be set from the environment:
    see :meth:`from_env` for the variable names.
    """

    #: The engine that stores the queue and the records, such as ``sqlite:///taskfuture.db``.
    dsn: str = DEFAULT_DSN
    #: How long a finished task is kept before cleanup may delete it.
    retention_s: float = 24 * 3600.0
    #: How often the waiter and idle workers look at storage.
    poll_interval_s: float = 0.1
    #: How long a worker's claim on a task lasts without a heartbeat.
    lease_s: float = 30.0
    #: Queues a worker consumes when none are given; the first is where tasks go by default.
    queues: tuple[str, ...] = (DEFAULT_QUEUE,)
    #: Name of the SQL table that stores tasks (also the key prefix on Redis).
    table: str = DEFAULT_TABLE
    #: How long the tombstone of a cleaned task is kept, so that its id reads as expired.
    tombstone_s: float = 7 * 24 * 3600.0
    #: How often a worker deletes expired tasks.
    sweep_interval_s: float = 60.0
    #: How many times a task may be claimed before a lost worker fails it.
    max_attempts: int = 3
    #: Largest encoded arguments or result, in bytes.
    max_payload_bytes: int = 1024 * 1024
    #: How long a connection attempt may take before StorageError.
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        scheme_of(self.dsn)
        _check_port(self.dsn)
        for name in (
            "retention_s",
            "poll_interval_s",
            "lease_s",
            "sweep_interval_s",
            "tombstone_s",
        ):
            object.__setattr__(self, name, parse_duration(getattr(self, name), name))
        object.__setattr__(
            self, "connect_timeout_s", parse_duration(self.connect_timeout_s, "connect_timeout_s")
        )
        if self.poll_interval_s <= 0:
            raise ConfigurationError(
                f"invalid poll_interval_s {self.poll_interval_s!r}: it must be > 0"
            )
        if self.lease_s < 1:
            raise ConfigurationError(
                f"invalid lease_s {self.lease_s!r}: it must be at least 1 second"
            )
        queues = (self.queues,) if isinstance(self.queues, str) else tuple(self.queues)
        if not queues:
            raise ConfigurationError(
                "invalid queues (): name at least one queue, such as 'default'"
            )
        object.__setattr__(self, "queues", tuple(validate_queue_name(queue) for queue in queues))
        validate_table_name(self.table)
        _check_positive_int(self.max_attempts, "max_attempts")
        _check_positive_int(self.max_payload_bytes, "max_payload_bytes")

    @property
    def masked_dsn(self) -> str:
        """The DSN with its password replaced by ``***``, safe to log."""
        return mask_password(self.dsn)

    def __repr__(self) -> str:
        shown = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        shown["dsn"] = self.masked_dsn
        fields = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"Settings({fields})"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``TASKFUTURE_*`` variables; ``overrides`` win over them.

        The DSN comes from ``TASKFUTURE_DSN``, then ``MESSENGER_TRANSPORT_DSN``,
        then defaults to ``sqlite:///taskfuture.db`` in the working directory.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        dsn = env.get("TASKFUTURE_DSN") or env.get("MESSENGER_TRANSPORT_DSN")
        if dsn:
            values["dsn"] = dsn
        for variable, field, parse in _ENVIRONMENT:
            text = env.get(variable)
            if text is not None and text.strip() != "":
                values[field] = parse(text, variable)
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(**values)


def _check_port(dsn: str) -> None:
    try:
        urllib.parse.urlsplit(dsn).port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise ConfigurationError(
            f"invalid port in DSN {mask_password(dsn)!r} ({exc}); "
            "use a number from 1 to 65535, such as redis://127.0.0.1:6379/0"
        ) from None


def _check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"invalid {name} {value!r}: expected a whole number >= 1")


def _parse_int(text: str, variable: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"invalid {variable}={text!r}: expected a whole number") from None


def _parse_queues(text: str, variable: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _parse_text(text: str, variable: str) -> str:
    return text.strip()


def _parse_duration_env(text: str, variable: str) -> float:
    return parse_duration(text, variable)


#: Environment variable -> settings field -> parser.
_ENVIRONMENT = (
    ("TASKFUTURE_RETENTION", "retention_s", _parse_duration_env),
    ("TASKFUTURE_POLL_INTERVAL", "poll_interval_s", _parse_duration_env),
    ("TASKFUTURE_LEASE", "lease_s", _parse_duration_env),
    ("TASKFUTURE_QUEUES", "queues", _parse_queues),
    ("TASKFUTURE_TABLE", "table", _parse_text),
    ("TASKFUTURE_SWEEP_INTERVAL", "sweep_interval_s", _parse_duration_env),
    ("TASKFUTURE_TOMBSTONE", "tombstone_s", _parse_duration_env),
    ("TASKFUTURE_MAX_ATTEMPTS", "max_attempts", _parse_int),
    ("TASKFUTURE_MAX_PAYLOAD_BYTES", "max_payload_bytes", _parse_int),
    ("TASKFUTURE_CONNECT_TIMEOUT", "connect_timeout_s", _parse_duration_env),
)
