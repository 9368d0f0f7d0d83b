"""Versioned schema migrations for the SQL task table, and the runner that applies them.

Each task table has its own version, stored in the shared table
``taskfuture_schema_versions`` (one row per task table). A migration is a
Python function that receives a connection and the task table's name, so one
database can hold several task tables at different versions. A table made
before versions were recorded has the layout of version 1.

The runner holds a database-wide lock while it migrates, so that several
processes may call it at once. PostgreSQL takes an advisory lock and runs
all pending migrations in one transaction, because its DDL is transactional.
MySQL/MariaDB takes a named lock (``GET_LOCK``) and records each migration
as soon as its DDL is done, because that DDL commits on its own. SQLite runs
them in one ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from taskfuture.errors import ConfigurationError

logger = logging.getLogger(__name__)

#: The table that stores the schema version of every task table in the database.
VERSIONS_TABLE = "taskfuture_schema_versions"

#: Maximum identifier length PostgreSQL keeps (NAMEDATALEN - 1); MySQL allows 64.
MAX_IDENTIFIER = 63

#: Key of the PostgreSQL advisory lock and name of the MySQL lock held while migrating.
LOCK_NAME = "taskfuture_schema"
_PG_LOCK_KEY = zlib.crc32(LOCK_NAME.encode())
#: Seconds MySQL/MariaDB waits for another process's migration to finish.
LOCK_TIMEOUT_S = 120

_metadata = sa.MetaData()
versions = sa.Table(
    VERSIONS_TABLE,
    _metadata,
    sa.Column("table_name", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", sa.Double, nullable=False),
)


@dataclasses.dataclass(frozen=True)
class Migration:
    """One step of the schema: ``upgrade(connection, table)`` moves a table to ``version``."""

    version: int
    description: str
    upgrade: Callable[[Connection, str], None]


def derived_name(table: str, suffix: str, prefix: str = "") -> str:
    """Return ``<prefix><table>_<suffix>``, shortened with a hash when it would pass 63 characters.

    PostgreSQL silently truncates longer names, and index names share one
    namespace per schema there, so two long table names could collide.
    """
    name = f"{prefix}{table}_{suffix}"
    if len(name) <= MAX_IDENTIFIER:
        return name
    digest = hashlib.sha256(table.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(f"{prefix}__{digest}_{suffix}")
    return f"{prefix}{table[:keep]}_{digest}_{suffix}"


def index_name(table: str, purpose: str) -> str:
    """Return the name of the task table's ``purpose`` index: ``ix_<table>_<purpose>``."""
    return derived_name(table, purpose, prefix="ix_")


def tombstone_table_name(table: str) -> str:
    """Return the name of the table of tombstones that belongs to task table ``table``."""
    return derived_name(table, "tombstones")


def _migrations() -> tuple[Migration, ...]:
    from taskfuture.backends.sql_migrations import (
        v001_create_table,
        v002_partial_indexes_notify,
        v003_tombstones,
    )

    return (
        v001_create_table.MIGRATION,
        v002_partial_indexes_notify.MIGRATION,
        v003_tombstones.MIGRATION,
    )


MIGRATIONS = _migrations()
#: The schema version this release of taskfuture reads and writes.
LATEST_VERSION = MIGRATIONS[-1].version


def current_version(connection: Connection, table: str) -> int | None:
    """Return the schema version of ``table``, or None when the table does not exist."""
    inspector = sa.inspect(connection)
    if inspector.has_table(VERSIONS_TABLE):
        version = connection.execute(
            sa.select(versions.c.version).where(versions.c.table_name == table)
        ).scalar()
        if version is not None:
            return int(version)
    if inspector.has_table(table):
        return 1
    return None


def check(engine: Engine, table: str) -> int | None:
    """Return the version of ``table`` (None if missing); raise if it is not the latest.

    Raises:
        ConfigurationError: the table is older than this release (run
            ``taskfuture schema upgrade``) or newer (upgrade taskfuture).
    """
    with engine.connect() as connection:
        version = current_version(connection, table)
    if version is None or version == LATEST_VERSION:
        return version
    if version < LATEST_VERSION:
        raise ConfigurationError(
            f"task table {table!r} has schema version {version}, but this release of "
            f"taskfuture needs version {LATEST_VERSION}; run `taskfuture schema upgrade` "
            "(with the same DSN and table) to migrate it"
        )
    raise ConfigurationError(
        f"task table {table!r} has schema version {version}, newer than version "
        f"{LATEST_VERSION} that this release of taskfuture knows; upgrade taskfuture"
    )


def upgrade(engine: Engine, table: str, target: int | None = None) -> list[Migration]:
    """Apply the migrations ``table`` lacks, up to ``target`` (default: the latest).

    Creates the table when it does not exist. Returns the migrations applied,
    oldest first; an empty list means the table was already up to date.
    """
    target = LATEST_VERSION if target is None else target
    if not 1 <= target <= LATEST_VERSION:
        raise ConfigurationError(f"invalid schema version {target}: expected 1 to {LATEST_VERSION}")
    with _migration_lock(engine) as connection:
        versions.create(connection, checkfirst=True)
        version = current_version(connection, table) or 0
        if version > LATEST_VERSION:
            raise ConfigurationError(
                f"task table {table!r} has schema version {version}, newer than version "
                f"{LATEST_VERSION} that this release of taskfuture knows; upgrade taskfuture"
            )
        applied = [migration for migration in MIGRATIONS if version < migration.version <= target]
        for migration in applied:
            logger.info(
                "Migrating task table %s to schema version %d: %s",
                table,
                migration.version,
                migration.description,
            )
            migration.upgrade(connection, table)
            _record(connection, table, migration.version)
    return applied


def forget(connection: Connection, table: str) -> None:
    """Delete the version row of ``table``; call it after dropping the table."""
    if sa.inspect(connection).has_table(VERSIONS_TABLE):
        connection.execute(versions.delete().where(versions.c.table_name == table))


def _record(connection: Connection, table: str, version: int) -> None:
    updated = connection.execute(
        versions.update()
        .where(versions.c.table_name == table)
        .values(version=version, applied_at=time.time())
    ).rowcount
    if not updated:
        connection.execute(
            versions.insert().values(table_name=table, version=version, applied_at=time.time())
        )


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """Yield a connection that holds the database-wide migration lock."""
    dialect = engine.dialect.name
    with engine.connect() as connection:
        if dialect == "sqlite":
            with connection.execution_options(sqlite_begin="IMMEDIATE").begin():
                yield connection
        elif dialect == "postgresql":
            # The engine's connections run in autocommit mode, so the
            # transaction is opened by hand; the advisory lock ends with it.
            connection.exec_driver_sql("BEGIN")
            try:
                connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_KEY)))
                yield connection
            except BaseException:
                connection.exec_driver_sql("ROLLBACK")
                raise
            connection.exec_driver_sql("COMMIT")
        else:
            locked = connection.execute(
                sa.select(sa.func.get_lock(LOCK_NAME, LOCK_TIMEOUT_S))
            ).scalar()
            if locked != 1:
                raise ConfigurationError(
                    f"timed out after {LOCK_TIMEOUT_S} s waiting for lock {LOCK_NAME!r}, "
                    "held by another process that migrates the schema; try again"
                )
            try:
                yield connection
            finally:
                connection.execute(sa.select(sa.func.release_lock(LOCK_NAME)))
