"""The SQL backend on SQLAlchemy 2 Core: SQLite, PostgreSQL and MySQL/MariaDB.

One table holds both the state and the queue of tasks. A worker claims due
PENDING rows in one statement (an immediate transaction on SQLite, ``FOR
UPDATE SKIP LOCKED`` on PostgreSQL and MySQL/MariaDB), and every later
transition is an ``UPDATE ... WHERE version = :expected`` compare-and-set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from taskfuture.backends.base import ChangeListener, TaskStorage
from taskfuture.backends.local_channel import WAITERS, WORKERS, LocalChannel
from taskfuture.config import Settings
from taskfuture.errors import (
    ConcurrentModificationError,
    ConfigurationError,
    StorageError,
    TaskNotFoundError,
)
from taskfuture.models import TaskRecord, TaskStatus, Transition

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Ids per ``IN (...)`` list; below SQLite's limit of 32766 bound parameters.
BATCH_SIZE = 5000

_LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

#: The drivers used when a DSN names only the database.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def build_table(name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """Describe the task table; the column order matches :class:`TaskRecord`."""
    metadata = metadata if metadata is not None else sa.MetaData()
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("payload", _LONG_TEXT, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("available_at", sa.Double, nullable=False),
        sa.Column("started_at", sa.Double),
        sa.Column("finished_at", sa.Double),
        sa.Column("expires_at", sa.Double),
        sa.Column("lease_until", sa.Double),
        sa.Column("worker_id", sa.String(100)),
        sa.Column("result", _LONG_TEXT),
        sa.Column("error", _LONG_TEXT),
        sa.Column("progress", sa.Text),
        sa.Index(f"ix_{name}_claim", "status", "queue", "available_at"),
        sa.Index(f"ix_{name}_lease", "status", "lease_until"),
        sa.Index(f"ix_{name}_expires", "expires_at"),
    )


def _engine_url(dsn: str) -> sa.URL:
    try:
        url = sa.make_url(dsn)
    except sa.exc.ArgumentError as exc:
        raise ConfigurationError(f"invalid SQL DSN: {exc}") from None
    if url.drivername in _DEFAULT_DRIVERS:
        url = url.set(drivername=_DEFAULT_DRIVERS[url.drivername])
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            "an in-memory SQLite database cannot be shared by a service and its workers; "
            "use a file such as sqlite:///taskfuture.db, or memory:// inside one process"
        )
    return url


def _record(row: Sequence[Any]) -> TaskRecord:
    return TaskRecord(row[0], row[1], row[2], TaskStatus(row[3]), *row[4:])


class SQLStorage(TaskStorage):
    """Tasks in one SQL table, reached through a SQLAlchemy engine."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        super().__init__(settings)
        self.table = build_table(settings.table)
        self.engine = engine if engine is not None else self._create_engine()
        self.dialect = self.engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._is_mysql = self.dialect in ("mysql", "mariadb")
        self._returning = self.engine.dialect.update_returning
        self._columns = list(self.table.c)
        self._prepare_statements()
        self._ready = False
        self._channel: LocalChannel | None = None
        if self._sqlite:
            self.setup()
            database = self.engine.url.database
            if database:
                self._channel = LocalChannel(Path(database))
                self.pushes_changes = True

    def _prepare_statements(self) -> None:
        """Build the hot statements once; per-call construction costs more than the query."""
        table = self.table
        column = table.c
        self._get_statement = sa.select(*self._columns).where(column.id == sa.bindparam("p_id"))
        self._get_many_statement = sa.select(*self._columns).where(
            column.id.in_(sa.bindparam("p_ids", expanding=True))
        )
        self._version_statement = sa.select(column.version).where(column.id == sa.bindparam("p_id"))
        due = (
            sa.select(column.id)
            .where(
                column.status == TaskStatus.PENDING.value,
                column.queue.in_(sa.bindparam("p_queues", expanding=True)),
                column.available_at <= sa.bindparam("p_now"),
            )
            .order_by(column.available_at, column.id)
            .limit(sa.bindparam("p_limit", type_=sa.Integer))
        )
        if not self._sqlite:
            due = due.with_for_update(skip_locked=True)
        self._due_statement = due
        claim_values = {
            "status": TaskStatus.RUNNING.value,
            "version": column.version + 1,
            "attempts": column.attempts + 1,
            "started_at": sa.bindparam("p_now"),
            "lease_until": sa.bindparam("p_lease_until"),
            "worker_id": sa.bindparam("p_worker"),
        }
        self._claim_statement: Any
        if self._returning:
            self._claim_statement = (
                table.update()
                .where(column.id.in_(due.scalar_subquery()))
                .values(claim_values)
                .returning(*self._columns)
            )
        else:
            self._claim_statement = (
                table.update()
                .where(column.id.in_(sa.bindparam("p_ids", expanding=True)))
                .values(claim_values)
            )
        self._transition_statements: dict[tuple[str, ...], Any] = {}

    def _transition_statement(self, fields: tuple[str, ...]) -> Any:
        statement = self._transition_statements.get(fields)
        if statement is None:
            column = self.table.c
            statement = (
                self.table.update()
                .where(
                    column.id == sa.bindparam("p_id"), column.version == sa.bindparam("p_version")
                )
                .values(version=column.version + 1, **{f: sa.bindparam(f"p_{f}") for f in fields})
            )
            if self._returning:
                statement = statement.returning(*self._columns)
            self._transition_statements[fields] = statement
        return statement

    # -- engine ------------------------------------------------------------

    def _create_engine(self) -> Engine:
        url = _engine_url(self.settings.dsn)
        backend = url.get_backend_name()
        options: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": backend != "sqlite"}
        connect_args: dict[str, Any] = {}
        if backend == "sqlite":
            connect_args = {"timeout": 30.0, "check_same_thread": False}
        elif backend == "postgresql" or backend in ("mysql", "mariadb"):
            connect_args = {"connect_timeout": max(1, round(self.settings.connect_timeout_s))}
        engine = sa.create_engine(url, connect_args=connect_args, **options)
        if backend == "sqlite":
            _configure_sqlite(engine)
        return engine

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[Connection]:
        """Open a transaction; SQLite write transactions take the lock at BEGIN."""
        try:
            with self.engine.connect() as conn:
                if write and self._sqlite:
                    conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: BaseException) -> StorageError:
        detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        password = sa.make_url(self.settings.dsn).password if "@" in self.settings.dsn else None
        if password:
            detail = detail.replace(str(password), "***")
        return StorageError(f"{self.dialect} storage failed ({self.description}): {detail}")

    def _run(self, operation: Callable[[], _T]) -> _T:
        try:
            return operation()
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc

    # -- schema ------------------------------------------------------------

    def setup(self) -> None:
        if self._ready:
            return
        self._run(lambda: self.table.metadata.create_all(self.engine, checkfirst=True))
        self._ready = True

    def drop(self) -> None:
        """Drop the task table; for tests and tear-down scripts."""
        self._run(lambda: self.table.drop(self.engine, checkfirst=True))
        self._ready = False

    # -- writes ------------------------------------------------------------

    def enqueue(self, records: Sequence[TaskRecord], connection: Any = None) -> None:
        rows = [_row(record) for record in records]
        if not rows:
            return
        if connection is not None:
            self._enqueue_in(connection, rows)
            return
        with self._connect(write=True) as conn:
            conn.execute(self.table.insert(), rows)
        if self._channel is not None:
            self._channel.announce(WORKERS, [])

    def _enqueue_in(self, connection: Any, rows: list[dict[str, Any]]) -> None:
        conn = (
            connection.connection()
            if hasattr(connection, "connection") and not isinstance(connection, Connection)
            else connection
        )
        if not isinstance(conn, Connection):
            raise ConfigurationError(
                f"connection={connection!r} is not a SQLAlchemy Connection or Session"
            )
        try:
            conn.execute(self.table.insert(), rows)
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc

    def transition(self, task_id: str, expected_version: int, change: Transition) -> TaskRecord:
        values = _transition_values(change)
        statement = self._transition_statement(tuple(values))
        parameters = {f"p_{field}": value for field, value in values.items()}
        parameters["p_id"] = task_id
        parameters["p_version"] = expected_version
        with self._connect(write=True) as conn:
            if self._returning:
                row = conn.execute(statement, parameters).first()
            else:
                updated = conn.execute(statement, parameters).rowcount
                row = self._select_one(conn, task_id) if updated else None
            exists = None
            if row is None:
                exists = conn.execute(self._version_statement, {"p_id": task_id}).first()
        if row is not None:
            record = _record(row)
            self._announce_change(record)
            return record
        if exists is None:
            raise TaskNotFoundError(task_id)
        raise ConcurrentModificationError(task_id, expected_version)

    def _announce_change(self, record: TaskRecord) -> None:
        """Wake local waiters of a finished or requeued task, and idle workers of a requeue."""
        if self._channel is None:
            return
        self._channel.announce(WAITERS, [record.task_id])
        if record.status is TaskStatus.PENDING:
            self._channel.announce(WORKERS, [])

    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_s: float
    ) -> list[TaskRecord]:
        now = time.time()
        parameters: dict[str, Any] = {
            "p_queues": list(queues),
            "p_now": now,
            "p_limit": limit,
            "p_lease_until": now + lease_s,
            "p_worker": worker_id,
        }
        with self._connect(write=True) as conn:
            if self._returning:
                rows = conn.execute(self._claim_statement, parameters).all()
                return sorted((_record(row) for row in rows), key=_claim_order)
            ids = list(conn.execute(self._due_statement, parameters).scalars())
            if not ids:
                return []
            conn.execute(self._claim_statement, {**parameters, "p_ids": ids})
            rows = conn.execute(self._get_many_statement, {"p_ids": ids}).all()
        return sorted((_record(row) for row in rows), key=_claim_order)

    def extend_leases(self, worker_id: str, task_ids: Sequence[str], lease_s: float) -> set[str]:
        if not task_ids:
            return set()
        table = self.table
        held = (
            table.c.id.in_(list(task_ids)),
            table.c.status == TaskStatus.RUNNING.value,
            table.c.worker_id == worker_id,
        )
        with self._connect(write=True) as conn:
            conn.execute(table.update().where(*held).values(lease_until=time.time() + lease_s))
            return set(conn.execute(sa.select(table.c.id).where(*held)).scalars())

    def set_progress(self, task_id: str, worker_id: str, progress: str) -> bool:
        table = self.table
        statement = (
            table.update()
            .where(
                table.c.id == task_id,
                table.c.status == TaskStatus.RUNNING.value,
                table.c.worker_id == worker_id,
            )
            .values(progress=progress)
        )
        with self._connect(write=True) as conn:
            stored = bool(conn.execute(statement).rowcount)
        if stored and self._channel is not None:
            self._channel.announce(WAITERS, [task_id])
        return stored

    def delete_expired(self, limit: int) -> int:
        table = self.table
        now = time.time()
        with self._connect(write=True) as conn:
            if self._is_mysql:
                statement = (
                    table.delete()
                    .where(table.c.expires_at <= now)
                    .with_dialect_options(mysql_limit=limit, mariadb_limit=limit)
                )
            else:
                expired = sa.select(table.c.id).where(table.c.expires_at <= now).limit(limit)
                statement = table.delete().where(table.c.id.in_(expired.scalar_subquery()))
            return int(conn.execute(statement).rowcount)

    # -- reads -------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        with self._connect() as conn:
            row = self._select_one(conn, task_id)
        return None if row is None else _record(row)

    def _select_one(self, conn: Connection, task_id: str) -> sa.Row[Any] | None:
        return conn.execute(self._get_statement, {"p_id": task_id}).first()

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        records: list[TaskRecord] = []
        with self._connect() as conn:
            for start in range(0, len(task_ids), BATCH_SIZE):
                batch = list(task_ids[start : start + BATCH_SIZE])
                rows = conn.execute(self._get_many_statement, {"p_ids": batch})
                records.extend(_record(row) for row in rows)
        return records

    def find_expired_leases(self, limit: int) -> list[TaskRecord]:
        table = self.table
        statement = (
            sa.select(*self._columns)
            .where(table.c.status == TaskStatus.RUNNING.value, table.c.lease_until < time.time())
            .limit(limit)
        )
        with self._connect() as conn:
            return [_record(row) for row in conn.execute(statement)]

    def subscribe(self, listener: ChangeListener) -> Callable[[], None] | None:
        if self._channel is None:
            return None
        return self._channel.listen(listener)

    def wait_for_work(self, queues: Sequence[str], timeout_s: float, stop: threading.Event) -> None:
        if self._channel is None:
            stop.wait(timeout_s)
            return
        self._channel.wait_for_work(timeout_s, stop)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self.engine.dispose()


def _claim_order(record: TaskRecord) -> tuple[float, str]:
    return (record.available_at, record.task_id)


def _row(record: TaskRecord) -> dict[str, Any]:
    return {
        "id": record.task_id,
        "name": record.name,
        "queue": record.queue,
        "status": record.status.value,
        "payload": record.payload,
        "version": record.version,
        "attempts": record.attempts,
        "max_attempts": record.max_attempts,
        "created_at": record.created_at,
        "available_at": record.available_at,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "expires_at": record.expires_at,
        "lease_until": record.lease_until,
        "worker_id": record.worker_id,
        "result": record.result,
        "error": record.error,
        "progress": record.progress,
    }


_OPTIONAL_FIELDS = (
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


def _transition_values(change: Transition) -> dict[str, Any]:
    values: dict[str, Any] = {"status": change.status.value}
    for field in _OPTIONAL_FIELDS:
        value = getattr(change, field)
        if value is not None:
            values[field] = value
    if change.release:
        values["lease_until"] = None
        values["worker_id"] = None
    return values


def _configure_sqlite(engine: Engine) -> None:
    """Turn on WAL and let SQLAlchemy, not the sqlite3 module, emit BEGIN."""

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())
