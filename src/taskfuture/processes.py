"""Process mode: the worker runs sync tasks in child processes, one task per child.

Each child is ``python -m taskfuture.child --app MODULE:ATTRIBUTE`` with pipes
on its stdin and stdout. Both directions carry one JSON object per line,
encoded with :mod:`taskfuture.codec`, so nothing is pickled and a child only
ever receives task names and JSON text.

Worker to child:

- ``{"type": "run", "task_id", "name", "queue", "attempt", "max_attempts",
  "payload"}``, where ``payload`` is the argument text stored with the task.
- ``{"type": "cancel", "task_id"}`` marks the task's context as cancelled.
- Closing stdin makes the child exit, at once even if a task is running.

Child to worker:

- ``{"type": "ready", "pid"}`` once the app module is imported.
- ``{"type": "progress", "task_id", "progress": {"done", "total", "message"}}``.
- ``{"type": "result", "task_id", "result"}`` with the result as JSON text.
- ``{"type": "error", "task_id", "error", "summary", "retryable"}``, where
  ``error`` is made by :func:`codec.encode_exception` and ``retryable`` is
  true when the exception matches the task's ``retry_on``.

A task that keeps running ``grace_s`` seconds after its cancellation (or its
time limit) gets SIGTERM, and SIGKILL after ``grace_s`` more seconds. When a
child exits during a task on its own, the task is queued again with its retry
backoff while attempts remain, else it fails with WorkerLostError: the rule
that applies to a worker that died. Every child that exits is replaced.
Process mode needs POSIX pipes and signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from taskfuture import codec
from taskfuture.errors import ConfigurationError
from taskfuture.models import Progress

if TYPE_CHECKING:
    from taskfuture.worker import Worker, _Running

logger = logging.getLogger(__name__)

#: Maximum time in seconds that a new child may take to import the app and report ready.
# NOTE: a guess sized for apps that import heavy libraries at module level.
START_TIMEOUT_S = 60.0
#: Maximum pause in seconds between two checks of a running task's cancellation deadlines.
CHECK_INTERVAL_S = 0.1
#: How often an idle slot checks that its child is still alive.
IDLE_CHECK_S = 1.0
#: Pause before starting a child again after a failed start; it doubles up to the maximum.
RESTART_DELAY_S = 1.0
RESTART_DELAY_MAX_S = 30.0

_READ_SIZE = 65536


class ChildExitedError(Exception):
    """The child closed its output, so it exited or is exiting."""


def describe_exit(code: int) -> str:
    """Return how a process ended, from a ``Popen.returncode``."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class ChildProcess:
    """One child process and the pipes to it, seen from the worker."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        # A process group of its own keeps signals sent to the worker's group,
        # such as Ctrl-C, away from the child, because the worker stops its children.
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            process_group=0,
        )
        self.pid = self.process.pid
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        self._stdin: IO[bytes] = stdin
        self._stdout: IO[bytes] = stdout
        self._buffer = bytearray()
        self._selector = selectors.DefaultSelector()
        self._selector.register(stdout, selectors.EVENT_READ)

    def send(self, message: dict[str, Any]) -> bool:
        """Write ``message`` as one line; return False if the child no longer reads."""
        line = codec.encode(message, "message").encode("utf-8") + b"\n"
        try:
            self._stdin.write(line)
            self._stdin.flush()
        except (OSError, ValueError):
            # OSError means the pipe is broken, and ValueError that this side closed it.
            return False
        return True

    def receive(self, timeout_s: float) -> dict[str, Any] | None:
        """Return the next message, or None if none arrives within ``timeout_s`` seconds.

        Raises:
            ChildExitedError: the child closed its output.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            line = self._next_line()
            if line is not None:
                message = self._decode(line)
                if message is not None:
                    return message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._selector.select(remaining):
                return None
            chunk = os.read(self._stdout.fileno(), _READ_SIZE)
            if not chunk:
                raise ChildExitedError(self.pid)
            self._buffer += chunk

    def _next_line(self) -> bytes | None:
        end = self._buffer.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line

    def _decode(self, line: bytes) -> dict[str, Any] | None:
        try:
            message = codec.decode(line.decode("utf-8"))
        except ValueError as exc:
            logger.warning(
                "Child process %d sent an invalid line (%s): %r", self.pid, exc, line[:200]
            )
            return None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            logger.warning("Child process %d sent a line without a type: %r", self.pid, line[:200])
            return None
        return message

    def alive(self) -> bool:
        return self.process.poll() is None

    def send_signal(self, signum: signal.Signals) -> None:
        # Popen.send_signal does nothing once the child was reaped, so a reused pid is safe.
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def close_input(self) -> None:
        """Close the child's stdin; the child exits when it reads the end of input."""
        with contextlib.suppress(OSError):
            self._stdin.close()

    def stop(self, grace_s: float) -> int:
        """Close its input, then send SIGTERM and SIGKILL ``grace_s`` seconds apart.

        Returns the exit status as ``Popen.returncode`` gives it, and closes the pipes.
        """
        self.close_input()
        try:
            for signum in (signal.SIGTERM, signal.SIGKILL):
                try:
                    return self.process.wait(grace_s)
                except subprocess.TimeoutExpired:
                    logger.warning(
                        "Child process %d did not exit within %g s; sending %s",
                        self.pid,
                        grace_s,
                        signum.name,
                    )
                    self.send_signal(signum)
            return self.process.wait()
        finally:
            self._selector.close()
            with contextlib.suppress(OSError):
                self._stdout.close()


