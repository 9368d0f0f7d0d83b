"""Version 3: a table of tombstones, so that the id of a cleaned task reads as expired.

When the expiry sweep deletes a task, it leaves the task's id here with the
time when the tombstone may go, ``settings.tombstone_s`` later. Until then
readers raise TaskExpiredError for that id instead of TaskNotFoundError.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from taskfuture.backends.sql_migrations import Migration, index_name, tombstone_table_name


def upgrade(connection: Connection, table: str) -> None:
    name = tombstone_table_name(table)
    sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("forget_at", sa.Double, nullable=False),
        sa.Index(index_name(name, "forget"), "forget_at"),
    ).create(connection, checkfirst=True)


MIGRATION = Migration(3, "add the table of tombstones of cleaned tasks", upgrade)
