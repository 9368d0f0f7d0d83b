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
  last submit.
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
- **RQ**: the worker forks a work horse for every job, and the parent then waits for
  the child; on 2 cores with 4 worker processes that fork dominates both the round trip
  and the drain. Waiting for a result is a blocking `XREAD`, so the caller side is push.
- **Dramatiq**: an idle worker polls the queue with exponential backoff (5 ms doubling
  up to `worker_timeout`, 1 s by default), and the backoff resets only when a message
  arrives, so sequential round trips usually wait one backoff step. Dramatiq has no
  status API; the status figure is a non-blocking `get_result`.
- **Huey, Redis without notification**: the caller polls for the result starting at
  50 ms, so no round trip is shorter than about 50 ms even though the consumer picks the
  task up at once (`BRPOP`).
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
        f"From `{data['command']}` on {data['started_at']} (UTC). "
        "Submit and the caller's waiter thread were profiled with cProfile (its overhead "
        "inflates time spent in Python relative to time spent in C and on the network); "
        "the worker was sampled with py-spy while it drained "
        f"{data['drain_tasks']} tasks, idle threads left out.",
        "",
    ]
    lines += [
        "### Round trip, split by the timestamps the task record keeps",
        "",
        "Medians over the profiled round trips, in ms: submit call; from submit's return "
        "to the worker's claim (`started_at`); claim to completion (`finished_at`, the task "
        "itself is a no-op); completion to the caller's future resolving (wake-up).",
        "",
        "| engine | submit | queue → claim | claim → finished | finished → caller woken | total |",
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
    notes = data.get("findings")
    if notes:
        lines += ["### Findings", "", *notes, ""]
    return lines
