"""The benchmark task for taskfuture workers: ``taskfuture worker --app`` loads ``tasks``.

The DSN comes from TASKFUTURE_DSN and the table from TASKFUTURE_TABLE, set by the harness.
"""

from __future__ import annotations

from taskfuture import TaskService

tasks = TaskService.from_env()


@tasks.task("add")
def add(x: int, y: int) -> int:
    return x + y
