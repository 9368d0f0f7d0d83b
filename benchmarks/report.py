"""Turn a results JSON into BENCHMARKS.md and PNG plots.

A full run writes ``BENCHMARKS.md`` at the repository root and plots under
``benchmarks/plots/``; a quick run writes both under ``benchmarks/results/`` so that
the committed page always shows a full run. ``python -m benchmarks.report FILE``
renders an existing results file again.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.cases import CASES, ENGINES
from benchmarks.settings import PLOTS_DIR, REPO, RESULTS_DIR

HIGHER = "higher"
LOWER = "lower"


@dataclasses.dataclass(frozen=True)
class Figure:
    key: str
    label: str
    #: Figure name in the client output and the field read from it.
    source: str
    field: str
    better: str
    digits: int


FIGURES = (
    Figure("submit", "submit, tasks/s", "submit", "tasks_per_s", HIGHER, 0),
    Figure("submit_p99", "submit latency P99, ms", "submit", "p99_ms", LOWER, 2),
    Figure("bulk", "bulk submit, tasks/s", "bulk_submit", "tasks_per_s", HIGHER, 0),
    Figure(
        "status_queued_p50", "status of a queued task P50, ms", "status_queued", "p50_ms", LOWER, 3
    ),
    Figure(
        "status_queued_p99", "status of a queued task P99, ms", "status_queued", "p99_ms", LOWER, 3
    ),
    Figure(
        "status_finished_p50",
        "status of a finished task P50, ms",
        "status_finished",
        "p50_ms",
        LOWER,
        3,
    ),
    Figure(
        "status_finished_p99",
        "status of a finished task P99, ms",
        "status_finished",
        "p99_ms",
        LOWER,
        3,
    ),
    Figure("rtt_p50", "round trip P50, ms", "round_trip", "p50_ms", LOWER, 2),
    Figure("rtt_p99", "round trip P99, ms", "round_trip", "p99_ms", LOWER, 2),
    Figure("drain", "drain queued tasks, tasks/s", "drain", "tasks_per_s", HIGHER, 0),
    Figure(
        "memory", "caller RSS peak with open handles, MiB", "memory", "peak_delta_mib", LOWER, 1
    ),
)
FIGURE_BY_KEY = {figure.key: figure for figure in FIGURES}


# -- aggregation --------------------------------------------------------------------


def collect(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return, per case, the median of every figure and the errors seen."""
    table: dict[str, dict[str, Any]] = {}
    for name, case in results["cases"].items():
        values: dict[str, list[float]] = {}
        errors: dict[str, str] = {}
        latencies: list[float] = []
        holds = []
        for run in case["runs"]:
            if "error" in run:
                errors.setdefault("case", run["error"])
                continue
            for source, figure in run.get("figures", {}).items():
                if "error" in figure:
                    errors.setdefault(source, figure["error"])
                    continue
                if source == "round_trip":
                    latencies.extend(figure.get("latencies_ms", []))
                if source == "hold":
                    holds.append(figure)
                    continue
                for spec in FIGURES:
                    if spec.source == source and spec.field in figure:
                        values.setdefault(spec.key, []).append(figure[spec.field])
        meta = next((run for run in reversed(case["runs"]) if "waits" in run), {})
        table[name] = {
            "library": case["library"],
            "engine": case["engine"],
            "medians": {key: statistics.median(found) for key, found in values.items()},
            "runs": {key: len(found) for key, found in values.items()},
            "errors": errors,
            "latencies_ms": latencies,
            "hold": holds[-1] if holds else None,
            "waits": meta.get("waits", ""),
            "bulk_api": meta.get("bulk_api"),
            "status_api": meta.get("status_api", ""),
            "versions": meta.get("versions", {}),
        }
    return table


def engine_cases(table: dict[str, dict[str, Any]], engine: str) -> tuple[str | None, list[str]]:
    """Return the taskfuture case and the peer cases of ``engine``, in registry order."""
    ours = None
    peers = []
    for case in CASES:
        if case.name not in table or case.engine != engine:
            continue
        if case.is_taskfuture:
            ours = case.name
        else:
            peers.append(case.name)
    return ours, peers


def best_peer(table: dict[str, dict[str, Any]], peers: list[str], figure: Figure) -> str | None:
    found = [name for name in peers if figure.key in table[name]["medians"]]
    if not found:
        return None
    pick: Callable[..., str] = max if figure.better == HIGHER else min
    return pick(found, key=lambda name: table[name]["medians"][figure.key])


def fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "—"
    if digits == 0:
        return f"{value:,.0f}".replace(",", " ")
    return f"{value:.{digits}f}"


def cell(table: dict[str, dict[str, Any]], name: str, figure: Figure) -> str:
    entry = table[name]
    if figure.key in entry["medians"]:
        return fmt(entry["medians"][figure.key], figure.digits)
    if figure.key == "bulk" and not entry["bulk_api"] and "case" not in entry["errors"]:
        return "no bulk API"
    if "case" in entry["errors"] or figure.source in entry["errors"]:
        return "failed¹"
    return "—"


# -- targets ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    engine: str
    text: str
    figure: str
    #: Peer case names whose figure is compared; "best" means the best peer of the engine.
    against: str
    factor: float


#: The issue's targets: taskfuture's figure against a peer's, scaled by ``factor``.
TARGETS = (
    Target("Redis", "submit ≥ best peer", "submit", "best", 1.0),
    Target("Redis", "bulk submit ≥ 3 x best peer bulk", "bulk", "best", 3.0),
    Target("Redis", "round trip P50 ≤ best peer", "rtt_p50", "best", 1.0),
    Target("Redis", "round trip P50 ≤ ½ x Celery", "rtt_p50", "celery-redis", 0.5),
    Target("Redis", "drain ≥ 1.5 x best peer", "drain", "best", 1.5),
    Target("PostgreSQL", "submit ≥ 2 x Procrastinate", "submit", "procrastinate", 2.0),
    Target("PostgreSQL", "bulk ≥ 2 x Procrastinate batch defer", "bulk", "procrastinate", 2.0),
    Target("PostgreSQL", "round trip P50 ≤ ¼ x Procrastinate", "rtt_p50", "procrastinate", 0.25),
    Target(
        "PostgreSQL",
        "round trip P50 ≤ ¼ x Celery database backend",
        "rtt_p50",
        "celery-postgresql",
        0.25,
    ),
    Target("PostgreSQL", "drain ≥ 2 x Procrastinate", "drain", "procrastinate", 2.0),
    Target("SQLite", "submit ≥ Huey SQLite", "submit", "huey-sqlite", 1.0),
    Target("SQLite", "round trip P50 ≤ ⅒ x Huey SQLite", "rtt_p50", "huey-sqlite", 0.1),
)

#: Absolute targets of the design: (engine, text, figure, limit).
ABSOLUTE_TARGETS = (
    ("PostgreSQL", "submit ≥ 2 000 tasks/s", "submit", 2000.0),
    ("Redis", "submit ≥ 6 000 tasks/s", "submit", 6000.0),
    ("PostgreSQL", "bulk submit ≥ 20 000 tasks/s", "bulk", 20000.0),
    ("Redis", "bulk submit ≥ 30 000 tasks/s", "bulk", 30000.0),
    ("PostgreSQL", "status P50 ≤ 0.5 ms (queued task)", "status_queued_p50", 0.5),
    ("Redis", "status P50 ≤ 0.2 ms (queued task)", "status_queued_p50", 0.2),
    ("PostgreSQL", "submit latency P99 < 2 ms", "submit_p99", 2.0),
    ("Redis", "submit latency P99 < 2 ms", "submit_p99", 2.0),
    ("SQLite", "submit latency P99 < 2 ms", "submit_p99", 2.0),
    ("MariaDB", "submit latency P99 < 2 ms", "submit_p99", 2.0),
    ("Redis", "round trip P50 ≤ 1.5 ms", "rtt_p50", 1.5),
    ("PostgreSQL", "round trip P50 ≤ 3 ms", "rtt_p50", 3.0),
    ("SQLite", "round trip P50 < 5 ms", "rtt_p50", 5.0),
)


