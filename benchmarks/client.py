"""Measure one case in the library's own interpreter and write the figures as JSON.

The harness starts ``python -m benchmarks.client CASE MODE SIZES_JSON OUT_JSON`` with
the case's interpreter. MODE ``round`` measures submit, bulk submit, status, round
trip and drain; ``memory`` measures the caller's RSS while it holds open handles;
``hold`` (taskfuture only) holds open futures while a worker finishes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.cases import Case, find_case
from benchmarks.settings import REPO, WORK_DIR, Sizes

#: Seconds one result may take in the round-trip and status figures.
RESULT_TIMEOUT_S = 30.0
#: Seconds the worker may take to return the result of its first task.
WORKER_READY_TIMEOUT_S = 60.0
#: Seconds the drain figure may take in all before it counts as failed.
DRAIN_TIMEOUT_S = 300.0
#: Round trips run before the measured ones, so connections and code paths are warm.
WARMUP_ROUND_TRIPS = 5


def rss_kib() -> tuple[int, int]:
    """Return (current RSS, peak RSS) of this process in KiB, from /proc/self/status."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, amount, _unit = line.split()
                values[key] = int(amount)
    return values["VmRSS:"], values["VmHWM:"]


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux 4.0+), so the next peak starts here."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (0 < fraction <= 1)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


class Ops:
    """The adapter's methods as coroutines, whether the library is sync or async."""

    def __init__(self, adapter: Any) -> None:
        self.adapter = adapter
        for name in (
            "open",
            "close",
            "reset",
            "submit",
            "submit_many",
            "status",
            "result",
            "wait_finished",
        ):
            method = getattr(adapter, name, None)
            if method is None:
                continue
            setattr(self, name, _as_coroutine(method))

    submit: Callable[[], Awaitable[Any]]
    submit_many: Callable[[int], Awaitable[list[Any]]]
    status: Callable[[Any], Awaitable[Any]]
    result: Callable[[Any, float], Awaitable[Any]]
    wait_finished: Callable[[Any, float], Awaitable[Any]]
    open: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    reset: Callable[[], Awaitable[None]]


def _as_coroutine(method: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
    if inspect.iscoroutinefunction(method):
        return method

    async def call(*args: Any) -> Any:
        return method(*args)

    return call


class WorkerProcess:
    """The library's worker as a subprocess in its own process group."""

    def __init__(self, case: Case, argv: list[str], env: dict[str, str]) -> None:
        WORK_DIR.mkdir(parents=True, exist_ok=True)
        self.log_path = WORK_DIR / f"worker-{case.name}.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)

    def pause(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_group(signal.SIGCONT)

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker exited with status {self.process.returncode}; "
                f"last log lines: {self.log_tail()}"
            )

    def log_tail(self) -> str:
        self._log.flush()
        lines = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
        return " | ".join(lines)

    def stop(self) -> None:
        self.resume()
        self.signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)
        # Children that outlived the leader (prefork pools, worker pools) go too.
        self.signal_group(signal.SIGKILL)
        self._log.close()


async def run_bounded(
    operation: Callable[[], Awaitable[Any]], max_count: int, max_s: float
) -> tuple[list[float], float]:
    """Run ``operation`` up to ``max_count`` times or ``max_s`` seconds.

    Returns each call's latency in seconds and the total elapsed time.
    """
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    deadline = start + max_s
    while len(latencies) < max_count:
        before = clock()
        await operation()
        after = clock()
        latencies.append(after - before)
        if after >= deadline:
            break
    return latencies, clock() - start


