"""The side table that SQL worker tasks write one row to per run.

It lives apart from ``sql_worker_app``, whose import builds a TaskService
from the environment, so that tests can describe the table without one.
"""

from __future__ import annotations

import sqlalchemy as sa


def runs_table(name: str) -> sa.Table:
    """Describe the side table: one row per run of a task."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_key", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
    )
