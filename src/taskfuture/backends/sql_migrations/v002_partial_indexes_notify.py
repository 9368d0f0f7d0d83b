"""Version 2: partial indexes for claims, leases and expiry; NOTIFY triggers on PostgreSQL.

PostgreSQL and SQLite replace the three version-1 indexes with partial ones
that hold only the rows each query can match: due PENDING rows ordered as a
claim takes them, RUNNING rows by lease end, and finished rows by expiry.
Most rows of a busy table are finished, so the claim and lease indexes stay
small however many results are retained.

PostgreSQL also gets two triggers that call ``pg_notify`` with the table
name as channel, inside the writing transaction:

* after an INSERT statement, ``w:<queue>`` once per queue that got tasks;
* after an UPDATE of ``status`` or ``progress`` that changes either,
  ``c:<task id>``, and also ``w:<queue>`` when the task is PENDING again.

MySQL/MariaDB has no partial indexes: its version-1 index on
``(status, queue, available_at)`` already serves claims, because InnoDB
appends the primary key to every secondary index. Only the version changes.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from taskfuture.backends.sql_migrations import Migration, index_name

#: Trigger functions shared by every task table; the channel is the table's own name.
NOTIFY_FUNCTIONS = (
    """
CREATE OR REPLACE FUNCTION taskfuture_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_NAME, 'w:' || queues.queue)
    FROM (SELECT DISTINCT queue FROM new_rows) AS queues;
    RETURN NULL;
END
$$
""",
    """
CREATE OR REPLACE FUNCTION taskfuture_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_NAME, 'c:' || NEW.id);
    IF NEW.status = 'PENDING' THEN
        PERFORM pg_notify(TG_TABLE_NAME, 'w:' || NEW.queue);
    END IF;
    RETURN NULL;
END
$$
""",
)


def upgrade(connection: Connection, table: str) -> None:
    dialect = connection.dialect.name
    if dialect not in ("postgresql", "sqlite"):
        return
    quote = connection.dialect.identifier_preparer.quote
    quoted = quote(table)
    for purpose in ("claim", "lease", "expires"):
        connection.exec_driver_sql(f"DROP INDEX IF EXISTS {quote(index_name(table, purpose))}")
    connection.exec_driver_sql(
        f"CREATE INDEX {quote(index_name(table, 'due'))} "
        f"ON {quoted} (queue, available_at, id) WHERE status = 'PENDING'"
    )
    connection.exec_driver_sql(
        f"CREATE INDEX {quote(index_name(table, 'lease'))} "
        f"ON {quoted} (lease_until) WHERE status = 'RUNNING'"
    )
    connection.exec_driver_sql(
        f"CREATE INDEX {quote(index_name(table, 'expires'))} "
        f"ON {quoted} (expires_at) WHERE expires_at IS NOT NULL"
    )
    if dialect != "postgresql":
        return
    for function in NOTIFY_FUNCTIONS:
        connection.exec_driver_sql(function)
    connection.exec_driver_sql(
        f"CREATE TRIGGER taskfuture_notify_insert AFTER INSERT ON {quoted} "
        "REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION taskfuture_notify_insert()"
    )
    connection.exec_driver_sql(
        f"CREATE TRIGGER taskfuture_notify_change AFTER UPDATE OF status, progress ON {quoted} "
        "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status "
        "OR OLD.progress IS DISTINCT FROM NEW.progress) "
        "EXECUTE FUNCTION taskfuture_notify_change()"
    )


MIGRATION = Migration(
    2, "partial indexes for claims, leases and expiry; NOTIFY triggers on PostgreSQL", upgrade
)