def check_target(table: dict[str, dict[str, Any]], target: Target) -> tuple[str, str, str]:
    """Return (taskfuture's value, the limit it had to meet, verdict)."""
    figure = FIGURE_BY_KEY[target.figure]
    ours, peers = engine_cases(table, target.engine)
    peer = best_peer(table, peers, figure) if target.against == "best" else target.against
    if ours is None or peer is None or peer not in table:
        return "—", "—", "not measured"
    mine = table[ours]["medians"].get(figure.key)
    theirs = table[peer]["medians"].get(figure.key)
    if mine is None or theirs is None:
        return fmt(mine, figure.digits), fmt(theirs, figure.digits), "not measured"
    limit = theirs * target.factor
    met = mine >= limit if figure.better == HIGHER else mine <= limit
    where = f"{fmt(limit, figure.digits)} ({peer})"
    return fmt(mine, figure.digits), where, "**met**" if met else "**missed**"


def check_absolute(
    table: dict[str, dict[str, Any]], engine: str, key: str, limit: float
) -> tuple[str, str]:
    figure = FIGURE_BY_KEY[key]
    ours, _ = engine_cases(table, engine)
    mine = table[ours]["medians"].get(key) if ours else None
    if mine is None:
        return "—", "not measured"
    met = mine >= limit if figure.better == HIGHER else mine <= limit
    return fmt(mine, figure.digits), "**met**" if met else "**missed**"


# -- plots -------------------------------------------------------------------------------


