from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from taskfuture import ConfigurationError, Settings, StorageError, TaskService
from taskfuture.dsn import mask_password, scheme_of


def test_defaults() -> None:
    settings = Settings()

    assert settings.dsn == "sqlite:///taskfuture.db"
    assert settings.retention_s == 86400
    assert settings.poll_interval_s == 0.1
    assert settings.queues == ("default",)


def test_dsn_precedence_in_environment() -> None:
    both = {"TASKFUTURE_DSN": "memory://a", "MESSENGER_TRANSPORT_DSN": "memory://b"}

    assert Settings.from_env(both).dsn == "memory://a"
    assert Settings.from_env({"MESSENGER_TRANSPORT_DSN": "memory://b"}).dsn == "memory://b"
    assert Settings.from_env({}).dsn == "sqlite:///taskfuture.db"


def test_every_setting_reads_environment() -> None:
    environ = {
        "TASKFUTURE_DSN": "memory://env",
        "TASKFUTURE_RETENTION": "2h",
        "TASKFUTURE_POLL_INTERVAL": "250ms",
        "TASKFUTURE_LEASE": "45s",
        "TASKFUTURE_QUEUES": "emails, reports",
        "TASKFUTURE_TABLE": "jobs",
        "TASKFUTURE_SWEEP_INTERVAL": "5m",
        "TASKFUTURE_MAX_ATTEMPTS": "7",
        "TASKFUTURE_MAX_PAYLOAD_BYTES": "2048",
        "TASKFUTURE_CONNECT_TIMEOUT": "3",
    }

    settings = Settings.from_env(environ)

    assert settings.retention_s == 7200
    assert settings.poll_interval_s == 0.25
    assert settings.lease_s == 45
    assert settings.queues == ("emails", "reports")
    assert settings.table == "jobs"
    assert settings.sweep_interval_s == 300
    assert settings.max_attempts == 7
    assert settings.max_payload_bytes == 2048
    assert settings.connect_timeout_s == 3


def test_arguments_override_environment() -> None:
    settings = Settings.from_env(
        {"TASKFUTURE_RETENTION": "1h"}, retention_s=dt.timedelta(minutes=5)
    )

    assert settings.retention_s == 300


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retention_s", -1, "finite duration"),
        ("retention_s", "soon", "expected seconds"),
        ("poll_interval_s", 0, "must be > 0"),
        ("lease_s", 0.5, "at least 1 second"),
        ("queues", (), "at least one queue"),
        ("queues", ("bad queue",), "invalid queue name"),
        ("max_attempts", 0, "whole number >= 1"),
    ],
)
def test_invalid_setting_is_rejected(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Settings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "table", ["", "1starts_with_digit", "tasks; DROP TABLE users", "a" * 64, "with-dash"]
)
def test_invalid_table_name_is_rejected(table: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid table name"):
        Settings(table=table)


def test_unknown_scheme_lists_known_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        TaskService("oracle://scott:tiger@db/orcl")

    message = str(caught.value)
    assert "'oracle'" in message
    assert "sqlite" in message
    assert "redis" in message
    assert "tiger" not in message


def test_dsn_without_scheme_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="expected SCHEME://"):
        scheme_of("taskfuture.db")


def test_driver_suffix_is_accepted() -> None:
    assert scheme_of("postgresql+psycopg://u@h/db") == "postgresql"
    assert scheme_of("MYSQL+pymysql://u@h/db") == "mysql"


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("postgresql://user:p%40ss@host/db", "postgresql://user:***@host/db"),
        ("mysql://user@host/db", "mysql://user@host/db"),
        ("redis://host/0?password=secret", "redis://host/0?password=***"),
    ],
)
def test_password_is_masked(dsn: str, masked: str) -> None:
    assert mask_password(dsn) == masked


def test_settings_repr_masks_password() -> None:
    settings = Settings(dsn="redis://user:hunter2@127.0.0.1:1/0")

    assert "hunter2" not in repr(settings)
    assert "***" in repr(settings)


def test_in_memory_sqlite_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        TaskService("sqlite://")


def test_unwritable_sqlite_path_raises_storage_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "no" / "such" / "folder" / "tasks.db"

    with caplog.at_level(logging.DEBUG), pytest.raises(StorageError, match="sqlite"):
        TaskService(f"sqlite:///{missing}")


def test_duplicate_task_name_is_rejected() -> None:
    service = TaskService("memory://duplicates")

    @service.task("same")
    def first() -> None: ...

    with pytest.raises(ConfigurationError, match="already registered"):

        @service.task("same")
        def second() -> None: ...


def test_default_task_name_is_qualified() -> None:
    service = TaskService("memory://names")

    @service.task
    def build() -> None: ...

    assert build.name == f"{__name__}.test_default_task_name_is_qualified.<locals>.build"


@pytest.mark.parametrize("dsn", ["postgresql://u:pw@127.0.0.1:abc/x", "redis://127.0.0.1:99999/0"])
def test_invalid_port_is_rejected(dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid port") as caught:
        Settings(dsn=dsn)

    assert ":pw@" not in str(caught.value)
