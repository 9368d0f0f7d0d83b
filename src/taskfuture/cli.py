"""The ``taskfuture`` command: worker, status, result, cancel, clean-expired, schema, demo."""

from __future__ import annotations

import base64
import datetime as dt
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from taskfuture.config import Settings
from taskfuture.dsn import mask_password
from taskfuture.errors import (
    TaskCancelledError,
    TaskFailedError,
    TaskFutureError,
    TaskTimeoutError,
)
from taskfuture.future import check_timeout
from taskfuture.service import TaskService

F = TypeVar("F", bound=Callable[..., Any])

#: Exit status when a wait timed out, as the ``timeout`` command uses.
EXIT_TIMEOUT = 124


def _load_app(spec: str) -> TaskService:
    """Import ``module:attribute`` and return the TaskService it names."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"{spec!r} is not MODULE:ATTRIBUTE, for example myapp.tasks:tasks")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import module {module_name!r}: {exc}") from None
    service = getattr(module, attribute, None)
    if service is None:
        raise click.BadParameter(f"module {module_name!r} has no attribute {attribute!r}")
    if not isinstance(service, TaskService):
        raise click.BadParameter(f"{spec!r} is {type(service).__name__}, not a TaskService")
    return service


@contextmanager
def _clear_errors() -> Iterator[None]:
    """Print library errors as one line and exit 1 instead of showing a traceback."""
    try:
        yield
    except (TaskFutureError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None


def _plain_json(value: object) -> object:
    """Turn the extra types a result may hold into plain JSON values for printing."""
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    return str(value)


def _load_app_with_dsn(spec: str, dsn: str | None) -> TaskService:
    """Load the app so that ``--dsn`` reaches a service the app builds with ``from_env()``."""
    if dsn:
        os.environ["TASKFUTURE_DSN"] = dsn
    service = _load_app(spec)
    if dsn and service.settings.dsn != dsn:
        raise TaskFutureError(
            f"--dsn (or TASKFUTURE_DSN) {mask_password(dsn)} differs from the DSN "
            f"{service.settings.masked_dsn} "
            f"that {spec} builds its TaskService with; build it with TaskService.from_env() "
            "to let --dsn and TASKFUTURE_DSN choose, or drop --dsn"
        )
    return service


def _service(ctx: click.Context) -> TaskService:
    options = ctx.find_root().obj
    if options.get("service") is None:
        app = options.get("app")
        if app:
            options["service"] = _load_app_with_dsn(app, options.get("dsn"))
        else:
            overrides = {"dsn": options["dsn"]} if options.get("dsn") else {}
            options["service"] = TaskService(settings=Settings.from_env(**overrides))
    service: TaskService = options["service"]
    return service


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "TASKFUTURE"}
)
@click.option(
    "--dsn",
    envvar="TASKFUTURE_DSN",
    help="Engine DSN, such as sqlite:///taskfuture.db or redis://localhost:6379/0 "
    "[env: TASKFUTURE_DSN, then MESSENGER_TRANSPORT_DSN].",
)
@click.option(
    "--app",
    "app",
    envvar="TASKFUTURE_APP",
    help="MODULE:ATTRIBUTE of your TaskService [env: TASKFUTURE_APP].",
)
@click.option("-v", "--verbose", count=True, help="Log more: -v for info, -vv for debug.")
@click.version_option(package_name="taskfuture")
@click.pass_context
def main(ctx: click.Context, dsn: str | None, app: str | None, verbose: int) -> None:
    """Submit, inspect and run taskfuture tasks."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.obj = {"dsn": dsn, "app": app, "service": None}


@main.command()
@click.option(
    "--app",
    "app",
    envvar="TASKFUTURE_APP",
    help="MODULE:ATTRIBUTE of the TaskService whose tasks to run.",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    envvar="TASKFUTURE_CONCURRENCY",
    help="Most tasks run at once (threads and coroutines).",
)
@click.option(
    "-q",
    "--queues",
    default=None,
    envvar="TASKFUTURE_QUEUES",
    help="Comma-separated queues to consume [default: the service's queues].",
)
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Seconds running tasks may finish after SIGTERM before they are released.",
)
@click.option(
    "-p",
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    envvar="TASKFUTURE_PROCESSES",
    help="Run sync tasks in this many child processes, one task each, for CPU-bound work; "
    "replaces --concurrency [default: run them in threads].",
)
@click.option(
    "--process-grace",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="Seconds a cancelled or timed-out task may run on in its child process "
    "before SIGTERM, and again before SIGKILL.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    app: str | None,
    concurrency: int,
    queues: str | None,
    shutdown_timeout: float,
    processes: int | None,
    process_grace: float,
) -> None:
    """Run tasks until SIGTERM or SIGINT."""
    from taskfuture.worker import Worker

    root = ctx.find_root().obj
    root["app"] = app or root.get("app")
    if not root["app"]:
        raise click.UsageError("worker needs --app MODULE:ATTRIBUTE naming your TaskService")
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("taskfuture").setLevel(logging.INFO)
    with _clear_errors():
        service = _service(ctx)
        queue_list = (
            [queue.strip() for queue in queues.split(",") if queue.strip()] if queues else None
        )
        Worker(
            service,
            queues=queue_list,
            concurrency=concurrency,
            shutdown_timeout_s=shutdown_timeout,
            processes=processes,
            app_spec=root["app"],
            process_grace_s=process_grace,
        ).run()


