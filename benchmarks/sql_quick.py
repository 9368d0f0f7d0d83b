"""Quick figures for the SQL backend on PostgreSQL and MariaDB.

Measures, per engine, in this one process:

* submit/s: single ``submit`` calls from one client, no worker running;
* submit_many/s: ``submit_many`` in batches of 1 000;
* status P50: ``service.status(id)`` of one task;
* round trip P50: ``submit(...).result()`` of a no-op with one in-process worker;
* drain/s: one worker (concurrency 4) emptying a queue of queued no-ops.

Each figure is the median of ``--runs`` runs. Every run uses a table of its
own and drops it afterwards. ``--profile`` prints where submit and drain
spend their time. ``--explain-rows N`` instead fills a table with N rows,
nearly all finished, and prints the plan and duration of the claim, lease
and expiry queries. Run it with::

    .venv/bin/python benchmarks/sql_quick.py [--engines postgresql,mariadb]

DSNs come from ``TASKFUTURE_BENCH_POSTGRESQL_DSN`` and
``TASKFUTURE_BENCH_MARIADB_DSN``, by default the local test servers.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from taskfuture import TaskService, Worker

DSNS = {
    "postgresql": os.environ.get(
        "TASKFUTURE_BENCH_POSTGRESQL_DSN", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mariadb": os.environ.get("TASKFUTURE_BENCH_MARIADB_DSN", "mysql://root@127.0.0.1:3306/test"),
}

#: Targets on PostgreSQL: the figure, and whether it is a minimum or a maximum.
TARGETS = {
    "submit/s": (2000.0, "min"),
    "submit_many/s": (20000.0, "min"),
    "status P50 ms": (0.5, "max"),
    "round trip P50 ms": (3.0, "max"),
    "drain/s": (800.0, "min"),
}


def noop() -> None:
    return None


def new_service(engine: str, **options: Any) -> TaskService:
    options.setdefault("poll_interval_s", 0.1)
    service = TaskService(DSNS[engine], table=f"tf_bench_{uuid.uuid4().hex[:10]}", **options)
    service.create_schema()
    service.task("noop")(noop)
    return service


def drop(service: TaskService) -> None:
    # Closing first stops the waiter, which would otherwise read the dropped table.
    service.close()
    service.storage.drop()  # type: ignore[attr-defined]
    service.storage.close()


def measure_submit(service: TaskService, count: int) -> float:
    task = service.tasks["noop"]
    for _ in range(50):
        task.submit()
    started = time.perf_counter()
    for _ in range(count):
        task.submit()
    return count / (time.perf_counter() - started)


def measure_submit_many(service: TaskService, count: int, batch: int = 1000) -> float:
    calls: list[tuple[Any, ...]] = [() for _ in range(batch)]
    service.submit_many("noop", calls)
    started = time.perf_counter()
    for _ in range(count // batch):
        service.submit_many("noop", calls)
    return (count // batch) * batch / (time.perf_counter() - started)


def measure_status(service: TaskService, count: int) -> float:
    task_id = service.tasks["noop"].submit().task_id
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        service.status(task_id)
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies) * 1000


def measure_round_trip(service: TaskService, count: int) -> float:
    worker = Worker(service, concurrency=1)
    worker.start()
    try:
        task = service.tasks["noop"]
        for _ in range(20):
            task.submit().result(timeout=10)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            task.submit().result(timeout=10)
            latencies.append(time.perf_counter() - started)
    finally:
        worker.stop(timeout_s=2)
    return statistics.median(latencies) * 1000


def measure_drain(service: TaskService, count: int) -> float:
    # A second service queues the tasks and closes, so that no waiter of the
    # draining process reads them while the worker runs.
    producer = TaskService(service.settings.dsn, settings=service.settings)
    producer.task("noop")(noop)
    calls: list[tuple[Any, ...]] = [() for _ in range(1000)]
    for _ in range(count // 1000):
        producer.submit_many("noop", calls)
    producer.close()
    table = service.storage.table  # type: ignore[attr-defined]
    engine: sa.Engine = service.storage.engine  # type: ignore[attr-defined]
    pending = sa.select(sa.func.count()).where(table.c.status.in_(["PENDING", "RUNNING"]))
    worker = Worker(service, concurrency=4)
    started = time.perf_counter()
    worker.start()
    try:
        while True:
            with engine.connect() as connection:
                if connection.execute(pending).scalar() == 0:
                    break
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop(timeout_s=2)
    return (count // 1000) * 1000 / elapsed


def run_once(engine: str, args: argparse.Namespace) -> dict[str, float]:
    figures: dict[str, float] = {}
    steps: list[tuple[str, Callable[[TaskService], float]]] = [
        ("submit/s", lambda service: measure_submit(service, args.submits)),
        ("submit_many/s", lambda service: measure_submit_many(service, args.bulk)),
        ("status P50 ms", lambda service: measure_status(service, args.statuses)),
        ("round trip P50 ms", lambda service: measure_round_trip(service, args.round_trips)),
        ("drain/s", lambda service: measure_drain(service, args.drain)),
    ]
    for name, step in steps:
        service = new_service(engine)
        try:
            figures[name] = step(service)
        finally:
            drop(service)
    return figures


def profile(engine: str, args: argparse.Namespace) -> None:
    for name, step in (
        ("submit", lambda service: measure_submit(service, args.submits)),
        ("drain", lambda service: measure_drain(service, args.drain)),
    ):
        service = new_service(engine)
        profiler = cProfile.Profile()
        try:
            profiler.enable()
            step(service)
            profiler.disable()
        finally:
            drop(service)
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
        print(f"\n## profile of {name} on {engine} (tottime, this thread)\n{out.getvalue()}")


def fill_statement(engine: str, table: str, rows: int, now: float) -> str:
    """Return an INSERT ... SELECT of ``rows`` tasks; per 2 000, one is due and one running."""
    status = (
        "CASE WHEN mod(n, 2000) = 0 THEN 'PENDING' WHEN mod(n, 2000) = 1 THEN 'RUNNING' "
        "ELSE 'COMPLETED' END"
    )
    expires = f"CASE WHEN mod(n, 2000) > 1 THEN {now} + mod(n, 86400) ELSE NULL END"
    lease = f"CASE WHEN mod(n, 2000) = 1 THEN {now} + 30 ELSE NULL END"
    if engine == "postgresql":
        source = f"generate_series(1, {rows}) AS n"
        task_id = "md5(n::text)"
    else:
        source = f"(SELECT seq AS n FROM seq_1_to_{rows}) AS numbers"
        task_id = "md5(n)"
    return (
        f"INSERT INTO {table} (id, name, queue, status, payload, version, attempts, "
        "max_attempts, created_at, available_at, expires_at, lease_until) "
        f"SELECT {task_id}, 'noop', 'default', {status}, '{{}}', 1, 0, 1, {now}, {now} + n, "
        f"{expires}, {lease} FROM {source}"
    )


def hot_queries(table: str, rows: int, now: float) -> dict[str, str]:
    """Return the claim, lease and expiry queries the way the backend runs them."""
    return {
        "claim": (
            f"SELECT id FROM {table} WHERE status = 'PENDING' AND queue = 'default' "
            f"AND available_at <= {now + rows} ORDER BY available_at, id LIMIT 4"
        ),
        "expired leases": (
            f"SELECT id FROM {table} WHERE status = 'RUNNING' AND lease_until < {now + 60} "
            "LIMIT 500"
        ),
        "expiry sweep": f"SELECT id FROM {table} WHERE expires_at <= {now + 600} LIMIT 1000",
    }


def explain(engine: str, rows: int) -> None:
    """Fill a table with ``rows`` tasks, nearly all finished, and show the hot query plans."""
    service = new_service(engine)
    table: str = service.storage.table.name  # type: ignore[attr-defined]
    sql_engine: sa.Engine = service.storage.engine  # type: ignore[attr-defined]
    now = time.time()
    try:
        started = time.perf_counter()
        with sql_engine.connect() as connection:
            connection.exec_driver_sql(fill_statement(engine, table, rows, now))
            analyze = "ANALYZE" if engine == "postgresql" else "ANALYZE TABLE"
            connection.exec_driver_sql(f"{analyze} {table}")
        print(f"## {engine}: {rows} rows filled in {time.perf_counter() - started:.1f} s")

        for name, query in hot_queries(table, rows, now).items():
            with sql_engine.connect() as connection:
                plan = connection.exec_driver_sql(f"EXPLAIN {query}").all()
                timings = []
                for _ in range(20):
                    started = time.perf_counter()
                    connection.exec_driver_sql(query).all()
                    timings.append(time.perf_counter() - started)
            print(f"\n{name}: P50 {statistics.median(timings) * 1000:.2f} ms")
            for line in plan:
                print("   ", " | ".join(str(value) for value in line))
        print()
    finally:
        drop(service)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engines", default="postgresql,mariadb")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the median is shown")
    parser.add_argument("--submits", type=int, default=2000)
    parser.add_argument("--bulk", type=int, default=20000)
    parser.add_argument("--statuses", type=int, default=2000)
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--drain", type=int, default=10000)
    parser.add_argument("--profile", action="store_true", help="print profiles of submit and drain")
    parser.add_argument(
        "--explain-rows",
        type=int,
        default=0,
        help="fill a table with this many rows and print the hot query plans instead",
    )
    args = parser.parse_args()
    if args.explain_rows:
        for engine in args.engines.split(","):
            explain(engine, args.explain_rows)
        return 0

    print(f"# taskfuture SQL quick benchmark, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# median of {args.runs} runs\n")
    for engine in args.engines.split(","):
        runs = [run_once(engine, args) for _ in range(args.runs)]
        print(f"## {engine} ({DSNS[engine].split('@')[-1]})")
        for name in TARGETS:
            value = statistics.median(run[name] for run in runs)
            target, kind = TARGETS[name]
            met = value >= target if kind == "min" else value <= target
            mark = (
                ""
                if engine != "postgresql"
                else f"  target {target:g}: {'met' if met else 'MISSED'}"
            )
            print(f"{name:>20}: {value:10.2f}{mark}")
        print()
        if args.profile:
            profile(engine, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
