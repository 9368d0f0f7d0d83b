"""Push wake-up between processes on one host, through Unix datagram sockets.

SQLite has no LISTEN/NOTIFY, but every process that uses one SQLite file runs
on the same host. Each waiting process binds a datagram socket in a folder
derived from the database path; a worker that finishes a task sends the task
id to every socket there, and a submit wakes idle workers the same way.
A receiver's queue holds only a few datagrams (``net.unix.max_dgram_qlen``,
10 by default on Linux), so a burst of outcomes can find it full. The sender
then owes that receiver an empty datagram, which a waiter takes as "re-read
every open future", and a retry thread sends it as soon as the queue has
room: a full queue costs a re-read, not a wait for the safety recheck. A
stale socket, whose process died, is removed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

#: Maximum socket path length the kernel accepts (sun_path is 108 bytes on Linux, with a NUL).
_MAX_SOCKET_PATH = 100
#: Task ids per datagram, well under the default socket buffer.
_IDS_PER_DATAGRAM = 1000
#: Pause between tries to deliver owed re-read requests to full queues.
_RETRY_INTERVAL_S = 0.005
WAITERS = "waiters"
WORKERS = "workers"


def channel_folder(database: Path) -> Path:
    """Return the folder of sockets for ``database``, the same in every process.

    It sits beside the database file unless that path is too long for a
    socket, in which case it is a folder in the temporary directory named by
    a hash of the database's real path.
    """
    real = database.resolve()
    beside = real.with_name(real.name + ".wake")
    if len(str(beside)) + len("/workers/") + 32 <= _MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(str(real).encode()).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"taskfuture-{digest}.wake"


class LocalChannel:
    """Sends and receives wake-up datagrams for one database file."""

    def __init__(self, database: Path) -> None:
        self.folder = channel_folder(database)
        self._sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sender.setblocking(False)
        self._lock = threading.Lock()
        self._listeners: list[_Listener] = []
        self._worker_socket: socket.socket | None = None
        self._worker_path: Path | None = None
        #: Sockets whose full queue dropped a datagram; each is owed a re-read request.
        self._owed: set[Path] = set()
        self._retrier: threading.Thread | None = None
        self._closed = False

    # -- sending -----------------------------------------------------------------

    def announce(self, kind: str, task_ids: Sequence[str]) -> None:
        """Send ``task_ids`` (or an empty wake-up) to every socket of ``kind``."""
        folder = self.folder / kind
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return
        if not names:
            return
        payloads = [
            "\n".join(task_ids[start : start + _IDS_PER_DATAGRAM]).encode("ascii")
            for start in range(0, max(1, len(task_ids)), _IDS_PER_DATAGRAM)
        ]
        for name in names:
            self._send_all(folder / name, payloads)

    def _send_all(self, path: Path, payloads: list[bytes]) -> None:
        for payload in payloads:
            sent = self._send(path, payload)
            if sent is None:
                return
            if not sent:
                self._owe(path)
                return

    def _send(self, path: Path, payload: bytes) -> bool | None:
        """Send one datagram: True when sent, False when the queue is full, None when gone."""
        try:
            with self._lock:
                if self._closed:
                    return None
                self._sender.sendto(payload, str(path))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
                # No socket is bound there any more, because its process died without cleanup.
                with contextlib.suppress(OSError):
                    path.unlink()
            elif exc.errno != errno.ENOENT:
                logger.debug("Wake-up to %s failed: %s", path, exc)
            return None
        return True

    def _owe(self, path: Path) -> None:
        """Remember that ``path`` missed a datagram, and start the retry thread if needed."""
        with self._lock:
            self._owed.add(path)
            if self._retrier is not None or self._closed:
                return
            self._retrier = threading.Thread(
                target=self._deliver_owed, name="taskfuture-wake-retry", daemon=True
            )
        self._retrier.start()

    def _deliver_owed(self) -> None:
        """Send an empty datagram to each owed socket once its queue has room."""
        while True:
            with self._lock:
                owed = list(self._owed)
                if not owed or self._closed:
                    self._retrier = None
                    return
            for path in owed:
                if self._send(path, b"") is not False:
                    with self._lock:
                        self._owed.discard(path)
            time.sleep(_RETRY_INTERVAL_S)

    # -- receiving -----------------------------------------------------------------

    def listen(self, callback: Callable[[list[str]], None]) -> Callable[[], None]:
        """Call ``callback`` with task ids whenever a worker announces a change."""
        listener = _Listener(self._bind(WAITERS), callback)
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            listener.close()
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return stop

    def wait_for_work(self, timeout_s: float, stop: threading.Event) -> None:
        """Block up to ``timeout_s`` until a submit announces work or ``stop`` is set."""
        if stop.is_set():
            return
        if self._worker_socket is None:
            self._worker_path, self._worker_socket = self._bind(WORKERS)
        self._worker_socket.settimeout(timeout_s)
        with contextlib.suppress(TimeoutError, OSError):
            self._worker_socket.recv(65536)
            self._worker_socket.setblocking(False)
            # Drain wake-ups that queued up meanwhile: one claim serves them all.
            with contextlib.suppress(BlockingIOError, OSError):
                while self._worker_socket.recv(65536):
                    pass

    def _bind(self, kind: str) -> tuple[Path, socket.socket]:
        folder = self.folder / kind
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock"
        receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        receiver.bind(str(path))
        return path, receiver

    def close(self) -> None:
        with self._lock:
            listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.close()
        if self._worker_socket is not None:
            self._worker_socket.close()
            if self._worker_path is not None:
                with contextlib.suppress(OSError):
                    self._worker_path.unlink()
            self._worker_socket = None
        with self._lock:
            self._closed = True
            self._owed.clear()
            self._sender.close()


class _Listener:
    """A bound socket and the thread that hands its datagrams to a callback."""

    def __init__(
        self, bound: tuple[Path, socket.socket], callback: Callable[[list[str]], None]
    ) -> None:
        self.path, self.socket = bound
        self.callback = callback
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._run, name="taskfuture-wake", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.socket.settimeout(1.0)
        while not self.closed.is_set():
            try:
                payload = self.socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            ids = [task_id for task_id in payload.decode("ascii", "replace").split("\n") if task_id]
            try:
                self.callback(ids)
            except Exception:
                logger.exception("Wake-up listener failed for %d task id(s)", len(ids))

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.path.unlink()
        self.socket.close()
