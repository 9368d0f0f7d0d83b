"""The prose of BENCHMARKS.md that does not come from the numbers, and the profile section."""

from __future__ import annotations

import json
import pathlib
from typing import Any

MEASUREMENT_NOTES = """\
## What each figure measures

Every library runs `add(x, y)` with its own client API and its own worker process,
started the library's usual way (`taskfuture worker`, `celery worker`, `rq worker-pool`,
`dramatiq`, `huey_consumer`, `arq`, `procrastinate worker`). Each round starts from an
empty queue.

- **submit**: one client, no worker running, `add(1, 2)` submitted one at a time for up
  to {submit_max} tasks or {submit_s:g} s; tasks/s and the P99 of one submit call.
- **bulk submit**: the library's batch call where it has one, batches of {bulk_batch},
  up to {bulk_max} tasks or {bulk_s:g} s. Celery's `group`, Dramatiq's `group` and Huey's
  `Task.map` send one message per task, so they are listed as no bulk API.
- **status**: the library's status call on one queued task and, later, on one finished
  task, up to {status_max} calls or {status_s:g} s each; P50 and P99 of one call. Every
  call reads the server, never a cached state.
- **round trip**: {round_trips} sequential `submit` → wait for the result, after the worker
  answered 6 warm-up tasks; P50 and P99.
- **drain**: the worker is stopped with SIGSTOP, {drain_tasks} tasks are queued (in bulk
  where the library can), the worker is continued with SIGCONT, and the clock runs until
  the caller holds every result. So it counts the worker's throughput and the caller's
  result collection, not the worker's start-up.
- **memory**: a fresh caller process submits {memory_handles} tasks (in bulk where the
  library can) with no worker running and keeps every handle; the figure is the growth
  of its peak RSS (`VmHWM`) over the RSS before the first submit, read 2 s after the
  last submit. Two memory clients run at a time to fit the time budget, since RSS does
  not depend on speed.
"""

PEER_NOTES = """\
## Where the peers lose time

- **Celery, Redis results**: besides the broker `LPUSH`, every submit sends a
  `SUBSCRIBE` for the task's result channel on the caller's pub/sub connection, and
  the caller keeps that subscription while it holds the result. The result arrives by
  pub/sub. The prefork pool hands each task from the main process
  to a child over a pipe and back, so the round trip pays two extra process hops.
- **Celery, PostgreSQL results**: outside a forked worker, Celery's database backend
  builds its SQLAlchemy engine with `NullPool`, so every status read and every result
  poll in the caller opens a new PostgreSQL connection. That makes its status calls
  and its result collection slow, far more than the 10 ms poll interval.
- **RQ**: the worker forks a work horse for every job and waits for it to exit. With 4
  worker processes on 2 cores that per-job fork is the likely cost behind its round trip
  and drain (RQ itself was not profiled here). Waiting for a result is a blocking
  `XREAD`, so the caller side is push.
- **Dramatiq**: an idle worker polls the queue with exponential backoff (5 ms doubling
  up to `worker_timeout`, 1 s by default), and the backoff resets only when a message
  arrives, so a sequential round trip waits out part of a backoff step. Dramatiq has no
  status API; the status figure is a non-blocking `get_result`.
- **Huey, Redis without notification**: the caller reads the result store once right away,
  then polls from 50 ms. The consumer picks the task up at once (`BRPOP`), so a round
  trip is either a few milliseconds, when the result is already stored at that first
  look, or about 50 ms; the plot shows both groups.
- **Huey, Redis with `notify_result=True`**: the caller blocks on `BLPOP` on a
  per-task key, so this is Huey's push path and its fastest round trip.
- **Huey, SQLite**: the consumer polls the task table (the harness sets the first delay
  to 10 ms, default 100 ms, growing 1.15x per empty poll) and the caller polls for the
  result from 50 ms, so the round trip is bound by the two poll loops.
- **arq**: both the worker and the caller poll, every 10 ms here (`poll_delay`, default
  500 ms); each worker poll starts at most `max_jobs` (4) jobs, which caps the drain.
  `Job.status()` makes several reads (result key, in-progress key, queue score).
- **Procrastinate**: every defer is its own transaction with a `NOTIFY`, so single
  submits pay PostgreSQL's commit (WAL flush) each. It keeps no results, so the caller
  polls the job status (every 10 ms here) and the drain pays one status query per task.
"""