def write_plots(table: dict[str, dict[str, Any]], plots_dir: pathlib.Path) -> list[str]:
    """Draw the round-trip distributions and the throughput bars; return the file names."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(parents=True, exist_ok=True)
    names = []

    engines = [engine for engine in ENGINES if any(e["engine"] == engine for e in table.values())]
    fig, axes = plt.subplots(len(engines), 1, figsize=(9, 3.2 * len(engines)), squeeze=False)
    for axis, engine in zip(axes[:, 0], engines, strict=True):
        ours, peers = engine_cases(table, engine)
        for name in ([ours] if ours else []) + peers:
            latencies = sorted(table[name]["latencies_ms"])
            if not latencies:
                continue
            fractions = [(index + 1) / len(latencies) for index in range(len(latencies))]
            width = 2.5 if name == ours else 1.2
            axis.step(latencies, fractions, where="post", label=name, linewidth=width)
        axis.set_xscale("log")
        axis.set_title(f"{engine}: submit → result round trip, all rounds")
        axis.set_xlabel("latency, ms (log scale)")
        axis.set_ylabel("fraction of round trips")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(plots_dir / "round-trip.png", dpi=110)
    plt.close(fig)
    names.append("round-trip.png")

    ordered = [case.name for case in CASES if case.name in table]
    colors = {
        "Redis": "tab:red",
        "PostgreSQL": "tab:blue",
        "SQLite": "tab:green",
        "MariaDB": "tab:orange",
    }
    fig, axes = plt.subplots(2, 2, figsize=(14, 10), sharey=True)
    for axis, key in zip(axes.flat, ("submit", "bulk", "drain", "memory"), strict=True):
        figure = FIGURE_BY_KEY[key]
        measured = [name for name in ordered if key in table[name]["medians"]]
        values = [table[name]["medians"][key] for name in measured]
        bar_colors = [colors[table[name]["engine"]] for name in measured]
        bars = axis.barh(measured, values, color=bar_colors)
        for bar, name, value in zip(bars, measured, values, strict=True):
            if table[name]["library"] == "taskfuture":
                bar.set_edgecolor("black")
                bar.set_linewidth(2)
            axis.annotate(
                fmt(value, figure.digits),
                (value, bar.get_y() + bar.get_height() / 2),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
            )
        axis.set_xscale("log")
        axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if values:
            axis.set_xlim(min(values) / 2, max(values) * 4)
        better = "higher is better" if figure.better == HIGHER else "lower is better"
        axis.set_title(f"{figure.label} (median, {better})", fontsize=10)
        axis.grid(True, axis="x", which="both", alpha=0.3)
    axes[0, 0].set_yticks(range(len(ordered)), ordered)
    axes[0, 0].invert_yaxis()
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in colors.values()]
    fig.legend(handles, list(colors), loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(plots_dir / "throughput.png", dpi=110)
    plt.close(fig)
    names.append("throughput.png")
    return names


# -- page ----------------------------------------------------------------------------------

from benchmarks.report_text import (  # noqa: E402 - the long prose lives in its own module
    MEASUREMENT_NOTES,
    MISS_REASONS,
    PEER_NOTES,
    profile_section,
)


def engine_table(table: dict[str, dict[str, Any]], engine: str) -> list[str]:
    ours, peers = engine_cases(table, engine)
    columns = ([ours] if ours else []) + peers
    lines = []
    header = ["figure", *columns]
    if ours and peers:
        header += ["best peer", "taskfuture ÷ best peer"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for figure in FIGURES:
        row = [figure.label + (" ↑" if figure.better == HIGHER else " ↓")]
        row += [cell(table, name, figure) for name in columns]
        if ours and peers:
            peer = best_peer(table, peers, figure)
            mine = table[ours]["medians"].get(figure.key)
            if peer is None or mine is None:
                row += ["—", "—"]
            else:
                theirs = table[peer]["medians"][figure.key]
                ratio = mine / theirs if theirs else float("inf")
                row += [f"{peer}: {fmt(theirs, figure.digits)}", f"{ratio:.2f}"]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def code_line(code: dict[str, Any] | None) -> str:
    if not code:
        return "- Code: not recorded."
    line = f"- Code: taskfuture at commit {code['commit']}"
    if code["uncommitted_src"]:
        files = ", ".join(f"`{name}`" for name in code["uncommitted_src"])
        return line + f", plus uncommitted changes in {files}."
    return line + "."


def render(
    results: dict[str, Any], table: dict[str, dict[str, Any]], plots: list[str], plots_rel: str
) -> str:
    machine = results["machine"]
    sizes = results["sizes"]
    load = results["load"]
    lines = [
        "# Benchmarks",
        "",
        "taskfuture beside Celery, RQ, Dramatiq, Huey, arq and Procrastinate: the same task "
        "`add(x, y)`, the same machine, the same local servers, one run. This page is "
        f"generated by `{results['command']}`: `make bench` runs the full set and writes "
        "BENCHMARKS.md, `make bench-quick` runs reduced sizes and writes under "
        "benchmarks/results/.",
        "",
        f"- Date: {results['started_at']} (UTC); the run took "
        f"{results['seconds'] / 60:.1f} minutes.",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB RAM, "
        f"Linux {machine['kernel']}, Python {machine['python']}.",
        f"- Load: the machine is shared with other engineers' test suites; the 1-minute load "
        f"average ranged from {load['min']:.1f} to {load['max']:.1f} during the run (2 cores). "
        f"Rounds are interleaved (every case once per round, each round starting at a "
        f"different case) so that drift hits all libraries alike, and each figure is the "
        f"median of {sizes['rounds']} rounds (memory: {sizes['memory_rounds']}).",
        "- Worker concurrency: 4 for every library.",
        code_line(results.get("code")),
        "",
        "## Versions",
        "",
        "| component | version |",
        "|---|---|",
    ]
    # Environments may pin different versions of one package (arq pins redis<6).
    versions: dict[str, dict[str, list[str]]] = {}
    for name, entry in table.items():
        for package, version in entry["versions"].items():
            versions.setdefault(package, {}).setdefault(version, []).append(name)
    servers = results["servers"]
    for server in ("Redis", "PostgreSQL", "MariaDB"):
        lines.append(f"| {server} server | {servers.get(server, 'unknown')} |")
    for package in sorted(versions, key=str.lower):
        found = versions[package]
        if len(found) == 1:
            shown = next(iter(found))
        else:
            shown = "; ".join(
                f"{version} ({', '.join(names)})" for version, names in sorted(found.items())
            )
        lines.append(f"| {package} | {shown} |")
    lines += ["", *MEASUREMENT_NOTES.format(**sizes).splitlines(), ""]

    lines += [
        "## How each library waits",
        "",
        "| case | how the caller learns of a result | status call measured | bulk call |",
        "|---|---|---|---|",
    ]
    for case in CASES:
        if case.name in table:
            entry = table[case.name]
            lines.append(
                f"| {case.name} | {entry['waits']} | {entry['status_api']} | "
                f"{entry['bulk_api'] or 'none'} |"
            )
    lines.append("")

    for engine in ENGINES:
        ours, peers = engine_cases(table, engine)
        if not ours and not peers:
            continue
        lines += [f"## {engine}", ""]
        if engine == "PostgreSQL":
            lines += [
                "celery-postgresql uses the Redis broker and keeps results in PostgreSQL; "
                "it is listed here because its waiting and status reads hit PostgreSQL.",
                "",
            ]
        if engine == "MariaDB":
            lines += ["No peer supports MariaDB, so there is no ratio.", ""]
        lines += engine_table(table, engine)
        lines.append("")
    lines += [
        "↑ higher is better, ↓ lower is better. The ratio is taskfuture's median divided by "
        "the best peer's: above 1 is better for rates, below 1 is better for times and memory.",
        "",
    ]

    holds = [(name, table[name]["hold"]) for name in table if table[name]["hold"]]
    if holds:
        lines += [
            f"## taskfuture: one process holding {sizes['memory_handles']:,} open futures "
            f"for {sizes['hold_s']:.0f} s".replace(",", " "),
            "",
            "Per engine, one caller submits the futures in bulk, then one worker "
            "(concurrency 4) starts and works through them while the caller holds every "
            "future. The waiter's status queries are counted by "
            "`TaskService.status_queries`. The four engines run at the same time to fit the "
            "time budget, so their workers share the 2 cores and finish fewer tasks than "
            "one alone would; memory and query rate do not depend on that.",
            "",
            "| engine | futures done in the window | status queries / s | caller RSS peak, MiB |",
            "|---|---|---|---|",
        ]
        for name, hold in holds:
            lines.append(
                f"| {table[name]['engine']} | {hold['done']:,} of {hold['futures']:,} | "
                f"{hold['status_queries_per_s']:.2f} | {hold['peak_delta_mib']:.1f} |".replace(
                    ",", " "
                )
            )
        lines.append("")

    lines += [
        "## Targets",
        "",
        "Ratios measured in this run, as the issue sets them:",
        "",
        "| engine | target | taskfuture | limit (peer) | verdict | behind a miss |",
        "|---|---|---|---|---|---|",
    ]
    for target in TARGETS:
        mine, limit, verdict = check_target(table, target)
        reason = MISS_REASONS.get((target.engine, target.figure), "") if "missed" in verdict else ""
        lines.append(
            f"| {target.engine} | {target.text} | {mine} | {limit} | {verdict} | {reason} |"
        )
    lines += [
        "",
        "Absolute targets of the design, on this machine:",
        "",
        "| engine | target | taskfuture | verdict | behind a miss |",
        "|---|---|---|---|---|",
    ]
    for engine, text, key, limit in ABSOLUTE_TARGETS:
        mine, verdict = check_absolute(table, engine, key, limit)
        reason = MISS_REASONS.get((engine, key), "") if "missed" in verdict else ""
        lines.append(f"| {engine} | {text} | {mine} | {verdict} | {reason} |")
    hold_rates = [hold["status_queries_per_s"] for _, hold in holds]
    if hold_rates:
        verdict = "**met**" if max(hold_rates) <= 10 else "**missed**"
        reason = (
            "unthrottled reads after push notifications, see Profile" if "missed" in verdict else ""
        )
        handles = fmt(sizes["memory_handles"], 0)
        lines.append(
            f"| all | ≤ 10 waiting queries / s per process with {handles} futures "
            f"| max {max(hold_rates):.2f} | {verdict} | {reason} |"
        )
    lines.append("")

    lines += [*PEER_NOTES.splitlines(), ""]
    lines += profile_section(RESULTS_DIR / "profile-latest.json")

    failures = [
        (name, source, error)
        for name, entry in table.items()
        for source, error in entry["errors"].items()
    ]
    if failures:
        lines += ["## Failures", "", "¹ Errors recorded in this run:", ""]
        for name, source, error in failures:
            lines.append(f"- {name}, {source}: `{error[:300]}`")
        lines.append("")

    lines += ["## Plots", ""]
    for plot in plots:
        lines += [f"![{plot}]({plots_rel}/{plot})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(results: dict[str, Any]) -> pathlib.Path:
    """Write the page and the plots for ``results``; return the page's path."""
    table = collect(results)
    if results["mode"] == "full":
        page = REPO / "BENCHMARKS.md"
        plots_dir = PLOTS_DIR
    else:
        page = RESULTS_DIR / f"BENCHMARKS-{results['mode']}.md"
        plots_dir = RESULTS_DIR / f"plots-{results['mode']}"
    plots = write_plots(table, plots_dir)
    plots_rel = plots_dir.relative_to(page.parent).as_posix()
    page.write_text(render(results, table, plots, plots_rel))
    return page


def main() -> None:
    path = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS_DIR / "latest-full.json"
    print(write_report(json.loads(path.read_text())))


if __name__ == "__main__":
    main()