def summarize(latencies: list[float]) -> dict[str, Any]:
    return {
        "count": len(latencies),
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def measure_submit(ops: Ops, sizes: Sizes) -> dict[str, Any]:
    handles: list[Any] = []

    async def submit_one() -> None:
        handles.append(await ops.submit())

    latencies, elapsed = await run_bounded(submit_one, sizes.submit_max, sizes.submit_s)
    return {"tasks_per_s": len(latencies) / elapsed, **summarize(latencies)}


async def measure_bulk(ops: Ops, sizes: Sizes) -> dict[str, Any]:
    handles: list[Any] = []

    async def submit_batch() -> None:
        handles.extend(await ops.submit_many(sizes.bulk_batch))

    batches = max(1, sizes.bulk_max // sizes.bulk_batch)
    _, elapsed = await run_bounded(submit_batch, batches, sizes.bulk_s)
    return {
        "tasks_per_s": len(handles) / elapsed,
        "batch": sizes.bulk_batch,
        "tasks": len(handles),
    }


async def measure_status(ops: Ops, handle: Any, sizes: Sizes) -> dict[str, Any]:
    observed: list[Any] = []

    async def query() -> None:
        observed.append(await ops.status(handle))

    latencies, _ = await run_bounded(query, sizes.status_max, sizes.status_s)
    return {**summarize(latencies), "observed": str(observed[-1])}


async def measure_round_trips(ops: Ops, sizes: Sizes) -> dict[str, Any]:
    values = []

    async def round_trip() -> None:
        handle = await ops.submit()
        values.append(await ops.result(handle, RESULT_TIMEOUT_S))

    latencies, _ = await run_bounded(round_trip, sizes.round_trips, 120.0)
    if any(value != 3 for value in values):
        raise RuntimeError(f"wrong result: expected 3 from add(1, 2), got {values[:5]}")
    return {**summarize(latencies), "latencies_ms": [value * 1000 for value in latencies]}


async def measure_drain(ops: Ops, worker: WorkerProcess, sizes: Sizes) -> dict[str, Any]:
    """Queue tasks while the worker is stopped (SIGSTOP), then time it draining them."""
    worker.pause()
    try:
        if getattr(ops.adapter, "bulk_api", None):
            handles = []
            while len(handles) < sizes.drain_tasks:
                count = min(sizes.bulk_batch, sizes.drain_tasks - len(handles))
                handles.extend(await ops.submit_many(count))
        else:
            handles = [await ops.submit() for _ in range(sizes.drain_tasks)]
    finally:
        worker.resume()
    start = time.perf_counter()
    deadline = start + DRAIN_TIMEOUT_S
    collect = getattr(ops.adapter, "results", None)
    if collect is not None:
        values = collect(handles, DRAIN_TIMEOUT_S)
        if inspect.isawaitable(values):
            values = await values
    else:
        values = []
        for handle in handles:
            remaining = max(0.001, deadline - time.perf_counter())
            values.append(await ops.result(handle, remaining))
    elapsed = time.perf_counter() - start
    wrong = sum(1 for value in values if value != 3)
    if wrong:
        raise RuntimeError(f"{wrong} of {len(values)} drained tasks returned a wrong result")
    return {"tasks_per_s": len(handles) / elapsed, "tasks": len(handles), "seconds": elapsed}


async def start_worker(ops: Ops, case: Case) -> WorkerProcess:
    argv, env = ops.adapter.worker_command()
    worker = WorkerProcess(case, argv, env)
    try:
        handle = await ops.submit()
        started = time.perf_counter()
        while True:
            worker.check_alive()
            try:
                value = await ops.result(handle, 2.0)
            except Exception:
                if time.perf_counter() - started > WORKER_READY_TIMEOUT_S:
                    raise
                continue
            if value != 3:
                raise RuntimeError(f"wrong result: expected 3 from add(1, 2), got {value!r}")
            break
        for _ in range(WARMUP_ROUND_TRIPS):
            await ops.result(await ops.submit(), RESULT_TIMEOUT_S)
    except BaseException:
        worker.stop()
        raise
    return worker


async def attempt(figures: dict[str, Any], name: str, measure: Awaitable[Any]) -> None:
    """Store the figure, or its error, so one failing figure does not end the case."""
    try:
        figures[name] = await measure
    except Exception as exc:
        figures[name] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc()


async def run_round(ops: Ops, case: Case, sizes: Sizes) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    await ops.reset()
    await attempt(figures, "submit", measure_submit(ops, sizes))
    gc.collect()
    if getattr(ops.adapter, "bulk_api", None):
        await ops.reset()
        await attempt(figures, "bulk_submit", measure_bulk(ops, sizes))
        gc.collect()
    await ops.reset()
    queued = await ops.submit()
    await attempt(figures, "status_queued", measure_status(ops, queued, sizes))
    del queued
    await ops.reset()
    worker = await start_worker(ops, case)
    try:
        await attempt(figures, "round_trip", measure_round_trips(ops, sizes))
        await attempt(figures, "drain", measure_drain(ops, worker, sizes))
        gc.collect()
        finished = await ops.submit()
        await ops.wait_finished(finished, RESULT_TIMEOUT_S)
        await attempt(figures, "status_finished", measure_status(ops, finished, sizes))
        worker.check_alive()
    finally:
        worker.stop()
        await ops.reset()
    return figures


async def run_memory(ops: Ops, sizes: Sizes) -> dict[str, Any]:
    """Peak RSS growth of this process while it submits and holds open handles."""
    await ops.reset()
    await ops.submit()
    gc.collect()
    baseline, _ = rss_kib()
    reset_peak_rss()
    started = time.perf_counter()
    handles: list[Any] = []
    if getattr(ops.adapter, "bulk_api", None):
        while len(handles) < sizes.memory_handles:
            count = min(sizes.bulk_batch, sizes.memory_handles - len(handles))
            handles.extend(await ops.submit_many(count))
    else:
        for _ in range(sizes.memory_handles):
            handles.append(await ops.submit())
    submit_s = time.perf_counter() - started
    # Hold the handles a while so that background waiters take their share.
    await asyncio.sleep(2.0)
    gc.collect()
    current, peak = rss_kib()
    figures = {
        "handles": len(handles),
        "peak_delta_mib": (peak - baseline) / 1024,
        "held_delta_mib": (current - baseline) / 1024,
        "bytes_per_handle": (peak - baseline) * 1024 / len(handles),
        "submit_s": submit_s,
    }
    del handles
    await ops.reset()
    return figures


async def main_async(case: Case, mode: str, sizes: Sizes) -> dict[str, Any]:
    module = importlib.import_module(f"benchmarks.adapters.{case.adapter}")
    adapter = module.Adapter(case)
    ops = Ops(adapter)
    await ops.open()
    try:
        output: dict[str, Any] = {
            "case": case.name,
            "mode": mode,
            "waits": adapter.waits,
            "bulk_api": adapter.bulk_api,
            "status_api": adapter.status_api,
            "versions": adapter.versions(),
        }
        if mode == "round":
            output["figures"] = await run_round(ops, case, sizes)
        elif mode == "memory":
            output["figures"] = {"memory": await run_memory(ops, sizes)}
        elif mode == "hold":
            output["figures"] = {"hold": adapter.hold(sizes, start_worker_for_hold(case))}
        else:
            raise ValueError(f"unknown mode {mode!r}: expected round, memory or hold")
        return output
    finally:
        await ops.close()


def start_worker_for_hold(case: Case) -> Callable[[list[str], dict[str, str]], WorkerProcess]:
    def start(argv: list[str], env: dict[str, str]) -> WorkerProcess:
        return WorkerProcess(case, argv, env)

    return start


def exit_on_sigterm(signum: int, _frame: object) -> None:
    """Turn SIGTERM into SystemExit, so that ``finally`` blocks stop the worker."""
    raise SystemExit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    case_name, mode, sizes_json, out_path = sys.argv[1:5]
    case = find_case(case_name)
    sizes = Sizes(**json.loads(sizes_json))
    try:
        output = asyncio.run(main_async(case, mode, sizes))
    except Exception as exc:
        traceback.print_exc()
        output = {"case": case.name, "mode": mode, "error": f"{type(exc).__name__}: {exc}"}
    with open(out_path, "w") as out:
        json.dump(output, out)


if __name__ == "__main__":
    main()