#: Why a target is missed, by (engine, figure), from the profile below; shown beside a miss.
MISS_REASONS = {
    ("Redis", "submit"): "one EVALSHA round trip per submit; most of it is the wait for Redis "
    "and the next share is taskfuture's Python (record, id, JSON, waiter registration), see "
    "Profile",
    ("Redis", "bulk"): "not profiled apart: per task the caller still builds a record, an id, "
    "the JSON payload and a future, as in a single submit, and the script writes a hash and "
    "a stream entry per task",
    ("Redis", "rtt_p50"): "the wake-up needs a second read: the listener gets the id by "
    "pub/sub, then the waiter reads the record before resolving the future",
    ("Redis", "drain"): "the worker waits on Redis for most of its time (claim and outcome "
    "scripts), see Profile",
    ("PostgreSQL", "submit"): "each submit is a commit (WAL flush) and most of it is the wait "
    "for PostgreSQL; psycopg's Python and SQLAlchemy take most of the rest, and the floor table "
    "shows a bare INSERT",
    ("PostgreSQL", "bulk"): "not profiled apart: per task the caller still builds a record, an "
    "id, the JSON payload and a future, as in a single submit",
    ("PostgreSQL", "rtt_p50"): "three commits sit on the path (submit, claim, outcome) and the "
    "waiter reads the record again after the NOTIFY, see Profile",
    ("PostgreSQL", "drain"): "the worker waits on PostgreSQL for about half of its hot-path "
    "time and spends most of the rest in psycopg's Python and SQLAlchemy, see Profile",
    ("PostgreSQL", "submit_p99"): "commit latency on a shared disk: the tail follows the WAL "
    "flush, not taskfuture",
    ("PostgreSQL", "status_queued_p50"): "one SELECT through SQLAlchemy and psycopg",
    ("Redis", "status_queued_p50"): "one HGETALL",
    ("SQLite", "submit"): "SQLAlchemy Core's per-statement work is the largest share; the "
    "engine's own insert and commit cost a tenth of a submit",
    ("SQLite", "submit_p99"): "the write lock is shared with the worker and the waiter, so the "
    "tail is lock waits",
    ("SQLite", "rtt_p50"): "the local channel wakes the waiter, which then reads the record",
    ("MariaDB", "submit_p99"): "commit latency (InnoDB flushes its log on every commit)",
}


def profile_section(path: pathlib.Path) -> list[str]:
    """Render the profile of taskfuture's hot paths from ``path``, if a profile was run."""
    if not path.exists():
        return [
            "## Profile of taskfuture's hot paths",
            "",
            "No profile in this run: `make bench-profile` writes one.",
            "",
        ]
    data: dict[str, Any] = json.loads(path.read_text())
    lines = [
        "## Profile of taskfuture's hot paths",
        "",
        f"From `{data['command'].strip()}` on {data['started_at']} (UTC), just before the "
        "benchmark run. Single submits were profiled with cProfile, whose overhead inflates "
        "time spent in Python relative to time in C and on the network. The worker was "
        f"sampled with py-spy (including idle threads) while it drained {data['drain_tasks']} "
        "tasks, and only samples inside the hot steps (claim, dispatch, run, store outcome) "
        "are counted. The machine was loaded by other work at the time, so compare the "
        "shares, not the absolute times, with the benchmark tables.",
        "",
    ]
    lines += [
        "### Round trip, split by the timestamps the task record keeps",
        "",
        "Medians over the profiled round trips, in ms: the submit call; from the record's "
        "`created_at` (set just before the write) to the worker's claim (`started_at`); "
        "claim to completion (`finished_at`, set before the outcome is written; the task is "
        "a no-op); completion to the caller's future resolving (wake-up). The parts overlap "
        "a little, so they do not add up to the total exactly.",
        "",
        "| engine | submit | created → claimed | claimed → finished | finished → caller woken "
        "| total |",
        "|---|---|---|---|---|---|",
    ]
    for engine, entry in data["engines"].items():
        split = entry.get("round_trip_split")
        if not split or "error" in split:
            lines.append(f"| {engine} | failed: {split and split.get('error')} | | | | |")
            continue
        lines.append(
            f"| {engine} | {split['submit_ms']:.2f} | {split['queue_to_claim_ms']:.2f} | "
            f"{split['claim_to_finished_ms']:.2f} | {split['finished_to_woken_ms']:.2f} | "
            f"{split['total_ms']:.2f} |"
        )
    lines.append("")
    for title, key in (
        ("Submit (caller, one task per call)", "submit"),
        ("Worker while draining (claim, run, complete)", "worker"),
    ):
        lines += [f"### {title}: share of time by layer", ""]
        layers = sorted(
            {
                layer
                for entry in data["engines"].values()
                for layer in entry.get(key, {}).get("layers", {})
            }
        )
        if not layers:
            lines += ["Not measured.", ""]
            continue
        lines.append("| engine | " + " | ".join(layers) + " |")
        lines.append("|---|" + "---|" * len(layers))
        for engine, entry in data["engines"].items():
            shares = entry.get(key, {}).get("layers", {})
            lines.append(
                f"| {engine} | "
                + " | ".join(f"{shares.get(layer, 0.0) * 100:.0f} %" for layer in layers)
                + " |"
            )
        lines.append("")
        if key == "worker":
            phases = sorted(
                {
                    phase
                    for entry in data["engines"].values()
                    for phase in entry.get(key, {}).get("phases", {})
                }
            )
            lines += ["Worker samples by step:", ""]
            lines.append("| engine | " + " | ".join(phases) + " |")
            lines.append("|---|" + "---|" * len(phases))
            for engine, entry in data["engines"].items():
                shares = entry.get(key, {}).get("phases", {})
                lines.append(
                    f"| {engine} | "
                    + " | ".join(f"{shares.get(phase, 0.0) * 100:.0f} %" for phase in phases)
                    + " |"
                )
            lines.append("")
    lines += [
        "### Floor: the bare driver writing one row",
        "",
        "| engine | what | P50, ms | writes / s |",
        "|---|---|---|---|",
    ]
    for engine, entry in data["engines"].items():
        floor = entry.get("floor", {})
        if "error" in floor or not floor:
            lines.append(f"| {engine} | failed: {floor.get('error')} | | |")
            continue
        lines.append(
            f"| {engine} | {floor['what']} | {floor['p50_ms']:.3f} | {floor['writes_per_s']:.0f} |"
        )
    lines += ["", *PROFILE_FINDINGS.splitlines(), ""]
    return lines