@main.command()
@click.argument("task_id")
@click.pass_context
def status(ctx: click.Context, task_id: str) -> None:
    """Print the status of a task."""
    with _clear_errors():
        service = _service(ctx)
        future = service.future(task_id)
        line = future.status().value
        if future.attempts:
            line += f" (attempt {future.attempts})"
        progress = future.progress()
        if progress is not None and not future.done():
            total = f"/{progress.total:g}" if progress.total is not None else ""
            line += f" progress {progress.done:g}{total} {progress.message}".rstrip()
        click.echo(line)


@main.command()
@click.argument("task_id")
@click.option(
    "-t", "--timeout", type=float, default=None, help="Seconds to wait; omit to wait without limit."
)
@click.pass_context
def result(ctx: click.Context, task_id: str, timeout: float | None) -> None:
    """Wait for a task and print its result as JSON."""
    with _clear_errors():
        check_timeout(timeout)
        service = _service(ctx)
        future = service.future(task_id)
        try:
            value = future.result(timeout)
        except TaskTimeoutError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(EXIT_TIMEOUT) from None
        except TaskCancelledError as exc:
            click.echo(f"error: {exc}", err=True)
            raise SystemExit(1) from None
        except TaskFailedError as exc:
            # Not str(exc): a rebuilt builtin such as OSError drops the file name from it.
            click.echo(
                f"error: task {exc.task_id} failed with {exc.type_name}: {exc.message}", err=True
            )
            if exc.remote_traceback:
                click.echo(exc.remote_traceback.rstrip(), err=True)
            raise SystemExit(1) from None
        click.echo(json.dumps(value, default=_plain_json, ensure_ascii=False))


@main.command()
@click.argument("task_id")
@click.pass_context
def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a task; exit 1 if it had already completed or failed."""
    with _clear_errors():
        service = _service(ctx)
        future = service.future(task_id)
        if future.cancelled():
            click.echo(f"task {future.task_id} was already cancelled")
            return
        if future.cancel():
            click.echo(f"task {future.task_id} cancelled")
            return
        click.echo(
            f"error: task {future.task_id} already finished as {future.status().value}", err=True
        )
        raise SystemExit(1)


@main.command("clean-expired")
@click.pass_context
def clean_expired(ctx: click.Context) -> None:
    """Delete finished tasks past their retention and print how many; safe to run from cron."""
    with _clear_errors():
        deleted = _service(ctx).clean_expired()
        click.echo(f"deleted {deleted} expired task(s)")


@main.group()
def schema() -> None:
    """Manage the storage schema."""


@schema.command("create")
@click.pass_context
def schema_create(ctx: click.Context) -> None:
    """Create the task table (or keys) if missing; safe to repeat."""
    with _clear_errors():
        service = _service(ctx)
        service.create_schema()
        click.echo(
            f"schema ready on {service.settings.masked_dsn} (table {service.settings.table})"
        )


@schema.command("upgrade")
@click.pass_context
def schema_upgrade(ctx: click.Context) -> None:
    """Apply pending schema migrations, creating the task table if missing; safe to repeat."""
    with _clear_errors():
        service = _service(ctx)
        applied = service.storage.upgrade_schema()
        where = f"{service.settings.masked_dsn} (table {service.settings.table})"
        for description in applied:
            click.echo(f"applied schema {description}")
        if applied:
            click.echo(f"schema up to date on {where}")
        else:
            click.echo(f"schema already up to date on {where}")


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the demo's database, report and log [default: a new temporary folder].",
)
def demo(workdir: str | None) -> None:
    """Run the end-to-end demo on SQLite: import, report, email, with a worker."""
    from taskfuture.demo.runner import run_demo

    raise SystemExit(run_demo(workdir))


if __name__ == "__main__":  # pragma: no cover
    main()
