"""Run the benchmark: every case, interleaved over rounds, then memory, then the report.

``python -m benchmarks.run --full`` is ``make bench`` (sized for 30 minutes on 2 cores,
longer when other work loads the machine) and ``--quick`` is ``make bench-quick``
(sized for 5 minutes: smaller sizes, one round).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any

from benchmarks import envs
from benchmarks.cases import CASES, Case
from benchmarks.settings import (
    BENCH_DB,
    FULL,
    PG_ADMIN_DB,
    QUICK,
    REDIS_DBS,
    REPO,
    RESULTS_DIR,
    WORK_DIR,
    Sizes,
    pg_dsn,
    redis_url,
)

logger = logging.getLogger("benchmarks")

#: Extra seconds a client process may take beyond its own bounds before it is killed.
CLIENT_TIMEOUT_S = {"round": 900, "memory": 900, "hold": 600}
#: Memory clients run at a time: RSS does not depend on speed, and 100 000 single
#: submits take minutes for the libraries without a bulk call.
MEMORY_PARALLEL = 2


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def code_state() -> dict[str, Any]:
    """Return the commit measured and the files under src/ that differ from it."""

    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        )
        return completed.stdout.rstrip()

    changed = [line[3:] for line in git("status", "--porcelain", "--", "src").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_src": changed}


def load_average() -> float:
    return os.getloadavg()[0]


def prepare_servers() -> dict[str, Any]:
    """Create the run's database on PostgreSQL and MariaDB; return server versions or errors."""
    servers: dict[str, Any] = {}
    # SQLite files and what sits beside them (WAL, shared memory, wake-up channel).
    for sqlite_path in WORK_DIR.glob("*.db*"):
        if sqlite_path.is_dir():
            shutil.rmtree(sqlite_path)
        else:
            sqlite_path.unlink()
    try:
        import psycopg

        with psycopg.connect(pg_dsn(PG_ADMIN_DB), autocommit=True) as conn:
            servers["PostgreSQL"] = conn.execute("SHOW server_version").fetchone()[0]
            # A fresh database each run: a table left by an older run may have an old schema.
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {BENCH_DB}")
    except Exception as exc:
        servers["PostgreSQL"] = f"unavailable: {exc}"
    try:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root", port=3306)
        with conn.cursor() as cursor:
            cursor.execute("SELECT VERSION()")
            servers["MariaDB"] = cursor.fetchone()[0]
            cursor.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
            cursor.execute(f"CREATE DATABASE {BENCH_DB}")
        conn.close()
    except Exception as exc:
        servers["MariaDB"] = f"unavailable: {exc}"
    try:
        import redis

        client = redis.Redis.from_url(redis_url("taskfuture"))
        servers["Redis"] = client.info("server")["redis_version"]
        keyspace = client.info("keyspace")
        servers["redis_keys_before"] = {
            f"db{number}": keyspace.get(f"db{number}", {}).get("keys", 0)
            for number in sorted(set(REDIS_DBS.values()))
        }
        client.close()
    except Exception as exc:
        servers["Redis"] = f"unavailable: {exc}"
    return servers


def drop_databases() -> None:
    """Drop the run's databases; each case already deleted its own Redis keys."""
    try:
        import psycopg

        with psycopg.connect(pg_dsn(PG_ADMIN_DB), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)")
    except Exception as exc:
        logger.warning("Dropping PostgreSQL database %s failed: %s", BENCH_DB, exc)
    try:
        import pymysql

        conn = pymysql.connect(host="127.0.0.1", user="root", port=3306)
        with conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {BENCH_DB}")
        conn.close()
    except Exception as exc:
        logger.warning("Dropping MariaDB database %s failed: %s", BENCH_DB, exc)


def run_client(case: Case, mode: str, sizes: Sizes) -> dict[str, Any]:
    """Run one client process for ``case`` and return its JSON output, or the error."""
    started = time.monotonic()
    load_before = load_average()
    try:
        python = envs.interpreter(case.env)
    except Exception as exc:
        return {"case": case.name, "mode": mode, "error": f"environment failed: {exc}"}
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    out_path = WORK_DIR / f"client-{case.name}-{mode}.json"
    log_path = WORK_DIR / f"client-{case.name}-{mode}.log"
    out_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "BENCH_VARIANT": case.variant,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        str(python),
        "-m",
        "benchmarks.client",
        case.name,
        mode,
        json.dumps(dataclasses.asdict(sizes)),
        str(out_path),
    ]
    timeout = CLIENT_TIMEOUT_S[mode] + sizes.hold_s
    with open(log_path, "ab") as log:
        client = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            client.wait(timeout=timeout)
        except BaseException:
            # SIGTERM lets the client stop its worker before it exits.
            client.terminate()
            try:
                client.wait(timeout=30)
            except subprocess.TimeoutExpired:
                client.kill()
                client.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise
            return {"case": case.name, "mode": mode, "error": f"client timed out after {timeout} s"}
    if not out_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        return {
            "case": case.name,
            "mode": mode,
            "error": "client wrote no output: " + " | ".join(tail),
        }
    output: dict[str, Any] = json.loads(out_path.read_text())
    output["seconds"] = time.monotonic() - started
    output["load_before"] = load_before
    output["load_after"] = load_average()
    return output