PROFILE_FINDINGS = """\
### Findings

- **Redis.** A submit is one `EVALSHA`; in the caller most of its time is the wait for
  Redis to run the script, and the next share is taskfuture's own Python (building the
  record and its id, encoding the arguments, registering the future with the waiter).
  The worker spends most of its hot-path thread time waiting for the claim and outcome
  scripts, so its remaining time is in the server and the driver. The largest part of a
  round trip is the wake-up: the worker's outcome script publishes the task id, the
  listener thread hands it to the waiter thread, and the waiter reads the record again
  before it resolves the future. Publishing the terminal state (and a small result) in the
  message would save that read and its query (`backends/redis.py` and `future.py`).
- **PostgreSQL.** Each single submit is one write that PostgreSQL commits with a WAL
  flush; the floor table shows what a bare autocommit `INSERT` costs on this server, and
  a submit costs a small multiple of that. In the caller, waiting on the server is the
  largest share, then psycopg's Python (prepared-statement bookkeeping), then SQLAlchemy;
  taskfuture's own code is under a tenth. On the round trip, the claim is quick (the
  worker hears a `NOTIFY`), but the claim and the outcome are two more commits, and after
  the `NOTIFY` of the outcome the waiter reads the record before it resolves the future.
  The worker waits on PostgreSQL for about half of its hot-path time and spends most of
  the rest in psycopg's Python and SQLAlchemy. Suggested in `backends/sql.py` and
  `future.py`: carry the terminal state in the `NOTIFY` payload so the waiter needs no
  read.
- **MariaDB.** The round trip is two 100 ms poll loops (the idle worker's and the
  waiter's), since MariaDB has no push; the worker waits on the server for three quarters
  of its hot-path time.
- **SQLite.** The engine's own insert and commit cost a few hundredths of a millisecond;
  SQLAlchemy Core's per-statement work is the largest share of a submit, then the
  `sqlite3` calls, then taskfuture. In the worker, half the hot-path time is inside
  `sqlite3` calls, which includes waiting for the database's write lock shared by the
  submitting process, the waiter and the worker threads; the local wake-up channel lists
  its folder and writes to every listener for each outcome.
- **Memory.** A taskfuture future costs about 2.2 KB, against about 0.2 KB for arq's
  `Job` and an int for Procrastinate. More than half is the `threading.Condition` that
  `concurrent.futures.Future.__init__` creates for every future (its deque, its RLock and
  five bound methods, measured with tracemalloc). Futures only ever `notify_all`, so
  `future.py` could share a small pool of conditions between futures, and create the
  progress-callback list on first use.
- **Waiting queries.** With push (Redis, PostgreSQL, and the SQLite channel) the waiter
  reads the changed ids after every notification batch, with no rate limit, so a process
  holding 100 000 futures while a worker finishes them can make more than 10 status
  queries a second (see the table above: the rate follows how fast the worker finishes
  tasks); MariaDB, which only polls, stays under the limit. Taking the state from the
  notification payload, or coalescing notified ids for up to 100 ms after a read, would
  keep it under 10 (`future.py`, `Waiter._loop`).
- **Fixed here.** `models.new_task_id` formatted its UUID through `uuid.UUID`; formatting
  the hex digits directly cut it from about 7 µs to under 3 µs per submit. A fast path in
  `codec.encode_call` for plain JSON arguments was tried and dropped, because it made no
  measurable difference.
"""
