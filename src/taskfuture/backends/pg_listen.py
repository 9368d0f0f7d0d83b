"""One LISTEN connection per process and database for PostgreSQL push notifications.

Triggers on each task table call ``pg_notify(<table name>, payload)`` in the
transaction that writes the row, so a notification arrives only after that
transaction commits. A :class:`Listener` owns one autocommit psycopg
connection, LISTENs on the channels its handlers need and calls each handler
from its own thread with the payloads that arrived together. After the
connection drops it reconnects with backoff, LISTENs again and calls every
handler with None, because notifications sent while it was away are lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger(__name__)

#: Called with the payloads that arrived together, or None after a reconnect.
NotifyHandler = Callable[[list[str] | None], None]

#: Seconds without traffic before the listener sends a query to check its connection.
KEEPALIVE_S = 10.0
#: Maximum pause between two reconnect attempts, in seconds.
MAX_BACKOFF_S = 5.0
#: Maximum seconds ``subscribe`` waits for the LISTEN to be in place before it returns anyway.
READY_TIMEOUT_S = 2.0

_LISTENERS: dict[str, Listener] = {}
_LISTENERS_LOCK = threading.Lock()


def subscribe(
    key: str,
    connect: Callable[[], psycopg.Connection[Any]],
    description: str,
    channel: str,
    handler: NotifyHandler,
) -> Callable[[], None]:
    """Call ``handler`` with the payloads sent to ``channel``; return the function that stops it.

    ``key`` names the database (its URL): every subscription of this process
    to that database shares one :class:`Listener` and so one connection. The
    call returns once the LISTEN is in place, so that no later commit is
    missed. When the server cannot be reached it returns after
    ``READY_TIMEOUT_S``, and the handler gets None once the connection is made.
    """
    with _LISTENERS_LOCK:
        listener = _LISTENERS.get(key)
        if listener is None:
            listener = Listener(connect, description)
            _LISTENERS[key] = listener
        listener.register(channel, handler)
    listener.wait_listening(channel)

    def unsubscribe() -> None:
        with _LISTENERS_LOCK:
            idle = listener.unregister(channel, handler)
            if idle and _LISTENERS.get(key) is listener:
                del _LISTENERS[key]
        listener.wake()
        if idle:
            listener.join()

    return unsubscribe


class Listener:
    """A thread with one LISTEN connection that serves every handler of one database."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], description: str) -> None:
        self._connect = connect
        self._description = description
        self._lock = threading.Condition()
        self._handlers: dict[str, list[NotifyHandler]] = {}
        self._listening: set[str] = set()
        self._late = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Reconnects completed after the first connection.
        self.reconnects = 0

    def register(self, channel: str, handler: NotifyHandler) -> None:
        """Add ``handler`` to ``channel`` and start the thread on first use."""
        with self._lock:
            self._handlers.setdefault(channel, []).append(handler)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="taskfuture-pg-listen", daemon=True
                )
                self._thread.start()
        self.wake()

    def wait_listening(self, channel: str) -> None:
        """Wait until ``channel`` is LISTENed; on timeout, make the first LISTEN a resync."""
        with self._lock:
            ready = self._lock.wait_for(
                lambda: channel in self._listening or self._closed, timeout=READY_TIMEOUT_S
            )
            if not ready:
                # The caller goes on without the LISTEN in place, so the
                # commits until it is in place must be re-checked.
                self._late = True

    def unregister(self, channel: str, handler: NotifyHandler) -> bool:
        """Remove ``handler``; return True when none is left, which stops the listener."""
        with self._lock:
            handlers = self._handlers.get(channel, [])
            if handler in handlers:
                handlers.remove(handler)
            if not handlers:
                self._handlers.pop(channel, None)
            if not self._handlers:
                self._closed = True
            return self._closed

    def join(self) -> None:
        """Wait for the stopped thread to end, then release the wake-up pipe."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
            if thread.is_alive():
                return
        os.close(self._wake_read)
        os.close(self._wake_write)

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_write, b"x")

    # -- the listener thread ---------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        connected_before = False
        try:
            while not self._closed:
                try:
                    connection = self._connect()
                except (psycopg.Error, OSError) as exc:
                    logger.warning(
                        "LISTEN connection to %s failed: %s; retrying in %.1f s",
                        self._description,
                        _first_line(exc),
                        backoff,
                    )
                    self._pause(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                backoff = 0.1
                if connected_before:
                    self.reconnects += 1
                    logger.info("LISTEN connection to %s restored", self._description)
                try:
                    self._serve(connection, resync=connected_before)
                except (psycopg.Error, OSError) as exc:
                    if not self._closed:
                        logger.warning(
                            "LISTEN connection to %s lost: %s; reconnecting",
                            self._description,
                            _first_line(exc),
                        )
                finally:
                    connected_before = True
                    with self._lock:
                        self._listening.clear()
                    with contextlib.suppress(psycopg.Error, OSError):
                        connection.close()
        finally:
            with self._lock:
                self._closed = True
                self._lock.notify_all()

    def _pause(self, seconds: float) -> None:
        with contextlib.suppress(OSError):
            select.select([self._wake_read], [], [], seconds)
        self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_read, 512):
                pass

    def _serve(self, connection: psycopg.Connection[Any], resync: bool) -> None:
        socket_fd = connection.fileno()
        while not self._closed:
            self._sync_channels(connection)
            with self._lock:
                resync, self._late = resync or self._late, False
            if resync:
                # Commits made while the connection was down sent notifications
                # no listener received, so every handler must re-check what it waits for.
                resync = False
                self._dispatch_all(None)
            readable, _, _ = select.select([socket_fd, self._wake_read], [], [], KEEPALIVE_S)
            if self._wake_read in readable:
                self._drain_wake()
            if socket_fd in readable:
                self._deliver(connection)
            elif not readable:
                connection.execute("SELECT 1")
                self._deliver(connection)

    def _sync_channels(self, connection: psycopg.Connection[Any]) -> None:
        with self._lock:
            wanted = set(self._handlers)
            listening = set(self._listening)
        for channel in sorted(wanted - listening):
            connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        for channel in sorted(listening - wanted):
            connection.execute(sql.SQL("UNLISTEN {}").format(sql.Identifier(channel)))
        if wanted != listening:
            with self._lock:
                self._listening = wanted
                self._lock.notify_all()
            # Notifications that came in with the LISTEN replies wait in psycopg's backlog.
            self._deliver(connection)

    def _deliver(self, connection: psycopg.Connection[Any]) -> None:
        payloads: dict[str, list[str]] = {}
        for notify in connection.notifies(timeout=0):
            payloads.setdefault(notify.channel, []).append(notify.payload)
        for channel, batch in payloads.items():
            with self._lock:
                handlers = list(self._handlers.get(channel, ()))
            for handler in handlers:
                _call(handler, batch)

    def _dispatch_all(self, payloads: list[str] | None) -> None:
        with self._lock:
            handlers = [handler for group in self._handlers.values() for handler in group]
        for handler in handlers:
            _call(handler, payloads)


def _call(handler: NotifyHandler, payloads: list[str] | None) -> None:
    try:
        handler(payloads)
    except Exception:
        logger.exception("Notification handler %r raised", handler)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
