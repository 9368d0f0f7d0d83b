"""Which library runs on which engine, in which virtual environment."""

from __future__ import annotations

import dataclasses

#: Peer environment -> pip requirements, installed by package name from PyPI.
#: One environment per peer because their redis-py pins differ (arq 0.28 wants redis<6).
PEER_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "celery": ("celery[redis]", "SQLAlchemy", "psycopg[binary]"),
    "rq": ("rq",),
    "dramatiq": ("dramatiq[redis]",),
    "huey": ("huey", "redis"),
    "arq": ("arq",),
    "procrastinate": ("procrastinate", "psycopg[binary]"),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One library configured on one engine."""

    name: str
    library: str
    #: Engine that holds the tasks: SQLite, PostgreSQL, MariaDB or Redis.
    engine: str
    #: Key of PEER_REQUIREMENTS, or None for the project's own virtual environment.
    env: str | None
    #: Module under ``benchmarks.adapters`` that drives the library.
    adapter: str
    #: Variant the adapter reads from BENCH_VARIANT (storage or result backend).
    variant: str = ""

    @property
    def is_taskfuture(self) -> bool:
        return self.library == "taskfuture"


CASES: tuple[Case, ...] = (
    Case("taskfuture-sqlite", "taskfuture", "SQLite", None, "taskfuture_adapter", "sqlite"),
    Case("taskfuture-postgresql", "taskfuture", "PostgreSQL", None, "taskfuture_adapter", "pg"),
    Case("taskfuture-mariadb", "taskfuture", "MariaDB", None, "taskfuture_adapter", "mariadb"),
    Case("taskfuture-redis", "taskfuture", "Redis", None, "taskfuture_adapter", "redis"),
    Case("celery-redis", "Celery", "Redis", "celery", "celery_adapter", "redis"),
    Case("celery-postgresql", "Celery", "PostgreSQL", "celery", "celery_adapter", "db"),
    Case("rq", "RQ", "Redis", "rq", "rq_adapter"),
    Case("dramatiq", "Dramatiq", "Redis", "dramatiq", "dramatiq_adapter"),
    Case("huey-redis", "Huey", "Redis", "huey", "huey_adapter", "redis"),
    Case("huey-redis-notify", "Huey", "Redis", "huey", "huey_adapter", "redis-notify"),
    Case("huey-sqlite", "Huey", "SQLite", "huey", "huey_adapter", "sqlite"),
    Case("arq", "arq", "Redis", "arq", "arq_adapter"),
    Case("procrastinate", "Procrastinate", "PostgreSQL", "procrastinate", "procrastinate_adapter"),
)

ENGINES = ("Redis", "PostgreSQL", "SQLite", "MariaDB")


def find_case(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    known = ", ".join(case.name for case in CASES)
    raise KeyError(f"unknown case {name!r}; known cases: {known}")
