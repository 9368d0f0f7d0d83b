"""The child process of process mode: runs one sync task at a time for its worker.

The worker starts it as ``python -m taskfuture.child --app MODULE:ATTRIBUTE``
and sends it tasks over stdin; the child writes its replies to stdout. Both directions
carry one JSON object per line, encoded with :mod:`taskfuture.codec`. The
messages are listed in :mod:`taskfuture.processes`.

Task code must not write to the protocol stream, so at start the child moves
it to a private file descriptor and points file descriptor 1 (``print`` and
C code alike) at stderr, and file descriptor 0 at ``/dev/null``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Sequence
from typing import Any, BinaryIO

from taskfuture import codec
from taskfuture.context import TaskContext, reset_current_context, set_current_context
from taskfuture.errors import UnknownTaskError
from taskfuture.models import Progress
from taskfuture.service import Task, TaskService

# Not __name__: run with -m, this module is __main__.
logger = logging.getLogger("taskfuture.child")

#: Exit status when the app cannot be loaded.
EXIT_APP_ERROR = 2


class Channel:
    """The child's end of the protocol: reads commands, writes messages, one per line."""

    def __init__(self, commands: BinaryIO, messages: BinaryIO) -> None:
        self.commands = commands
        self._messages = messages
        self._lock = threading.Lock()

    @classmethod
    def take_standard_streams(cls) -> Channel:
        """Move stdin and stdout to private descriptors and return a channel on them."""
        commands = os.fdopen(os.dup(0), "rb")
        messages = os.fdopen(os.dup(1), "wb")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        return cls(commands, messages)

    def send(self, message: dict[str, Any]) -> None:
        """Write ``message`` as one line, or exit the process if the worker is gone."""
        line = codec.encode(message, "message").encode("utf-8") + b"\n"
        try:
            with self._lock:
                self._messages.write(line)
                self._messages.flush()
        except OSError as exc:
            logger.error("Child process %d lost its worker (%s); exiting", os.getpid(), exc)
            os._exit(1)