def run_clients(cases: list[Case], mode: str, sizes: Sizes, parallel: int) -> list[dict[str, Any]]:
    """Run one client per case, ``parallel`` at a time; return their outputs in case order.

    Only figures that do not depend on speed run this way (memory, and the hold's memory
    and query rate), so that they fit the time budget of a full run.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(lambda case: run_client(case, mode, sizes), cases))


def log_outcome(output: dict[str, Any]) -> None:
    if "error" in output:
        logger.warning("  %s %s failed: %s", output["case"], output["mode"], output["error"])
        return
    parts = []
    for name, figure in output.get("figures", {}).items():
        if "error" in figure:
            parts.append(f"{name}=ERROR")
        elif "tasks_per_s" in figure:
            parts.append(f"{name}={figure['tasks_per_s']:.0f}/s")
        elif "p50_ms" in figure:
            parts.append(f"{name}={figure['p50_ms']:.2f}ms")
        elif "peak_delta_mib" in figure:
            parts.append(f"{name}={figure['peak_delta_mib']:.1f}MiB")
    logger.info(
        "  %s %s in %.0f s: %s", output["case"], output["mode"], output["seconds"], " ".join(parts)
    )


def rotated(cases: list[Case], offset: int) -> list[Case]:
    """Start each round at another case, so no library always runs first or last."""
    if not cases:
        return cases
    shift = offset % len(cases)
    return cases[shift:] + cases[:shift]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="full sizes and rounds (default)")
    size.add_argument("--quick", action="store_true", help="reduced sizes, one round")
    parser.add_argument("--only", nargs="*", default=None, help="case names to run")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of rounds")
    parser.add_argument(
        "--no-report", action="store_true", help="write results JSON only, no BENCHMARKS.md"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    mode = "quick" if args.quick else "full"
    sizes = QUICK if args.quick else FULL
    if args.rounds is not None:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    cases = [case for case in CASES if args.only is None or case.name in args.only]
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    # Recorded at the start: every client imports the working tree as it is when it starts.
    code = code_state()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)

    logger.info("Preparing peer environments and servers")
    env_errors: dict[str, str] = {}
    env_names = sorted({case.env for case in cases if case.env is not None})
    # pip spends most of its time downloading, so the environments build side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(env_names))) as pool:
        builds = {name: pool.submit(envs.ensure_env, name) for name in env_names}
    for name, build in builds.items():
        try:
            build.result()
        except Exception as exc:
            env_errors[name] = str(exc)
            logger.warning("Environment %s failed: %s", name, exc)
    servers = prepare_servers()
    logger.info("Servers: %s", servers)

    runs: dict[str, list[dict[str, Any]]] = {case.name: [] for case in cases}
    loads: list[float] = [load_average()]
    try:
        for round_number in range(sizes.rounds):
            logger.info("Round %d of %d", round_number + 1, sizes.rounds)
            for case in rotated(cases, round_number):
                output = run_client(case, "round", sizes)
                output["round"] = round_number
                runs[case.name].append(output)
                loads.append(load_average())
                log_outcome(output)
        for round_number in range(sizes.memory_rounds):
            logger.info(
                "Memory with %d open handles, round %d, %d clients at a time",
                sizes.memory_handles,
                round_number + 1,
                MEMORY_PARALLEL,
            )
            memory_cases = rotated(cases, round_number)
            for output in run_clients(memory_cases, "memory", sizes, MEMORY_PARALLEL):
                runs[output["case"]].append(output)
                log_outcome(output)
            loads.append(load_average())
        hold_cases = [case for case in cases if case.is_taskfuture]
        if sizes.hold_s > 0 and hold_cases:
            logger.info(
                "taskfuture holding %d futures for %.0f s, all engines at once",
                sizes.memory_handles,
                sizes.hold_s,
            )
            for output in run_clients(hold_cases, "hold", sizes, len(hold_cases)):
                runs[output["case"]].append(output)
                log_outcome(output)
            loads.append(load_average())
    finally:
        drop_databases()

    results = {
        "mode": mode,
        "command": " ".join(
            ["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)]
        ),
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": time.monotonic() - started,
        "sizes": dataclasses.asdict(sizes),
        "machine": machine_info(),
        "code": code,
        "servers": servers,
        "load": {"min": min(loads), "max": max(loads), "samples": loads},
        "env_errors": env_errors,
        "cases": {
            case.name: {
                "library": case.library,
                "engine": case.engine,
                "variant": case.variant,
                "runs": runs[case.name],
            }
            for case in cases
        },
    }
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"bench-{mode}-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    (RESULTS_DIR / f"latest-{mode}.json").write_text(json.dumps(results, indent=1))
    logger.info("Results written to %s after %.0f s", path, results["seconds"])
    if not args.no_report:
        from benchmarks import report

        report.write_report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
