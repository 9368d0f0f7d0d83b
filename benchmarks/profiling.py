"""Profile taskfuture's hot paths on every engine and write ``results/profile-latest.json``.

- submit: cProfile over single submits in the caller, no worker running;
- round trip: the task record's ``created_at``, ``started_at`` and ``finished_at`` split
  each round trip into submit, record created -> claimed, claimed -> finished and
  finished -> caller woken;
- worker: py-spy samples the worker process (started under py-spy) while it drains
  queued tasks; samples are grouped by the innermost frame's layer and by worker step;
- floor: the bare driver's cost of one durable single-row write, the least a submit
  that commits one row can cost on that server.

Run it with ``python -m benchmarks.profiling`` (``make bench-profile``).
"""

from __future__ import annotations

import concurrent.futures
import cProfile
import datetime as dt
import json
import os
import pathlib
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from benchmarks.adapters.taskfuture_adapter import dsn_for
from benchmarks.run import drop_databases, prepare_servers
from benchmarks.settings import (
    BENCH_DB,
    CONCURRENCY,
    REPO,
    RESULTS_DIR,
    TASKFUTURE_TABLE,
    WORK_DIR,
    pg_dsn,
    redis_url,
)
from taskfuture import TaskService

ENGINES = {"SQLite": "sqlite", "PostgreSQL": "pg", "MariaDB": "mariadb", "Redis": "redis"}
SUBMITS = 2000
ROUND_TRIPS = 100
DRAIN_TASKS = 3000
PY_SPY_RATE = 250


# -- layers ---------------------------------------------------------------------------------

DRIVER_PATHS = ("/psycopg/", "/psycopg_binary/", "/pymysql/", "/redis/", "/hiredis/", "/sqlite3/")
DBAPI_CALLS = ("do_execute", "do_executemany", "do_commit", "do_rollback", "do_begin")
SERVER_WAITS = ("wait", "wait_c", "_read_from_socket", "read_from_socket", "readinto", "recv_into")


def layer_of(path: str, function: str) -> str:
    """Name the layer a frame belongs to, from its file and function."""
    if "/taskfuture/" in path:
        return "taskfuture"
    if "/sqlalchemy/" in path:
        if function in DBAPI_CALLS:
            return "DBAPI call (C driver or engine)"
        return "SQLAlchemy"
    if any(part in path for part in DRIVER_PATHS):
        if function in SERVER_WAITS:
            return "waiting on the server"
        return "driver (Python)"
    if path.endswith("socket.py") and function in SERVER_WAITS:
        return "waiting on the server"
    return "stdlib and other"


def builtin_layer(function: str) -> str:
    """Layer of a C function in cProfile output, such as ``<method 'recv_into' ...>``."""
    lowered = function.lower()
    if any(word in lowered for word in ("recv", "send", "poll", "select", "wait_c", "_psycopg")):
        return "waiting on the server"
    if "sqlite3" in lowered:
        return "DBAPI call (C driver or engine)"
    return "stdlib and other"


def cprofile_layers(profile: cProfile.Profile) -> dict[str, Any]:
    stats = pstats.Stats(profile)
    totals: Counter[str] = Counter()
    functions: list[tuple[float, str]] = []
    for (path, line, function), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        layer = builtin_layer(function) if path == "~" else layer_of(path, function)
        totals[layer] += tottime
        functions.append((tottime, f"{layer}: {function} ({pathlib.Path(path).name}:{line})"))
    whole = sum(totals.values()) or 1.0
    functions.sort(reverse=True)
    return {
        "layers": {layer: seconds / whole for layer, seconds in totals.items()},
        "top": [f"{seconds * 1000:.0f} ms {name}" for seconds, name in functions[:12]],
        "seconds": whole,
    }


# -- py-spy samples -----------------------------------------------------------------------

#: Worker steps on the hot path, matched by the method names in a sample's stack, in
#: this order because storing an outcome runs inside the task thread's ``_run_sync``.
HOT_STEPS = (
    ("store outcome", {"_store_outcome", "_store_batch", "transition_many", "transition"}),
    ("claim", {"claim"}),
    ("decode and dispatch", {"_dispatch", "_dispatch_safely"}),
    ("run task", {"_run_sync", "_run_async"}),
)


def parse_frame(frame: str) -> tuple[str, str]:
    """Split a py-spy frame ``Class.method (path:line)`` into (method, path)."""
    function, _, rest = frame.partition(" (")
    return function.rsplit(".", 1)[-1], rest.rsplit(":", 1)[0]


