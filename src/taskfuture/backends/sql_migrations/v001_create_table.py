"""Version 1: the task table with its claim, lease and expiry indexes.

This is the layout that ``schema create`` made before schema versions were
recorded. It is frozen: later changes go into new migrations.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection

from taskfuture.backends.sql_migrations import Migration, index_name

_LONG_TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")


def upgrade(connection: Connection, table: str) -> None:
    sa.Table(
        table,
        sa.MetaData(),
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
        sa.Index(index_name(table, "claim"), "status", "queue", "available_at"),
        sa.Index(index_name(table, "lease"), "status", "lease_until"),
        sa.Index(index_name(table, "expires"), "expires_at"),
    ).create(connection, checkfirst=True)


MIGRATION = Migration(1, "create the task table and its indexes", upgrade)
