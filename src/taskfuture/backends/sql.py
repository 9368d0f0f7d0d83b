"""The SQL backend on SQLAlchemy 2 Core: SQLite, PostgreSQL and MySQL/MariaDB.

One table contains both the state and the queue of tasks. A worker claims due
PENDING rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MySQL/MariaDB
(so workers never wait for each other or take the same row) and in an
immediate transaction on SQLite. Every later transition is an ``UPDATE ...
WHERE version = :expected`` compare-and-set.

PostgreSQL and MySQL/MariaDB connections run in autocommit mode, so that an
operation made of one statement costs one round trip; operations of several
statements open their transaction by hand. A statement that fails because
its pooled connection was dropped (server restart, ``pg_terminate_backend``,
``KILL``) is retried once on a new connection where that is safe.

Idle workers and waiting callers are woken at once: on PostgreSQL by
triggers (schema version 2) that send ``NOTIFY`` in the writing transaction,
heard on one LISTEN connection per process; on SQLite by datagrams through a
:class:`~taskfuture.backends.local_channel.LocalChannel` beside the database
file. MySQL/MariaDB relies on the batched poll, except that a write in one
process wakes the workers and waiters of that same process at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Connection, Engine

from taskfuture.backends import sql_migrations
from taskfuture.backends.base import ChangeListener, TaskStorage
from taskfuture.backends.local_channel import WAITERS, WORKERS, LocalChannel
from taskfuture.config import Settings
from taskfuture.errors import (
    ConcurrentModificationError,
    ConfigurationError,
    StorageError,
    TaskFutureError,
    TaskNotFoundError,
)
from taskfuture.models import (
    COUNTER_LIMIT,
    RECORD_FIELDS,
    TRANSITION_FIELDS,
    TaskRecord,
    TaskStatus,
    Transition,
    checked_record,
    next_version,
)

if TYPE_CHECKING:
    import psycopg

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Ids per ``IN (...)`` list; below SQLite's limit of 32766 bound parameters.
BATCH_SIZE = 5000

#: Pooled connections kept open before a worker reserves more.
DEFAULT_POOL_SIZE = 5
#: Connections a pool may open beyond its size under a burst.
POOL_OVERFLOW = 10

_LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

#: The drivers used when a DSN names only the database.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}

_PENDING = TaskStatus.PENDING.value
_RUNNING = TaskStatus.RUNNING.value


def build_table(name: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """Describe the task table's columns for queries; the column order matches :class:`TaskRecord`.

    The migrations in :mod:`taskfuture.backends.sql_migrations` create the
    table and its indexes.
    """
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
    )


def build_tombstone_table(task_table: str, metadata: sa.MetaData | None = None) -> sa.Table:
    """Describe the table of tombstones: ids of cleaned tasks and when to forget them."""
    return sa.Table(
        sql_migrations.tombstone_table_name(task_table),
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("forget_at", sa.Double, nullable=False),
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
    try:
        record = TaskRecord(row[0], row[1], row[2], TaskStatus(row[3]), *row[4:])
    except ValueError:
        pass
    else:
        if record.sound:
            return record
    # An unknown status, a value of another type (possible on SQLite only), a
    # counter out of range or a RUNNING task without a lease.
    return checked_record(str(row[0]), dict(zip(RECORD_FIELDS, row, strict=True)))


class SQLStorage(TaskStorage):
    """Tasks in one SQL table, reached through a SQLAlchemy engine."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        super().__init__(settings)
        self.table = build_table(settings.table)
        self.tombstones = build_tombstone_table(settings.table)

        self._url = _engine_url(settings.dsn) if engine is None else engine.url
        self._pool_size = DEFAULT_POOL_SIZE
        self._owns_engine = engine is None
        self._relaxed_engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self.engine = engine if engine is not None else self._create_engine()
        self.dialect = self.engine.dialect.name
        self._sqlite = self.dialect == "sqlite"
        self._postgresql = self.dialect == "postgresql"
        self._is_mysql = self.dialect in ("mysql", "mariadb")
        self._returning = self.engine.dialect.update_returning

        self._columns = list(self.table.c)
        # psycopg statements for submits on PostgreSQL; see _insert_with_driver.
        quote = self.engine.dialect.identifier_preparer.quote
        column_list = ", ".join(quote(column.name) for column in self._columns)
        self._copy_statement = f"COPY {quote(self.table.name)} ({column_list}) FROM STDIN"
        placeholders = ", ".join("%s" for _ in self._columns)
        self._insert_statement = (
            f"INSERT INTO {quote(self.table.name)} ({column_list}) VALUES ({placeholders})"
        )
        self._statements = _Statements(self.table, self.tombstones, self.dialect, self._returning)
        self._ready = False

        # PostgreSQL push: one handler on this process's LISTEN connection.
        self._listens = self._postgresql and self.engine.dialect.driver == "psycopg"
        self.pushes_changes = self._listens
        self._push_lock = threading.Lock()
        self._unlisten: Callable[[], None] | None = None
        self._change_listeners: list[ChangeListener] = []
        self._work_events: dict[frozenset[str], threading.Event] = {}

        # MySQL/MariaDB: wake-ups within this process only; the poll stays on.
        self._local_wakeups = self._is_mysql
        # SQLite push: datagrams to the other processes that use the same file.
        self._channel: LocalChannel | None = None
        if self._sqlite:
            # A file made by an older release is reported by the setup() of a
            # worker or of create_schema(), so that `schema upgrade` can still open it.
            with suppress(ConfigurationError):
                self.setup()
            database = self.engine.url.database
            if database:
                self._channel = LocalChannel(Path(database))
                self.pushes_changes = True

    # -- engine ------------------------------------------------------------

    def _create_engine(self, relaxed: bool = False) -> Engine:
        """Create an engine; ``relaxed`` turns off waiting for WAL flushes (PostgreSQL only)."""
        url = self._url
        backend = url.get_backend_name()
        options: dict[str, Any] = {"hide_parameters": True}
        if backend == "sqlite":
            engine = sa.create_engine(
                url, connect_args={"timeout": 30.0, "check_same_thread": False}, **options
            )
            _configure_sqlite(engine)
            return engine
        options.update(
            isolation_level="AUTOCOMMIT",
            # Connections stay in autocommit mode, so the pool's ROLLBACK on
            # check-in would be a wasted round trip.
            skip_autocommit_rollback=True,
            pool_size=self._pool_size,
            max_overflow=POOL_OVERFLOW,
            pool_timeout=max(1.0, self.settings.connect_timeout_s),
        )
        connect_args = self._connect_args()
        if relaxed:
            given = url.query.get("options", "")
            given = " ".join(given) if isinstance(given, tuple) else given
            connect_args["options"] = f"{given} -c synchronous_commit=off".strip()
        engine = sa.create_engine(url, connect_args=connect_args, **options)
        if backend in ("mysql", "mariadb"):
            _configure_mysql(engine)
        return engine

    def _connect_args(self) -> dict[str, Any]:
        return {"connect_timeout": max(1, round(self.settings.connect_timeout_s))}

    def reserve_connections(self, count: int) -> None:
        """Grow the pool to keep ``count`` connections, one per thread that uses storage."""
        if count <= self._pool_size or not self._owns_engine or self._sqlite:
            return
        self._pool_size = count
        old = self.engine
        self.engine = self._create_engine()
        old.dispose()
        with self._engine_lock:
            old_relaxed, self._relaxed_engine = self._relaxed_engine, None
        if old_relaxed is not None:
            old_relaxed.dispose()
        logger.debug("Pool of %s sized to %d connections", self.description, count)

    def _relaxed(self) -> Engine:
        """Return the engine for writes that need not wait for a WAL flush.

        On PostgreSQL, claims, lease extensions and progress use connections
        with ``synchronous_commit = off``. A server crash may lose such a
        commit, which only puts the task back to PENDING or its lease or
        progress back a step, and the next durable commit flushes it anyway.
        Other engines, and engines passed in by the caller, use the one engine.
        """
        if not self._postgresql or not self._owns_engine:
            return self.engine
        with self._engine_lock:
            if self._relaxed_engine is None:
                self._relaxed_engine = self._create_engine(relaxed=True)
            return self._relaxed_engine

    def _execute(
        self,
        operation: Callable[[Connection], _T],
        transaction: bool,
        write: bool,
        relaxed: bool = False,
    ) -> _T:
        """Run ``operation`` once on a pooled connection; SQLAlchemy errors pass through."""
        engine = self._relaxed() if relaxed else self.engine
        with engine.connect() as conn:
            if self._sqlite:
                if write:
                    conn = conn.execution_options(sqlite_begin="IMMEDIATE")
                with conn.begin():
                    return operation(conn)
            if not transaction:
                return operation(conn)
            conn.exec_driver_sql("BEGIN")
            try:
                result = operation(conn)
            except BaseException:
                if not conn.invalidated:
                    with suppress(sa.exc.SQLAlchemyError):
                        conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return result

    def _run(
        self,
        operation: Callable[[Connection], _T],
        *,
        transaction: bool = False,
        write: bool = False,
        retry: Callable[[Connection], _T] | None = None,
        idempotent: bool = True,
        relaxed: bool = False,
    ) -> _T:
        """Run ``operation``, retrying once on a new connection if the first one was dropped.

        ``retry`` replaces ``operation`` on the second try, for writes that must
        first check whether the lost attempt took effect. Without ``retry``,
        ``idempotent=False`` turns retries off.
        """
        try:
            return self._execute(operation, transaction, write, relaxed)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated or (retry is None and not idempotent):
                raise self._storage_error(exc) from exc
            logger.warning(
                "Connection to %s was dropped (%s); retrying on a new connection",
                self.description,
                self._error_detail(exc),
            )
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc
        try:
            return self._execute(retry or operation, transaction, write, relaxed)
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc

    def _error_detail(self, exc: BaseException) -> str:
        text = str(getattr(exc, "orig", None) or exc).strip()
        detail = text.splitlines()[0] if text else type(exc).__name__
        password = self._url.password
        if password:
            detail = detail.replace(str(password), "***")
        return detail

    def _storage_error(self, exc: BaseException) -> StorageError:
        return StorageError(
            f"{self.dialect} storage failed ({self.description}): {self._error_detail(exc)}"
        )

    # -- schema ------------------------------------------------------------

    def setup(self) -> None:
        """Create the table at the latest schema version if it is missing.

        Raises:
            ConfigurationError: the table exists at an older schema version;
                ``taskfuture schema upgrade`` migrates it.
        """
        if self._ready:
            return
        try:
            if sql_migrations.check(self.engine, self.table.name) is None:
                sql_migrations.upgrade(self.engine, self.table.name)
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc
        self._ready = True

    def upgrade_schema(self) -> list[str]:
        """Apply pending migrations (creating the table if missing); describe each one applied."""
        try:
            applied = sql_migrations.upgrade(self.engine, self.table.name)
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc
        self._ready = True
        return [f"version {migration.version}: {migration.description}" for migration in applied]

    def schema_version(self) -> int | None:
        """Return the table's schema version, or None when the table does not exist."""

        def read(conn: Connection) -> int | None:
            return sql_migrations.current_version(conn, self.table.name)

        return self._run(read)

    def drop(self) -> None:
        """Drop the task table and its version record; for tests and tear-down scripts."""

        def drop(conn: Connection) -> None:
            self.table.drop(conn, checkfirst=True)
            self.tombstones.drop(conn, checkfirst=True)
            sql_migrations.forget(conn, self.table.name)

        self._run(drop, write=True)
        self._ready = False

    # -- writes ------------------------------------------------------------

    def enqueue(self, records: Sequence[TaskRecord], connection: Any = None) -> None:
        rows = [_row(record) for record in records]
        if not rows:
            return
        if connection is not None:
            self._enqueue_in(connection, rows)
            return
        parameters: list[dict[str, Any]] | dict[str, Any] = rows if len(rows) > 1 else rows[0]
        insert = self._statements.insert
        select_one = self._statements.select_one

        def write(conn: Connection) -> None:
            if self._listens:
                self._insert_with_driver(conn, rows)
            else:
                conn.execute(insert, parameters)

        def write_unless_done(conn: Connection) -> None:
            # The batch is all or none, so if its first row exists the lost
            # attempt committed every row.
            if conn.execute(select_one, {"p_task_id": rows[0]["id"]}).first() is None:
                conn.execute(insert, parameters)

        self._run(write, transaction=len(rows) > 1, write=True, retry=write_unless_done)
        if self._channel is not None:
            self._channel.announce(WORKERS, [])
        if self._local_wakeups:
            self._wake_workers({row["queue"] for row in rows})

    def _insert_with_driver(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` through psycopg itself, all or none: one INSERT, or one COPY.

        A submit is the hottest statement, and SQLAlchemy's execution layer
        took about a fifth of its time against a local server (measured on a
        2-core machine with a single-client submit loop). Many rows go in one
        COPY because psycopg's executemany sends one INSERT per row, and each
        would fire the statement-level NOTIFY trigger.
        """
        import psycopg

        driver = conn.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        names = [column.name for column in self._columns]
        statement = self._copy_statement if len(rows) > 1 else self._insert_statement
        try:
            if len(rows) == 1:
                driver.execute(statement, [rows[0][name] for name in names])
                return
            with driver.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row([row[name] for name in names])
        except psycopg.Error as exc:
            invalidated = self.engine.dialect.is_disconnect(exc, conn.connection, None)  # type: ignore[arg-type]
            if invalidated:
                # Mark every pooled connection opened before now as stale, as
                # SQLAlchemy's own execute does on a disconnect. Otherwise the
                # retry in _run may take another connection that the same
                # server restart or pg_terminate_backend dropped.
                conn.engine.pool._invalidate(conn.connection, exc)
                conn.invalidate(exc)
            raise sa.exc.DBAPIError.instance(
                statement, None, exc, psycopg.Error, connection_invalidated=invalidated
            ) from exc

    def _enqueue_in(self, connection: Any, rows: list[dict[str, Any]]) -> None:
        conn = self._application_connection(connection)
        try:
            conn.execute(self._statements.insert, rows if len(rows) > 1 else rows[0])
        except sa.exc.SQLAlchemyError as exc:
            raise self._storage_error(exc) from exc

    def _application_connection(self, connection: Any) -> Connection:
        """Return the Connection of an application's Connection or ORM Session."""
        from sqlalchemy.orm import Session

        if isinstance(connection, Session):
            try:
                conn = connection.connection()
            except sa.exc.SQLAlchemyError as exc:
                raise ConfigurationError(
                    f"cannot get a connection from session {connection!r}: {exc}; "
                    "pass connection=session.connection(...) with the right bind"
                ) from None
        elif isinstance(connection, Connection):
            conn = connection
        else:
            raise ConfigurationError(
                f"invalid connection {connection!r}: expected a SQLAlchemy Connection or "
                "ORM Session on the database that holds the task table"
            )
        theirs, ours = conn.engine.url, self._url
        if (_family(conn.dialect.name), _database_of(theirs)) != (
            _family(self.dialect),
            _database_of(ours),
        ):
            raise ConfigurationError(
                "the connection passed to submit is on "
                f"{theirs.render_as_string(hide_password=True)}, but the task table is on "
                f"{ours.render_as_string(hide_password=True)}; a transactional submit must "
                "use the database that holds the task table"
            )
        return conn

    def watch_transaction(self, connection: Any) -> Callable[[], bool]:
        conn = self._application_connection(connection)
        transaction = conn.get_transaction()
        if transaction is None:
            return _always_true
        # RootTransaction.is_active turns False only after the DBAPI commit or
        # rollback has returned, so a read made afterwards reads the outcome.
        return lambda: not transaction.is_active

    def transition(self, task_id: str, expected_version: int, change: Transition) -> TaskRecord:
        values = _transition_values(change)
        statement = self._statements.transition(tuple(values), self._returning)
        parameters = {f"p_{key}": value for key, value in values.items()}
        parameters["p_task_id"] = task_id
        parameters["p_expected_version"] = expected_version
        select_one = self._statements.select_one

        def apply(conn: Connection, after_drop: bool = False) -> TaskRecord:
            if self._returning:
                row = conn.execute(statement, parameters).first()
            else:
                updated = conn.execute(statement, parameters).rowcount
                row = conn.execute(select_one, {"p_task_id": task_id}).first() if updated else None
            if row is not None:
                return _record(row)
            current = conn.execute(select_one, {"p_task_id": task_id}).first()
            if current is None:
                raise TaskNotFoundError(task_id)
            record = _record(current)
            if after_drop and _shows_change(record, expected_version, values):
                # The dropped connection had committed this very change.
                return record
            raise ConcurrentModificationError(task_id, expected_version)

        record = self._run(
            apply,
            transaction=self._is_mysql,
            write=True,
            retry=lambda conn: apply(conn, after_drop=True),
        )
        self._announce_change(record.task_id, record.status, record.queue)
        return record

    def transition_many(
        self, changes: Sequence[tuple[str, int, Transition]]
    ) -> list[TaskFutureError | None]:
        """Apply each compare-and-set, sharing round trips and commits across the batch.

        PostgreSQL applies each group of changes that set the same columns in
        one statement; other engines apply all of them in one transaction.
        """
        statements = self._statements
        items = [
            (task_id, expected_version, _transition_values(change))
            for task_id, expected_version, change in changes
        ]

        def apply_all(conn: Connection, after_drop: bool = False) -> list[TaskFutureError | None]:
            if self._postgresql:
                applied = self._apply_batched(conn, items)
            else:
                applied = set()
                for task_id, expected_version, values in items:
                    parameters = {f"p_{key}": value for key, value in values.items()}
                    parameters["p_task_id"] = task_id
                    parameters["p_expected_version"] = expected_version
                    statement = statements.transition(tuple(values), False)
                    if conn.execute(statement, parameters).rowcount:
                        applied.add(task_id)
            outcomes: list[TaskFutureError | None] = []
            for task_id, expected_version, values in items:
                if task_id in applied:
                    outcomes.append(None)
                    continue
                current = conn.execute(statements.select_one, {"p_task_id": task_id}).first()
                if current is None:
                    outcomes.append(TaskNotFoundError(task_id))
                elif after_drop and _shows_change(_record(current), expected_version, values):
                    outcomes.append(None)
                else:
                    outcomes.append(ConcurrentModificationError(task_id, expected_version))
            return outcomes

        try:
            outcomes = self._run(
                apply_all,
                # PostgreSQL applies each group in one statement; elsewhere one
                # transaction lets the row-by-row updates share a commit.
                transaction=not self._postgresql and len(items) > 1,
                write=True,
                retry=lambda conn: apply_all(conn, after_drop=True),
            )
        except StorageError as exc:
            return [exc for _ in changes]
        for (task_id, _, change), outcome in zip(changes, outcomes, strict=True):
            if outcome is None:
                self._announce_change(task_id, change.status, None)
        return outcomes

    def _apply_batched(
        self, conn: Connection, items: list[tuple[str, int, dict[str, Any]]]
    ) -> set[str]:
        """Apply changes that set the same columns with one UPDATE ... FROM unnest(...).

        Returns the ids whose compare-and-set succeeded.
        """
        groups: dict[tuple[str, ...], list[tuple[str, int, dict[str, Any]]]] = {}
        for item in items:
            groups.setdefault(tuple(item[2]), []).append(item)
        applied: set[str] = set()
        for keys, group in groups.items():
            if len(group) == 1:
                # One row: the plain compare-and-set runs faster than unnest.
                task_id, expected_version, values = group[0]
                single = {f"p_{key}": value for key, value in values.items()}
                single["p_task_id"] = task_id
                single["p_expected_version"] = expected_version
                if conn.execute(self._statements.transition(keys, False), single).rowcount:
                    applied.add(task_id)
                continue
            parameters: dict[str, list[Any]] = {
                "b_task_id": [task_id for task_id, _, _ in group],
                "b_expected_version": [expected for _, expected, _ in group],
            }
            for key in keys:
                parameters[f"b_{key}"] = [values[key] for _, _, values in group]
            statement = self._statements.transition_batch(keys)
            applied.update(conn.execute(statement, parameters).scalars())
        return applied

    def _announce_change(self, task_id: str, status: TaskStatus, queue: str | None) -> None:
        """Wake waiters of a changed task, and idle workers when it is PENDING again."""
        if self._local_wakeups:
            self._notify_local([task_id])
            if status is TaskStatus.PENDING:
                self._wake_workers({queue} if queue is not None else None)
        if self._channel is None:
            return
        self._channel.announce(WAITERS, [task_id])
        if status is TaskStatus.PENDING:
            self._channel.announce(WORKERS, [])

    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_s: float
    ) -> list[TaskRecord]:
        now = time.time()
        parameters: dict[str, Any] = {
            "p_now": now,
            "p_limit": limit,
            "p_lease_until": now + lease_s,
            "p_worker_id": worker_id,
        }
        if len(queues) == 1:
            statement = self._statements.claim_one_queue
            parameters["p_queue"] = queues[0]
        else:
            statement = self._statements.claim_queues
            parameters["p_queues"] = list(queues)

        # A claim whose commit was lost with its connection leaves rows that
        # no worker runs; their lease runs out and they are claimed again.
        if not self._statements.claim_returns_rows:
            records = self._run(
                lambda conn: self._claim_locked(conn, statement, parameters),
                transaction=True,
                write=True,
            )
            if records and self._local_wakeups:
                self._notify_local([record.task_id for record in records])
            return records

        def claim(conn: Connection) -> list[TaskRecord]:
            rows = conn.execute(statement, parameters).all()
            return sorted((_record(row) for row in rows), key=_claim_order)

        return self._run(claim, write=True, relaxed=True)

    def _claim_locked(
        self, conn: Connection, due: sa.Executable, parameters: dict[str, Any]
    ) -> list[TaskRecord]:
        """Lock due rows, update them and build the claimed records without reading them again."""
        records = [_record(row) for row in conn.execute(due, parameters)]
        if not records:
            return []
        conn.execute(
            self._statements.mark_claimed,
            {**parameters, "p_task_ids": [record.task_id for record in records]},
        )
        for record in records:
            # The same rules as the UPDATE's, which has just run on these rows.
            record.status = TaskStatus.RUNNING
            record.version = next_version(record.version)
            if record.attempts < COUNTER_LIMIT:
                record.attempts += 1
            record.started_at = parameters["p_now"]
            record.lease_until = parameters["p_lease_until"]
            record.worker_id = parameters["p_worker_id"]
        return records

    def extend_leases(self, worker_id: str, task_ids: Sequence[str], lease_s: float) -> set[str]:
        if not task_ids:
            return set()
        parameters = {
            "p_task_ids": list(task_ids),
            "p_worker_id": worker_id,
            "p_lease_until": time.time() + lease_s,
        }
        statements = self._statements

        def extend(conn: Connection) -> set[str]:
            if self._returning:
                return set(conn.execute(statements.extend_returning, parameters).scalars())
            conn.execute(statements.extend, parameters)
            return set(conn.execute(statements.held_ids, parameters).scalars())

        return self._run(extend, write=True, relaxed=True)

    def set_progress(self, task_id: str, worker_id: str, progress: str) -> bool:
        parameters = {"p_task_id": task_id, "p_worker_id": worker_id, "p_progress": progress}
        statement = self._statements.set_progress

        def store(conn: Connection) -> bool:
            return bool(conn.execute(statement, parameters).rowcount)

        stored = self._run(store, write=True, relaxed=True)
        if stored and self._channel is not None:
            self._channel.announce(WAITERS, [task_id])
        if stored and self._local_wakeups:
            self._notify_local([task_id])
        return stored

    def delete_expired(self, limit: int) -> int:
        """Delete up to ``limit`` expired tasks, leaving a tombstone for each; return how many.

        Tombstones past their time are deleted in the same transaction.
        """
        now = time.time()
        forget_at = now + self.settings.tombstone_s
        statements = self._statements

        def sweep(conn: Connection) -> int:
            ids = list(conn.execute(statements.expired_ids(limit), {"p_now": now}).scalars())
            deleted = 0
            if ids:
                conn.execute(
                    statements.insert_tombstone,
                    [{"id": task_id, "forget_at": forget_at} for task_id in ids],
                )
                deleted = conn.execute(statements.delete_by_ids, {"p_task_ids": ids}).rowcount
            conn.execute(statements.forget_tombstones(limit), {"p_now": now})
            return int(deleted)

        return self._run(sweep, transaction=True, write=True)

    def expired_ids(self, task_ids: Sequence[str]) -> set[str]:
        statement = self._statements.tombstoned
        now = time.time()

        def read(conn: Connection) -> set[str]:
            found: set[str] = set()
            for start in range(0, len(task_ids), BATCH_SIZE):
                batch = list(task_ids[start : start + BATCH_SIZE])
                found.update(conn.execute(statement, {"p_task_ids": batch, "p_now": now}).scalars())
            return found

        return self._run(read)

    # -- reads -------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        statement = self._statements.select_one

        def read(conn: Connection) -> TaskRecord | None:
            row = conn.execute(statement, {"p_task_id": task_id}).first()
            return None if row is None else _record(row)

        return self._run(read)

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        statement = self._statements.select_many

        def read(conn: Connection) -> list[TaskRecord]:
            records: list[TaskRecord] = []
            for start in range(0, len(task_ids), BATCH_SIZE):
                batch = list(task_ids[start : start + BATCH_SIZE])
                records.extend(
                    _record(row) for row in conn.execute(statement, {"p_task_ids": batch})
                )
            return records

        return self._run(read)

    def find_expired_leases(self, limit: int) -> list[TaskRecord]:
        statement = self._statements.expired_leases
        parameters = {"p_now": time.time(), "p_limit": limit}

        def read(conn: Connection) -> list[TaskRecord]:
            return [_record(row) for row in conn.execute(statement, parameters)]

        return self._run(read)

    # -- push -------------------------------------------------------------------

    def subscribe(self, listener: ChangeListener) -> Callable[[], None] | None:
        """Push changes to ``listener``; see :meth:`TaskStorage.subscribe`.

        On MySQL/MariaDB the listener hears only the changes this process
        makes, so the call keeps it but returns None: the waiter must still
        poll for changes that other processes make.
        """
        if self._channel is not None:
            return self._channel.listen(listener)
        if self._local_wakeups:
            with self._push_lock:
                self._change_listeners.append(listener)
            return None
        if not self._listens:
            return None
        with self._push_lock:
            self._change_listeners.append(listener)
        self._listen()

        def unsubscribe() -> None:
            with self._push_lock:
                if listener in self._change_listeners:
                    self._change_listeners.remove(listener)

        return unsubscribe

    def wait_for_work(self, queues: Sequence[str], timeout_s: float, stop: threading.Event) -> None:
        if self._channel is not None:
            self._channel.wait_for_work(timeout_s, stop)
            return
        if not self._listens and not self._local_wakeups:
            super().wait_for_work(queues, timeout_s, stop)
            return
        key = frozenset(queues)
        with self._push_lock:
            event = self._work_events.setdefault(key, threading.Event())
        if self._listens:
            self._listen()
        # The event stays set when a notification came while the worker was
        # claiming, so that commit is not missed. The price is at most one
        # claim that finds nothing.
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if event.wait(min(remaining, 0.5)):
                event.clear()
                return

    def _listen(self) -> None:
        """Subscribe this storage to the process's LISTEN connection, once."""
        from taskfuture.backends import pg_listen

        with self._push_lock:
            if self._unlisten is not None:
                return
            key = self._url.render_as_string(hide_password=False)
            self._unlisten = pg_listen.subscribe(
                key, self._listen_connection, self.description, self.table.name, self._on_notify
            )

    def _listen_connection(self) -> psycopg.Connection[Any]:
        import psycopg

        dialect = self.engine.dialect
        args, kwargs = dialect.create_connect_args(self._url)
        kwargs.update(self._connect_args())
        return psycopg.connect(*args, autocommit=True, **kwargs)

    def _on_notify(self, payloads: list[str] | None) -> None:
        with self._push_lock:
            listeners = list(self._change_listeners)
            events = list(self._work_events.items())
        if payloads is None:
            for _, event in events:
                event.set()
            for listener in listeners:
                listener([])
            return
        queues = {payload[2:] for payload in payloads if payload.startswith("w:")}
        changed = [payload[2:] for payload in payloads if payload.startswith("c:")]
        if queues:
            for key, event in events:
                if key & queues:
                    event.set()
        if changed:
            for listener in listeners:
                listener(changed)

    def _notify_local(self, task_ids: list[str]) -> None:
        with self._push_lock:
            listeners = list(self._change_listeners)
        for listener in listeners:
            listener(task_ids)

    def _wake_workers(self, queues: set[str] | None) -> None:
        """Set the work events of idle workers of ``queues`` (None: of every queue)."""
        with self._push_lock:
            events = list(self._work_events.items())
        for key, event in events:
            if queues is None or key & queues:
                event.set()

    def close(self) -> None:
        with self._push_lock:
            unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            unlisten()
        if self._channel is not None:
            self._channel.close()
        if self._relaxed_engine is not None:
            self._relaxed_engine.dispose()
        self.engine.dispose()


class _Statements:
    """Statements built once per storage, so that SQLAlchemy reuses their compiled form."""

    def __init__(
        self, table: sa.Table, tombstones: sa.Table, dialect: str, returning: bool
    ) -> None:
        self.table = table
        self.tombstones = tombstones
        self._dialect = dialect
        columns = list(table.c)
        if dialect == "postgresql":
            # One array parameter, whatever the number of ids, keeps the SQL
            # text constant, so that psycopg prepares it once.
            ids_match = table.c.id == sa.any_(
                sa.bindparam("p_task_ids", type_=postgresql.ARRAY(sa.String))
            )
            queues_match = table.c.queue == sa.any_(
                sa.bindparam("p_queues", type_=postgresql.ARRAY(sa.String))
            )
        else:
            ids_match = table.c.id.in_(sa.bindparam("p_task_ids", expanding=True))
            queues_match = table.c.queue.in_(sa.bindparam("p_queues", expanding=True))
        held_by_worker = (
            ids_match,
            table.c.status == _RUNNING,
            table.c.worker_id == sa.bindparam("p_worker_id"),
        )

        self.insert = table.insert()
        self.select_one = sa.select(*columns).where(table.c.id == sa.bindparam("p_task_id"))
        self.select_many = sa.select(*columns).where(ids_match)
        self.expired_leases = (
            sa.select(*columns)
            .where(table.c.status == _RUNNING, table.c.lease_until < sa.bindparam("p_now"))
            .limit(sa.bindparam("p_limit"))
        )
        self.extend = (
            table.update().where(*held_by_worker).values(lease_until=sa.bindparam("p_lease_until"))
        )
        self.extend_returning = self.extend.returning(table.c.id)
        self.held_ids = sa.select(table.c.id).where(*held_by_worker)
        self.set_progress = (
            table.update()
            .where(
                table.c.id == sa.bindparam("p_task_id"),
                table.c.status == _RUNNING,
                table.c.worker_id == sa.bindparam("p_worker_id"),
            )
            .values(progress=sa.bindparam("p_progress"))
        )
        self.delete_by_ids = table.delete().where(
            table.c.id.in_(sa.bindparam("p_task_ids", expanding=True))
        )
        self.insert_tombstone = tombstones.insert()
        self.tombstoned = sa.select(tombstones.c.id).where(
            tombstones.c.id.in_(sa.bindparam("p_task_ids", expanding=True)),
            tombstones.c.forget_at > sa.bindparam("p_now"),
        )
        self.mark_claimed = (
            table.update()
            .where(table.c.id.in_(sa.bindparam("p_task_ids", expanding=True)))
            .values(self._claim_values())
        )
        #: Whether a claim is one UPDATE ... RETURNING; otherwise it locks
        #: the due rows with a SELECT and updates them by id.
        self.claim_returns_rows = dialect == "postgresql" or (dialect == "sqlite" and returning)
        one_queue = table.c.queue == sa.bindparam("p_queue")
        self.claim_one_queue: sa.Executable
        self.claim_queues: sa.Executable
        if self.claim_returns_rows:
            self.claim_one_queue = self._claim_returning(one_queue)
            self.claim_queues = self._claim_returning(queues_match)
        else:
            self.claim_one_queue = self._due_rows(one_queue)
            self.claim_queues = self._due_rows(queues_match)
        self._transitions: dict[tuple[tuple[str, ...], bool], sa.UpdateBase] = {}
        self._batches: dict[tuple[str, ...], sa.UpdateBase] = {}

    def _next_version(self) -> sa.ColumnElement[Any]:
        """``version + 1``, wrapping to ``-COUNTER_LIMIT`` where that would overflow.

        The same rule as :func:`~taskfuture.models.next_version`. Without it one
        record at the column's limit would fail every claim or batch it is in.
        """
        version = self.table.c.version
        sane: sa.ColumnElement[bool] = version < COUNTER_LIMIT
        if self._dialect == "sqlite":
            # A SQLite column takes any value: text or a REAL would defeat the
            # compare-and-set that fails the task.
            sane = sa.and_(sa.func.typeof(version) == "integer", sane)
        return sa.case((sane, version + 1), else_=-COUNTER_LIMIT)

    def _claim_values(self) -> dict[str, Any]:
        table = self.table
        attempts = table.c.attempts
        return {
            "status": _RUNNING,
            "version": self._next_version(),
            # At the limit the count stays: the task runs, and no retry follows.
            "attempts": sa.case((attempts < COUNTER_LIMIT, attempts + 1), else_=attempts),
            "started_at": sa.bindparam("p_now"),
            "lease_until": sa.bindparam("p_lease_until"),
            "worker_id": sa.bindparam("p_worker_id"),
        }

    def _due(self, queue_match: sa.ColumnElement[bool], *columns: Any) -> sa.Select[Any]:
        """Select due PENDING rows in the order of the claim index for one queue."""
        table = self.table
        due = (
            sa.select(*columns)
            .where(
                table.c.status == _PENDING,
                queue_match,
                table.c.available_at <= sa.bindparam("p_now"),
            )
            .order_by(table.c.available_at, table.c.id)
            .limit(sa.bindparam("p_limit"))
        )
        if self._dialect != "sqlite":
            due = due.with_for_update(skip_locked=True)
        return due

    def _due_rows(self, queue_match: sa.ColumnElement[bool]) -> sa.Select[Any]:
        return self._due(queue_match, *self.table.c)

    def _claim_returning(self, queue_match: sa.ColumnElement[bool]) -> sa.UpdateBase:
        table = self.table
        due = self._due(queue_match, table.c.id)
        if self._dialect == "postgresql":
            # A CTE runs its locking SELECT exactly once; a subquery in the
            # WHERE clause may be run again by the planner and lock more rows.
            locked = due.cte("due")
            statement = table.update().where(table.c.id == locked.c.id)
        else:
            statement = table.update().where(table.c.id.in_(due.scalar_subquery()))
        return statement.values(self._claim_values()).returning(*table.c)

    def expired_ids(self, limit: int) -> sa.Select[Any]:
        """Select up to ``limit`` expired ids; two sweepers lock disjoint rows."""
        table = self.table
        expired = (
            sa.select(table.c.id).where(table.c.expires_at <= sa.bindparam("p_now")).limit(limit)
        )
        if self._dialect != "sqlite":
            expired = expired.with_for_update(skip_locked=True)
        return expired

    def forget_tombstones(self, limit: int) -> sa.Delete:
        tombstones = self.tombstones
        done = tombstones.c.forget_at <= sa.bindparam("p_now")
        if self._dialect in ("mysql", "mariadb"):
            # MySQL rejects LIMIT in an IN subquery, but DELETE takes one itself.
            return tombstones.delete().where(done).with_dialect_options(mysql_limit=limit)
        due = sa.select(tombstones.c.id).where(done).limit(limit)
        return tombstones.delete().where(tombstones.c.id.in_(due.scalar_subquery()))

    def transition_batch(self, keys: tuple[str, ...]) -> sa.UpdateBase:
        """Return one compare-and-set UPDATE for many tasks that all set the columns ``keys``.

        Each column of the batch is one array parameter (``b_task_id``,
        ``b_expected_version``, ``b_<key>``) that ``unnest`` turns into rows,
        so the SQL text is the same for any batch size and is compiled and
        prepared once. The statement returns the ids it changed.
        """
        statement = self._batches.get(keys)
        if statement is not None:
            return statement
        table = self.table
        names = ["task_id", "expected_version", *keys]
        types: list[sa.types.TypeEngine[Any]] = [
            sa.String(),
            sa.Integer(),
            *(table.c[key].type for key in keys),
        ]
        arrays = [
            sa.bindparam(f"b_{name}", type_=postgresql.ARRAY(type_))
            for name, type_ in zip(names, types, strict=True)
        ]
        batch = (
            sa.func.unnest(*arrays)
            .table_valued(
                *(sa.column(name, type_) for name, type_ in zip(names, types, strict=True))
            )
            .render_derived(name="batch")
        )
        statement = (
            table.update()
            .where(table.c.id == batch.c.task_id, table.c.version == batch.c.expected_version)
            .values(version=self._next_version(), **{key: batch.c[key] for key in keys})
            .returning(table.c.id)
        )
        self._batches[keys] = statement
        return statement

    def transition(self, keys: tuple[str, ...], returning: bool) -> sa.UpdateBase:
        """Return the compare-and-set UPDATE that sets the columns ``keys``."""
        statement = self._transitions.get((keys, returning))
        if statement is None:
            table = self.table
            statement = (
                table.update()
                .where(
                    table.c.id == sa.bindparam("p_task_id"),
                    table.c.version == sa.bindparam("p_expected_version"),
                )
                .values(
                    version=self._next_version(),
                    **{key: sa.bindparam(f"p_{key}") for key in keys},
                )
            )
            if returning:
                statement = statement.returning(*table.c)
            self._transitions[keys, returning] = statement
        return statement


def _always_true() -> bool:
    return True


def _family(dialect: str) -> str:
    return "mysql" if dialect == "mariadb" else dialect


def _database_of(url: sa.URL) -> str | None:
    if url.get_backend_name() == "sqlite" and url.database:
        return os.path.realpath(url.database)
    return url.database


def _shows_change(record: TaskRecord, expected_version: int, values: dict[str, Any]) -> bool:
    """Return True if ``record`` is the result of applying ``values`` at ``expected_version``."""
    if record.version != next_version(expected_version) or record.status.value != values["status"]:
        return False
    fields = {"id": "task_id"}
    return all(
        getattr(record, fields.get(key, key)) == value
        for key, value in values.items()
        if key != "status"
    )


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


_OPTIONAL_FIELDS = TRANSITION_FIELDS


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


def _configure_mysql(engine: Engine) -> None:
    """Use READ COMMITTED in the transactions opened by hand, so claims take no gap locks."""

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        cursor.close()


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