def py_spy_layers(raw: str) -> dict[str, Any]:
    """Share of thread time per hot worker step, and per layer within those steps.

    Samples include idle threads (py-spy ``--idle``) so that time spent waiting on the
    server counts; samples outside the hot steps (threads waiting for work, heartbeat,
    sweep, listeners) are counted apart and left out of the shares.
    """
    layers: Counter[str] = Counter()
    steps: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    outside = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(frame) for frame in stack.split(";")]
        names = {function for function, _ in frames}
        step = next((name for name, markers in HOT_STEPS if names & markers), None)
        if step is None or "_find_and_load" in names:
            outside += count
            continue
        function, path = frames[-1]
        layers[layer_of(path, function)] += count
        steps[step] += count
        leaves[f"{function} ({pathlib.Path(path).name})"] += count
    whole = sum(layers.values()) or 1
    return {
        "samples": whole,
        "samples_outside_hot_steps": outside,
        "layers": {layer: count / whole for layer, count in layers.items()},
        "phases": {step: count / whole for step, count in steps.items()},
        "top": [f"{count / whole * 100:.1f} % {name}" for name, count in leaves.most_common(12)],
    }


# -- measurements -------------------------------------------------------------------------


def worker_argv(dsn: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "taskfuture",
        "--dsn",
        dsn,
        "worker",
        "--app",
        "benchmarks.adapters.taskfuture_app:tasks",
        "-c",
        str(CONCURRENCY),
    ]


def worker_env(dsn: str) -> dict[str, str]:
    return {
        **os.environ,
        "TASKFUTURE_DSN": dsn,
        "TASKFUTURE_TABLE": TASKFUTURE_TABLE,
        "PYTHONPATH": str(REPO),
    }