class ChildRunner:
    """Runs the tasks that arrive on ``channel`` one after another, in the main thread."""

    def __init__(self, service: TaskService, channel: Channel) -> None:
        self._tasks = service.tasks
        self._channel = channel
        self._lock = threading.Lock()
        #: Contexts of received tasks by id, so that a cancel line reaches its task.
        self._contexts: dict[str, TaskContext] = {}
        self._jobs: queue.Queue[tuple[TaskContext, dict[str, Any]] | None] = queue.Queue()
        self._busy = threading.Event()

    def read_commands(self) -> None:
        """Read run and cancel commands until the input ends. It runs in its own thread."""
        for line in self._channel.commands:
            try:
                command = codec.decode(line.decode("utf-8"))
                kind = command["type"]
                task_id = str(command["task_id"])
            except (ValueError, TypeError, KeyError) as exc:
                logger.warning("Child process %d ignored an invalid command: %s", os.getpid(), exc)
                continue
            if kind == "run":
                self._receive_run(task_id, command)
            elif kind == "cancel":
                self._receive_cancel(task_id)
            else:
                logger.warning(
                    "Child process %d ignored unknown command %r for task %s",
                    os.getpid(),
                    kind,
                    task_id,
                )
        if self._busy.is_set():
            # The worker stopped or died while a task ran, so the outcome would be lost anyway.
            logger.info("Child process %d: input closed while a task ran; exiting", os.getpid())
            os._exit(0)
        self._jobs.put(None)

    def _receive_run(self, task_id: str, command: dict[str, Any]) -> None:
        try:
            attempt = int(command.get("attempt", 1))
            max_attempts = int(command.get("max_attempts", 1))
        except (TypeError, ValueError) as exc:
            # Reply with an error, because the worker waits for an outcome of every task it sends.
            logger.error("Child process %d got an invalid run command: %s", os.getpid(), exc)
            error = codec.make_error("builtins", "ValueError", f"invalid run command: {exc}")
            self._channel.send(
                {"type": "error", "task_id": task_id, "error": error, "summary": str(exc)}
            )
            return
        context = TaskContext(
            task_id,
            str(command.get("name", "")),
            str(command.get("queue", "")),
            attempt,
            max_attempts,
            lambda progress: self._send_progress(task_id, progress),
        )
        with self._lock:
            self._contexts[task_id] = context
        self._jobs.put((context, command))

    def _receive_cancel(self, task_id: str) -> None:
        with self._lock:
            context = self._contexts.get(task_id)
        if context is None:
            logger.debug(
                "Child process %d: task %s to cancel is not running here", os.getpid(), task_id
            )
            return
        logger.info("Child process %d: task %s cancellation requested", os.getpid(), task_id)
        context.request_cancel()

    def _send_progress(self, task_id: str, progress: Progress) -> None:
        self._channel.send({"type": "progress", "task_id": task_id, "progress": progress.to_dict()})

    def serve(self) -> None:
        """Run received tasks until the worker closes the input."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            context, command = job
            self._busy.set()
            try:
                self._run(context, str(command.get("payload", "")))
            finally:
                self._busy.clear()
                with self._lock:
                    self._contexts.pop(context.task_id, None)

    def _run(self, context: TaskContext, payload: str) -> None:
        task = self._tasks.get(context.name)
        token = set_current_context(context)
        try:
            value = self._call(task, context.name, payload)
            result = codec.encode(value, "result")
        except BaseException as exc:
            context.flush_progress()
            self._send_error(context, task, exc)
        else:
            context.flush_progress()
            self._channel.send({"type": "result", "task_id": context.task_id, "result": result})
        finally:
            reset_current_context(token)

    @staticmethod
    def _call(task: Task[Any, Any] | None, name: str, payload: str) -> Any:
        if task is None or task.fn is None:
            raise UnknownTaskError(
                f"task {name!r} is not registered in the app that the child process imported"
            )
        args, kwargs = codec.decode_call(payload)
        value = task.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            if inspect.iscoroutine(value):
                value.close()
            raise TypeError(f"task {name!r} returned an awaitable; declare it with async def")
        return value

    def _send_error(
        self, context: TaskContext, task: Task[Any, Any] | None, exc: BaseException
    ) -> None:
        text = "".join(traceback.format_exception(exc))
        retryable = task is not None and isinstance(exc, task.options.retry_on)
        logger.debug("Child process %d: task %s raised %r", os.getpid(), context.task_id, exc)
        self._channel.send(
            {
                "type": "error",
                "task_id": context.task_id,
                "error": codec.encode_exception(exc, text),
                "summary": f"{type(exc).__qualname__}: {exc}",
                "retryable": retryable,
            }
        )


def load_service(spec: str) -> TaskService:
    """Import ``module:attribute`` and return the TaskService it names.

    Raises:
        ValueError: ``spec`` is malformed or names something else.
        ImportError: the module cannot be imported.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"invalid app {spec!r}: expected MODULE:ATTRIBUTE")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    service = getattr(module, attribute, None)
    if not isinstance(service, TaskService):
        raise ValueError(f"app {spec!r} is {type(service).__name__}, not a TaskService")
    return service


def main(argv: Sequence[str] | None = None) -> int:
    """Load the app, tell the worker it is ready, and run tasks until input ends."""
    parser = argparse.ArgumentParser(prog="python -m taskfuture.child")
    parser.add_argument("--app", required=True, help="MODULE:ATTRIBUTE of the TaskService")
    parser.add_argument("--log-level", type=int, default=logging.INFO, help="logging level number")
    options = parser.parse_args(argv)

    # Ignore Ctrl-C, because the worker decides when its children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = Channel.take_standard_streams()
    logging.basicConfig(
        level=options.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )

    try:
        service = load_service(options.app)
    except Exception:
        logger.exception("Child process %d cannot load app %s", os.getpid(), options.app)
        return EXIT_APP_ERROR

    runner = ChildRunner(service, channel)
    reader = threading.Thread(
        target=runner.read_commands, name="taskfuture-child-input", daemon=True
    )
    reader.start()
    channel.send({"type": "ready", "pid": os.getpid()})
    runner.serve()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