@dataclasses.dataclass
class _Slot:
    """One child process, the task it runs, and the thread that feeds it tasks."""

    number: int
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    #: Set once the slot's first child reported ready or failed to start.
    started: threading.Event = dataclasses.field(default_factory=threading.Event)
    #: Whether any child of this slot ever reported ready.
    ready_once: bool = False
    child: ChildProcess | None = None
    #: Pid of the last child that exited, reported when its replacement starts.
    previous_pid: int | None = None
    running: _Running | None = None
    #: ``time.monotonic()`` when cancellation of ``running`` was requested.
    cancel_at: float | None = None
    #: The last signal sent to stop ``running``, if any.
    signalled: signal.Signals | None = None


class ProcessPool:
    """Runs the sync tasks of ``worker`` in ``size`` child processes, one task per child.

    Args:
        worker: the worker whose tasks run here; outcomes are stored through it.
        app_spec: ``MODULE:ATTRIBUTE`` of the TaskService each child imports.
        size: how many children run at once.
        grace_s: how long a cancelled task may run on before SIGTERM, and
            how long after SIGTERM before SIGKILL.
    """

    def __init__(self, worker: Worker, app_spec: str, size: int, grace_s: float) -> None:
        self._worker = worker
        self.app_spec = app_spec
        self.size = size
        self.grace_s = grace_s
        self._jobs: queue.Queue[_Running | None] = queue.Queue()
        self._slots = [_Slot(number) for number in range(1, size + 1)]
        self._stopping = threading.Event()
        #: Why the last child failed to start, for the error that start() raises.
        self._start_failure = ""

    def start(self) -> None:
        """Start one thread per slot, and return once every slot's first child is up or failed.

        Waiting keeps the worker from claiming tasks that no child could run yet.

        Raises:
            ConfigurationError: no child could start, most likely because the
                app cannot be imported in a fresh interpreter.
        """
        for slot in self._slots:
            slot.thread = threading.Thread(
                target=self._serve, args=(slot,), name=f"taskfuture-child-{slot.number}"
            )
            slot.thread.daemon = True
            slot.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S + 5
        for slot in self._slots:
            slot.started.wait(max(0.0, deadline - time.monotonic()))
        if not any(slot.ready_once for slot in self._slots):
            self.stop()
            raise ConfigurationError(
                f"no child process could load app {self.app_spec!r}: the last one "
                f"{self._start_failure}; see its log above, and check that "
                f"python -m taskfuture.child --app {self.app_spec} starts from this folder"
            )

    def submit(self, running: _Running) -> None:
        """Queue ``running`` for the next free child."""
        self._jobs.put(running)

    def cancel(self, task_id: str) -> None:
        """Send a cancel command to the child running ``task_id``.

        The slot thread sends SIGTERM and SIGKILL if the task keeps running. A
        task still waiting for a child is skipped when a child takes it, because
        the worker marked it as cancelled first.
        """
        for slot in self._slots:
            with slot.lock:
                running = slot.running
                if running is None or running.record.task_id != task_id:
                    continue
                if slot.cancel_at is None and slot.child is not None:
                    slot.cancel_at = time.monotonic()
                    slot.child.send({"type": "cancel", "task_id": task_id})
                return

    def stop(self) -> None:
        """Close every child's input and wait for the children to exit.

        The worker calls it after it released its unfinished tasks, so a child
        that still runs one exits at once without reporting an outcome.
        """
        self._stopping.set()
        for _ in self._slots:
            self._jobs.put(None)
        for slot in self._slots:
            with slot.lock:
                if slot.child is not None:
                    slot.child.close_input()
        deadline = time.monotonic() + 2 * self.grace_s + 5
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(timeout=max(0.0, deadline - time.monotonic()))
        for slot in self._slots:
            if slot.thread is None or not slot.thread.is_alive():
                continue
            # The slot thread is stuck, most likely on a child that hangs while it
            # imports the app. Kill that child so that it does not outlive the worker.
            with slot.lock:
                child = slot.child
            if child is not None:
                logger.warning("Child process %d did not stop; sending SIGKILL", child.pid)
                child.send_signal(signal.SIGKILL)

    # -- one thread per slot ----------------------------------------------------------

    def _serve(self, slot: _Slot) -> None:
        restart_delay = RESTART_DELAY_S
        while not self._stopping.is_set():
            if slot.child is None:
                started = self._start_child(slot)
                slot.started.set()
                if not started:
                    self._stopping.wait(restart_delay)
                    restart_delay = min(restart_delay * 2, RESTART_DELAY_MAX_S)
                    continue
                restart_delay = RESTART_DELAY_S
            try:
                running = self._jobs.get(timeout=IDLE_CHECK_S)
            except queue.Empty:
                self._check_idle_child(slot)
                continue
            if running is None:
                break
            self._check_idle_child(slot)
            if slot.child is None:
                self._jobs.put(running)
                continue
            self._run(slot, running)
        self._stop_child(slot)

    def _start_child(self, slot: _Slot) -> bool:
        level = logging.getLogger("taskfuture").getEffectiveLevel()
        command = [
            sys.executable,
            "-m",
            "taskfuture.child",
            "--app",
            self.app_spec,
            "--log-level",
            str(level),
        ]
        try:
            child = ChildProcess(command, _child_environment())
        except OSError as exc:
            self._start_failure = f"could not be started: {exc}"
            logger.error("Starting a child process in slot %d failed: %s", slot.number, exc)
            return False
        with slot.lock:
            slot.child = child
        exited = False
        try:
            message = child.receive(START_TIMEOUT_S)
        except ChildExitedError:
            message, exited = None, True
        if message is not None and message["type"] == "ready":
            slot.ready_once = True
            replacing = (
                f", replacing child process {slot.previous_pid}" if slot.previous_pid else ""
            )
            logger.info(
                "Child process %d started in slot %d for app %s%s",
                child.pid,
                slot.number,
                self.app_spec,
                replacing,
            )
            return True
        code = self._discard_child(slot)
        if not self._stopping.is_set():
            if exited:
                reason = describe_exit(code)
            elif message is None:
                reason = f"did not report ready within {START_TIMEOUT_S:g} s"
            else:
                reason = f"sent {message['type']!r} instead of 'ready'"
            self._start_failure = reason
            logger.error(
                "Child process %d in slot %d failed to start: it %s; see its log above. "
                "The slot tries again after a pause",
                child.pid,
                slot.number,
                reason,
            )
        return False

    def _check_idle_child(self, slot: _Slot) -> None:
        child = slot.child
        if child is None or child.alive():
            return
        code = self._discard_child(slot)
        logger.error(
            "Child process %d in slot %d %s while idle; replacing it",
            child.pid,
            slot.number,
            describe_exit(code),
        )

    def _discard_child(self, slot: _Slot) -> int:
        with slot.lock:
            child, slot.child = slot.child, None
        assert child is not None
        slot.previous_pid = child.pid
        return child.stop(self.grace_s)

    def _stop_child(self, slot: _Slot) -> None:
        child = slot.child
        if child is None:
            return
        code = self._discard_child(slot)
        logger.info(
            "Child process %d in slot %d stopped: it %s",
            child.pid,
            slot.number,
            describe_exit(code),
        )

    # -- running one task -------------------------------------------------------------

    def _run(self, slot: _Slot, running: _Running) -> None:
        record = running.record
        with slot.lock:
            child = slot.child
            assert child is not None
            skipped = running.cancelled
            sent = False
            if not skipped:
                slot.running = running
                slot.cancel_at = None
                slot.signalled = None
                sent = child.send(
                    {
                        "type": "run",
                        "task_id": record.task_id,
                        "name": record.name,
                        "queue": record.queue,
                        "attempt": record.attempts,
                        "max_attempts": record.max_attempts,
                        "payload": record.payload,
                    }
                )
                if not sent:
                    slot.running = None
        if skipped:
            logger.info(
                "Task %s (%s) was cancelled before a child process took it",
                record.task_id,
                record.name,
            )
            self._worker._forget(record.task_id, running)
            return
        if not sent:
            # The child died before it read the task, so its replacement runs it.
            code = self._discard_child(slot)
            logger.error(
                "Child process %d in slot %d %s before it took task %s; replacing it",
                child.pid,
                slot.number,
                describe_exit(code),
                record.task_id,
            )
            self._jobs.put(running)
            return
        limit = running.task.options.time_limit_s
        if limit is not None:
            # The time limit counts from here, because waiting for a child is not run time.
            running.deadline = time.monotonic() + limit
        logger.debug(
            "Task %s (%s) sent to child process %d", record.task_id, record.name, child.pid
        )
        self._await_outcome(slot, child, running)

    def _await_outcome(self, slot: _Slot, child: ChildProcess, running: _Running) -> None:
        task_id = running.record.task_id
        while True:
            self._escalate(slot, child, running)
            try:
                message = child.receive(CHECK_INTERVAL_S)
            except ChildExitedError:
                self._on_child_exit(slot, child, running)
                return
            if message is None:
                continue
            kind = message["type"]
            if message.get("task_id") != task_id:
                logger.warning(
                    "Child process %d sent a %s message for task %s while it ran task %s; ignored",
                    child.pid,
                    kind,
                    message.get("task_id"),
                    task_id,
                )
            elif kind == "progress":
                self._store_progress(task_id, message)
            elif kind in ("result", "error"):
                with slot.lock:
                    slot.running = None
                self._store_outcome(running, message)
                return
            else:
                logger.warning(
                    "Child process %d sent unknown message type %r for task %s; ignored",
                    child.pid,
                    kind,
                    task_id,
                )

    def _escalate(self, slot: _Slot, child: ChildProcess, running: _Running) -> None:
        """Send SIGTERM, then SIGKILL, to a child whose task outlives its cancellation."""
        with slot.lock:
            cancel_at = slot.cancel_at
            signalled = slot.signalled
        if cancel_at is None or signalled is signal.SIGKILL:
            return
        elapsed = time.monotonic() - cancel_at
        if signalled is None and elapsed >= self.grace_s:
            signum = signal.SIGTERM
        elif signalled is signal.SIGTERM and elapsed >= 2 * self.grace_s:
            signum = signal.SIGKILL
        else:
            return
        logger.warning(
            "Task %s (%s) still runs %.1f s after its cancellation; sending %s to child process %d",
            running.record.task_id,
            running.record.name,
            elapsed,
            signum.name,
            child.pid,
        )
        with slot.lock:
            slot.signalled = signum
        child.send_signal(signum)

    def _on_child_exit(self, slot: _Slot, child: ChildProcess, running: _Running) -> None:
        record = running.record
        with slot.lock:
            slot.running = None
        code = self._discard_child(slot)
        ending = describe_exit(code)
        if running.cancelled:
            logger.info(
                "Child process %d in slot %d %s after task %s (%s) was cancelled",
                child.pid,
                slot.number,
                ending,
                record.task_id,
                record.name,
            )
            self._worker._forget(record.task_id, running)
            return
        logger.error(
            "Child process %d in slot %d %s while it ran task %s (%s), attempt %d of %d",
            child.pid,
            slot.number,
            ending,
            record.task_id,
            record.name,
            record.attempts,
            record.max_attempts,
        )
        message = f"the child process (pid {child.pid}) running task {record.name!r} {ending}"
        error = codec.make_error("taskfuture.errors", "WorkerLostError", message)
        self._worker._store_error(running, error, f"WorkerLostError: {message}", retryable=True)

    def _store_progress(self, task_id: str, message: dict[str, Any]) -> None:
        try:
            progress = Progress.from_dict(message["progress"])
        except (KeyError, TypeError, ValueError) as exc:
            logger.warning("Task %s sent invalid progress %r: %s", task_id, message, exc)
            return
        self._worker._store_progress(task_id, progress)

    def _store_outcome(self, running: _Running, message: dict[str, Any]) -> None:
        worker = self._worker
        if message["type"] == "result":
            result = message.get("result")
            if not isinstance(result, str):
                worker._finish_failed(
                    running, TypeError(f"the child process sent an invalid result: {result!r}")
                )
                return
            try:
                codec.check_size(result, "result", worker.settings.max_payload_bytes)
            except codec.PayloadTooLargeError as exc:
                worker._finish_failed(running, exc)
                return
            worker._store_result(running, result)
            return
        error = message.get("error")
        if not isinstance(error, str):
            error = codec.make_error(
                "builtins", "RuntimeError", "the child process sent an error without details"
            )
        summary = str(message.get("summary", "an error"))
        worker._store_error(running, error, summary, retryable=message.get("retryable") is True)


def _child_environment() -> dict[str, str]:
    """Return the worker's environment with its ``sys.path`` as PYTHONPATH.

    The child then imports the app module from the folders the worker
    imported it from, wherever it was started.
    """
    paths = dict.fromkeys(entry for entry in sys.path if entry)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
