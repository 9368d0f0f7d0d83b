"""The app that SQL server tests load in worker subprocesses: ``--app sql_worker_app:tasks``.

Each task inserts one row per run into the side table named by
``TASKFUTURE_TEST_RUNS_TABLE`` on ``TASKFUTURE_DSN``, so a test can count
how often every task ran, whatever the process that ran it.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa

from runs_table import runs_table
from taskfuture import TaskService, current_context

tasks = TaskService.from_env()


def _record_run(key: int) -> None:
    # The task storage's engine runs in autocommit mode, so the INSERT commits at once.
    engine: sa.Engine = tasks.storage.engine  # type: ignore[attr-defined]
    table = runs_table(os.environ["TASKFUTURE_TEST_RUNS_TABLE"])
    attempt = current_context().attempt
    with engine.connect() as connection:
        connection.execute(table.insert().values(task_key=key, attempt=attempt, pid=os.getpid()))


@tasks.task("record_run")
def record_run(key: int) -> int:
    _record_run(key)
    return key


@tasks.task("record_then_sleep")
def record_then_sleep(key: int, seconds: float) -> int:
    """Record the run, then sleep ``seconds`` on the first attempt only; return the attempt."""
    _record_run(key)
    attempt = current_context().attempt
    if attempt == 1:
        time.sleep(seconds)
    return attempt
