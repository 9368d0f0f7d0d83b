"""Servers, names and sizes shared by the harness and by every client process.

Every server is on loopback. Each library gets its own Redis database number
and only its own keys are deleted; PostgreSQL and MariaDB work happens in a
database the harness creates and drops (``taskfuture_bench``).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "benchmarks"
ENVS_DIR = BENCH_DIR / ".envs"
RESULTS_DIR = BENCH_DIR / "results"
PLOTS_DIR = BENCH_DIR / "plots"
#: SQLite files, worker logs and other scratch files of one run.
WORK_DIR = RESULTS_DIR / "work"

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))
#: Redis database per library, away from database 0 that the test suites use.
REDIS_DBS = {"taskfuture": 9, "celery": 10, "rq": 11, "dramatiq": 12, "huey": 13, "arq": 14}

PG_HOST = os.environ.get("BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("BENCH_PG_USER", "postgres")
#: Existing database the harness connects to in order to create its own.
PG_ADMIN_DB = os.environ.get("BENCH_PG_ADMIN_DB", "test")
MARIADB_HOST = os.environ.get("BENCH_MARIADB_HOST", "127.0.0.1")
MARIADB_PORT = int(os.environ.get("BENCH_MARIADB_PORT", "3306"))
MARIADB_USER = os.environ.get("BENCH_MARIADB_USER", "root")
#: Database created for the run on PostgreSQL and MariaDB, dropped at the end.
BENCH_DB = "taskfuture_bench"
#: taskfuture table name, also its Redis key prefix, so no key of the test suites is touched.
TASKFUTURE_TABLE = "bench_tasks"

#: Worker concurrency for every library: threads, processes or coroutines, as each one runs.
CONCURRENCY = 4
#: Poll interval the harness sets wherever a peer waits by polling and lets the caller choose.
PEER_POLL_S = 0.01


def redis_url(library: str) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DBS[library]}"


def pg_dsn(database: str = BENCH_DB) -> str:
    return f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


def mariadb_dsn(database: str = BENCH_DB) -> str:
    return f"mysql+pymysql://{MARIADB_USER}@{MARIADB_HOST}:{MARIADB_PORT}/{database}"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each figure does in one run mode."""

    #: Independent rounds; every figure is the median over rounds.
    rounds: int
    #: Single submits: at most this many, and for at most this many seconds.
    submit_max: int
    submit_s: float
    #: Bulk submits: batch size, and the same count and time bounds as above.
    bulk_batch: int
    bulk_max: int
    bulk_s: float
    #: Status queries per task state: count and time bounds.
    status_max: int
    status_s: float
    #: Sequential submit -> result round trips.
    round_trips: int
    #: Tasks queued before one worker drains them.
    drain_tasks: int
    #: Open handles held by one caller for the memory figure.
    memory_handles: int
    #: Rounds of the memory figure (each a fresh process).
    memory_rounds: int
    #: taskfuture only: seconds one process holds ``memory_handles`` futures while
    #: a worker finishes them; 0 skips the figure.
    hold_s: float


FULL = Sizes(
    rounds=3,
    submit_max=5000,
    submit_s=1.0,
    bulk_batch=1000,
    bulk_max=40_000,
    bulk_s=1.0,
    status_max=2000,
    status_s=0.5,
    round_trips=200,
    drain_tasks=2000,
    memory_handles=100_000,
    memory_rounds=1,
    hold_s=60.0,
)

QUICK = Sizes(
    rounds=1,
    submit_max=1000,
    submit_s=0.5,
    bulk_batch=1000,
    bulk_max=5000,
    bulk_s=0.5,
    status_max=300,
    status_s=0.3,
    round_trips=100,
    drain_tasks=500,
    memory_handles=10_000,
    memory_rounds=1,
    hold_s=0.0,
)
