"""The demo's tasks: import a CSV file, build a monthly report, email it.

The demo's worker loads this module with ``--app taskfuture.demo.tasks:tasks``.
The service reads its DSN from ``TASKFUTURE_DSN``, which the demo sets to a
SQLite file in its working folder.
"""

from __future__ import annotations

import collections
import csv
import datetime as dt
import os
import smtplib
import sqlite3
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from taskfuture import TaskService, current_context

tasks = TaskService.from_env()

WEATHER_TABLE = "weather"

_CREATE_WEATHER = f"""
CREATE TABLE {WEATHER_TABLE} (
    date TEXT PRIMARY KEY,
    precipitation REAL NOT NULL,
    temp_max REAL NOT NULL,
    temp_min REAL NOT NULL,
    wind REAL NOT NULL,
    weather TEXT NOT NULL
)
"""
_INSERT_WEATHER = f"INSERT INTO {WEATHER_TABLE} VALUES (?, ?, ?, ?, ?, ?)"

_MONTHLY = f"""
SELECT substr(date, 1, 7) AS month,
       COUNT(*),
       AVG(temp_max),
       AVG(temp_min),
       SUM(precipitation),
       AVG(wind)
FROM {WEATHER_TABLE}
GROUP BY month
ORDER BY month
"""
_WEATHER_COUNTS = f"""
SELECT substr(date, 1, 7) AS month, weather, COUNT(*)
FROM {WEATHER_TABLE}
GROUP BY month, weather
"""


@tasks.task("demo.ping")
def ping() -> str:
    """Return the worker's process id, which shows that a worker is running."""
    return f"pong from worker pid {os.getpid()}"


@tasks.task("demo.import_csv")
def import_csv(
    source: str, database: str, batch_size: int = 50, pause_s: float = 0.0
) -> dict[str, Any]:
    """Load the daily weather rows of CSV file ``source`` into table ``weather`` of ``database``.

    ``source`` has the columns of ``seattle-weather.csv``: date (YYYY/MM/DD),
    precipitation, temp_max, temp_min, wind and weather.

    The table is dropped and created again, so a retry starts from scratch.
    Each batch is committed on its own and reported as progress. The task
    waits ``pause_s`` seconds after each batch, which the demo sets so that a
    person can watch the progress bar move.

    Raises:
        FileNotFoundError: ``source`` does not exist.
        ValueError: a row has a missing column or a value that is not a number or date,
            or ``batch_size`` is below 1.
    """
    if batch_size < 1:
        raise ValueError(f"invalid batch_size {batch_size!r}: expected a whole number >= 1")
    context = current_context()
    with open(source, newline="", encoding="utf-8") as file:
        rows = [_parse_weather_row(row, line) for line, row in enumerate(csv.DictReader(file), 2)]
    total = len(rows)
    context.report_progress(0, total, f"read {total} rows from {Path(source).name}")

    connection = sqlite3.connect(database)
    try:
        with connection:
            connection.execute(f"DROP TABLE IF EXISTS {WEATHER_TABLE}")
            connection.execute(_CREATE_WEATHER)
        for start in range(0, total, batch_size):
            context.raise_if_cancelled()
            batch = rows[start : start + batch_size]
            with connection:
                connection.executemany(_INSERT_WEATHER, batch)
            done = start + len(batch)
            context.report_progress(done, total, f"{done} of {total} rows")
            if pause_s > 0 and done < total:
                context.wait_cancelled(pause_s)
    finally:
        connection.close()
    return {"rows": total, "database": database, "table": WEATHER_TABLE}


def _parse_weather_row(
    row: dict[str, str], line: int
) -> tuple[str, float, float, float, float, str]:
    try:
        day = dt.datetime.strptime(row["date"], "%Y/%m/%d").date()
        return (
            day.isoformat(),
            float(row["precipitation"]),
            float(row["temp_max"]),
            float(row["temp_min"]),
            float(row["wind"]),
            row["weather"].strip(),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"invalid row on line {line}: {row!r}: {exc}") from None


@tasks.task("demo.build_report")
def build_report(database: str, output: str) -> dict[str, Any]:
    """Write monthly aggregates of the ``weather`` table to ``output`` as a Markdown table."""
    connection = sqlite3.connect(database)
    try:
        months = connection.execute(_MONTHLY).fetchall()
        counts = connection.execute(_WEATHER_COUNTS).fetchall()
    finally:
        connection.close()
    if not months:
        raise ValueError(f"table {WEATHER_TABLE!r} in {database} has no rows; import it first")

    by_month: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for month, weather, count in counts:
        by_month[month][weather] = count

    first, last = months[0][0], months[-1][0]
    days = sum(row[1] for row in months)
    lines = [
        f"# Seattle weather by month, {first} to {last}",
        "",
        f"{days} daily rows from seattle-weather.csv (vega_datasets). Temperatures in °C,",
        "precipitation in mm, wind in m/s. Ties for the most common weather go to the",
        "first name in alphabetical order.",
        "",
        "| month | days | mean max °C | mean min °C | precipitation mm | mean wind m/s "
        "| most common weather |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for month, day_count, temp_max, temp_min, precipitation, wind in months:
        # Sorting by (-count, name) makes ties deterministic.
        weather, _ = min(by_month[month].items(), key=lambda item: (-item[1], item[0]))
        lines.append(
            f"| {month} | {day_count} | {temp_max:.1f} | {temp_min:.1f} "
            f"| {precipitation:.1f} | {wind:.1f} | {weather} |"
        )
    Path(output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"path": output, "months": len(months), "days": days, "first": first, "last": last}


@tasks.task("demo.email_report")
def email_report(
    report_path: str, host: str, port: int, sender: str, recipient: str
) -> dict[str, Any]:
    """Send the report at ``report_path`` as an attachment through the SMTP server at host:port."""
    report = Path(report_path)
    text = report.read_text(encoding="utf-8")
    title = text.splitlines()[0].lstrip("# ").strip() if text else report.name

    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = title
    # A fixed domain: without one, make_msgid looks up this host's name in DNS.
    message["Message-ID"] = make_msgid(domain="taskfuture.localhost")
    message.set_content(f"{title}\n\nThe monthly table is attached as {report.name}.\n")
    message.add_attachment(text, subtype="markdown", filename=report.name)

    # local_hostname is fixed for the same reason: smtplib would look it up for EHLO.
    with smtplib.SMTP(host, port, local_hostname="localhost", timeout=10) as smtp:
        refused = smtp.send_message(message)
    if refused:
        raise smtplib.SMTPRecipientsRefused(refused)
    return {
        "message_id": message["Message-ID"],
        "subject": title,
        "recipient": recipient,
        "size": len(message.as_bytes()),
    }


@tasks.task("demo.sleep")
def sleep(seconds: float) -> float:
    """Wait ``seconds``, or less if the task is cancelled, and return the seconds waited."""
    started = time.monotonic()
    current_context().wait_cancelled(seconds)
    return time.monotonic() - started


@tasks.task("demo.long_job")
def long_job(steps: int, step_s: float) -> int:
    """Run ``steps`` steps of ``step_s`` seconds each, stopping at once when cancelled."""
    context = current_context()
    for step in range(1, steps + 1):
        # Stands in for one step of real work; it returns early on cancellation.
        context.wait_cancelled(step_s)
        context.raise_if_cancelled()
        context.report_progress(step, steps, f"step {step} of {steps}")
    return steps