def reset(service: TaskService, variant: str) -> None:
    if variant == "redis":
        import redis

        client = redis.Redis.from_url(service.settings.dsn)
        keys = list(client.scan_iter(match=f"*{TASKFUTURE_TABLE}*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        client.close()
        return
    storage: Any = service.storage
    with storage.engine.begin() as conn:
        conn.execute(storage.table.delete())


def profile_submit(service: TaskService, add: Any) -> dict[str, Any]:
    add.submit(1, 2)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    for _ in range(SUBMITS):
        add.submit(1, 2)
    profile.disable()
    elapsed = time.perf_counter() - started
    figures = cprofile_layers(profile)
    figures["tasks_per_s_under_cprofile"] = SUBMITS / elapsed
    return figures


def split_round_trips(service: TaskService, add: Any, dsn: str, log: Any) -> dict[str, Any]:
    worker = subprocess.Popen(
        worker_argv(dsn),
        cwd=REPO,
        env=worker_env(dsn),
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        for _ in range(6):
            add.submit(1, 2).result(60)
        parts: dict[str, list[float]] = {
            "submit_ms": [],
            "queue_to_claim_ms": [],
            "claim_to_finished_ms": [],
            "finished_to_woken_ms": [],
            "total_ms": [],
        }
        for _ in range(ROUND_TRIPS):
            before = time.time()
            future = add.submit(1, 2)
            submitted = time.time()
            future.result(30)
            woken = time.time()
            record = service.storage.get(future.task_id)
            assert record is not None and record.started_at and record.finished_at
            parts["submit_ms"].append((submitted - before) * 1000)
            parts["queue_to_claim_ms"].append((record.started_at - record.created_at) * 1000)
            parts["claim_to_finished_ms"].append((record.finished_at - record.started_at) * 1000)
            parts["finished_to_woken_ms"].append((woken - record.finished_at) * 1000)
            parts["total_ms"].append((woken - before) * 1000)
        return {name: statistics.median(values) for name, values in parts.items()}
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)


def profile_worker(service: TaskService, dsn: str, log: Any) -> dict[str, Any]:
    py_spy = shutil.which("py-spy", path=str(pathlib.Path(sys.executable).parent))
    if py_spy is None:
        return {"error": "py-spy is not installed in this environment"}
    futures = []
    while len(futures) < DRAIN_TASKS:
        futures.extend(service.submit_many("add", [(1, 2)] * 1000))
    out = WORK_DIR / "py-spy-worker.txt"
    out.unlink(missing_ok=True)
    command = [py_spy, "record", "--idle", "--full-filenames", "--format", "raw"]
    command += ["--rate", str(PY_SPY_RATE)]
    command += ["-o", str(out), "--", *worker_argv(dsn)]
    recorder = subprocess.Popen(
        command, cwd=REPO, env=worker_env(dsn), stdout=log, stderr=log, start_new_session=True
    )
    started = time.perf_counter()
    try:
        _, not_done = concurrent.futures.wait(futures, timeout=300)
        elapsed = time.perf_counter() - started
    finally:
        # Stop the worker (py-spy's child) so that py-spy writes its samples and exits.
        children = pathlib.Path(f"/proc/{recorder.pid}/task/{recorder.pid}/children")
        for pid in children.read_text().split() if children.exists() else []:
            os.kill(int(pid), signal.SIGTERM)
        try:
            recorder.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(recorder.pid, signal.SIGKILL)
            recorder.wait()
    if not out.exists():
        return {"error": "py-spy wrote no samples; see the profile log"}
    figures = py_spy_layers(out.read_text())
    figures["tasks_per_s_including_start"] = (DRAIN_TASKS - len(not_done)) / elapsed
    return figures


def measure_floor(variant: str) -> dict[str, Any]:
    """Time the bare driver writing and committing one small row per call, 500 times."""
    latencies = []
    if variant == "pg":
        import psycopg

        with psycopg.connect(pg_dsn(BENCH_DB), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS floor_probe (id text PRIMARY KEY, body text)")
            for index in range(500):
                before = time.perf_counter()
                conn.execute("INSERT INTO floor_probe VALUES (%s, %s)", (str(index), "{}"))
                latencies.append(time.perf_counter() - before)
            conn.execute("DROP TABLE floor_probe")
        what = "psycopg INSERT with autocommit"
    elif variant == "mariadb":
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root", database=BENCH_DB, autocommit=True)
        with conn.cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS floor_probe (id varchar(36) PRIMARY KEY, body text)"
            )
            for index in range(500):
                before = time.perf_counter()
                cursor.execute("INSERT INTO floor_probe VALUES (%s, %s)", (str(index), "{}"))
                latencies.append(time.perf_counter() - before)
            cursor.execute("DROP TABLE floor_probe")
        conn.close()
        what = "PyMySQL INSERT with autocommit"
    elif variant == "sqlite":
        import sqlite3

        path = WORK_DIR / "floor-probe.db"
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS floor_probe (id text PRIMARY KEY, body text)")
        for index in range(500):
            before = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor_probe VALUES (?, ?)", (str(index), "{}"))
            conn.execute("COMMIT")
            latencies.append(time.perf_counter() - before)
        conn.close()
        for leftover in WORK_DIR.glob("floor-probe.db*"):
            leftover.unlink()
        what = "sqlite3 BEGIN IMMEDIATE, INSERT, COMMIT (WAL, synchronous=NORMAL)"
    else:
        import redis

        client = redis.Redis.from_url(redis_url("taskfuture"))
        for index in range(500):
            before = time.perf_counter()
            client.hset(f"floor_probe:{index}", mapping={"status": "PENDING"})
            latencies.append(time.perf_counter() - before)
        client.delete(*[f"floor_probe:{index}" for index in range(500)])
        client.close()
        what = "redis-py HSET, one round trip"
    median = statistics.median(latencies)
    return {"what": what, "p50_ms": median * 1000, "writes_per_s": 1 / median}


def profile_engine(engine: str, variant: str, log: Any) -> dict[str, Any]:
    dsn = dsn_for(variant)
    entry: dict[str, Any] = {}
    try:
        entry["floor"] = measure_floor(variant)
    except Exception as exc:
        entry["floor"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        service = TaskService(dsn, table=TASKFUTURE_TABLE)
        add = service.task("add")(lambda x, y: x + y)
        service.create_schema()
    except Exception as exc:
        return {**entry, "error": f"{type(exc).__name__}: {exc}"}
    try:
        for name, step in (
            ("submit", lambda: profile_submit(service, add)),
            ("round_trip_split", lambda: split_round_trips(service, add, dsn, log)),
            ("worker", lambda: profile_worker(service, dsn, log)),
        ):
            reset(service, variant)
            try:
                entry[name] = step()
            except Exception as exc:
                entry[name] = {"error": f"{type(exc).__name__}: {exc}"}
        reset(service, variant)
    finally:
        service.close()
    return entry


def main() -> None:
    started_at = dt.datetime.now(dt.UTC)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    servers = prepare_servers()
    engines: dict[str, Any] = {}
    only = sys.argv[1:]
    try:
        with open(WORK_DIR / "profile.log", "ab") as log:
            for engine, variant in ENGINES.items():
                if only and engine not in only:
                    continue
                print(f"profiling taskfuture on {engine}", flush=True)
                engines[engine] = profile_engine(engine, variant, log)
    finally:
        drop_databases()
    data = {
        "command": "python -m benchmarks.profiling " + " ".join(only),
        "started_at": started_at.isoformat(timespec="seconds"),
        "servers": servers,
        "drain_tasks": DRAIN_TASKS,
        "engines": engines,
    }
    path = RESULTS_DIR / "profile-latest.json"
    path.write_text(json.dumps(data, indent=1))
    print(path)


if __name__ == "__main__":
    main()
