"""The Redis backend on redis-py: one hash per task, one stream per queue.

Every key starts with ``{table}``, a hash tag, so the whole layout maps to one
slot on Redis Cluster:

``{table}:task:<id>``
    Hash holding the task record, plus ``entry``: the id of the task's live
    stream entry while it is queued or running.
``{table}:queue:<name>``
    Stream of task ids, read through the consumer group ``taskfuture``.
    Claimed entries stay pending in the group until the task leaves RUNNING,
    then they are acknowledged and deleted, so a stream holds only live
    entries.
``{table}:queues``
    Set of the queue names that have a stream.
``{table}:delayed``
    Sorted set of PENDING task ids by ``available_at``, for tasks that are
    not due yet. A claim moves due ones into their stream.
``{table}:leases``
    Sorted set of RUNNING task ids by ``lease_until``.
``{table}:expiring``
    Sorted set of finished task ids by ``expires_at``.
``{table}:tombstones``
    Sorted set of the ids of expired, deleted tasks, by the time until which
    they read as expired rather than unknown (``settings.tombstone_s``).
``{table}:changes``
    Pub/sub channel that receives the id of every task that finishes or
    reports progress.

Every write is one Lua script, so a submit, a claim or a transition is one
round trip and atomic. A finished record gets a TTL of its retention (at
least :data:`MIN_TTL_S`), and ``delete_expired`` deletes records whose
``expires_at`` has passed before the TTL does.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

from taskfuture.backends import redis_scripts as scripts
from taskfuture.backends.base import ChangeListener, TaskStorage
from taskfuture.config import Settings
from taskfuture.errors import (
    ConcurrentModificationError,
    ConfigurationError,
    StorageError,
    TaskFutureError,
    TaskNotFoundError,
)
from taskfuture.models import (
    TRANSITION_FIELDS,
    TaskRecord,
    TaskStatus,
    Transition,
    checked_record,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_pack_command: Callable[[tuple[Any, ...]], bytes] | None
try:
    from hiredis import pack_command as _pack_command
except ImportError:  # pragma: no cover - hiredis is installed with the redis extra
    _pack_command = None

#: Seconds a command may wait for its reply when the DSN sets no ``socket_timeout``.
DEFAULT_SOCKET_TIMEOUT_S = 10.0
#: Shortest TTL of a finished record, so that a waiter still reads an outcome
#: whose retention is shorter; ``delete_expired`` removes such records on time.
MIN_TTL_S = 60.0
#: Maximum duration of one blocking read in ``wait_for_work``, so a stop request is seen soon.
MAX_BLOCK_S = 0.5
#: Pending entries checked per queue, and idle time after which a consumer
#: with no pending entries is removed, when ``delete_expired`` sweeps orphans.
ORPHAN_CHECK_LIMIT = 1000
IDLE_CONSUMER_MS = 3_600_000
#: Ids per pipelined read in ``get_many``.
READ_BATCH = 5000

_OPTIONAL_FLOAT_FIELDS = ("started_at", "finished_at", "expires_at", "lease_until")
_OPTIONAL_TEXT_FIELDS = ("worker_id", "result", "error", "progress")
#: Transition fields copied to the hash when set.
_CHANGE_FIELDS = TRANSITION_FIELDS

#: Query options of a ``redis://`` DSN, beside those redis-py parses itself.
_EXTRA_QUERY_OPTIONS = frozenset(
    {
        "client_name",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_ciphers",
        "username",
        "password",
    }
)


class _Script:
    """A Lua script called by its SHA1, sent in full only when the server lacks it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()


_ENQUEUE = _Script(scripts.ENQUEUE)
_TRANSITION = _Script(scripts.TRANSITION)
_CLAIM = _Script(scripts.CLAIM)
_CURSORS = _Script(scripts.CURSORS)
_EXTEND_LEASES = _Script(scripts.EXTEND_LEASES)
_SET_PROGRESS = _Script(scripts.SET_PROGRESS)
_EXPIRED_LEASES = _Script(scripts.EXPIRED_LEASES)
_DELETE_EXPIRED = _Script(scripts.DELETE_EXPIRED)
_EXPIRED_IDS = _Script(scripts.EXPIRED_IDS)
_SWEEP_ORPHANS = _Script(scripts.SWEEP_ORPHANS)


def _pack(args: Sequence[Any]) -> list[bytes]:
    """Encode one command in the Redis protocol, as a list for ``send_packed_command``.

    hiredis does it in C; redis-py's own packer encodes each argument in
    Python, which costs more than the rest of a call when a record takes a
    dozen arguments. Arguments are text or numbers, encoded as UTF-8 like
    redis-py does.
    """
    if _pack_command is not None:
        return [_pack_command(tuple(args))]
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return [b"".join(parts)]


def _text(value: float) -> str:
    return repr(float(value))


def _enqueue_args(record: TaskRecord) -> list[Any]:
    """Return the arguments the enqueue script takes for one record."""
    extra: list[str] = []
    for name in _OPTIONAL_FLOAT_FIELDS:
        value = getattr(record, name)
        if value is not None:
            extra += (name, _text(value))
    for name in _OPTIONAL_TEXT_FIELDS:
        value = getattr(record, name)
        if value is not None:
            extra += (name, value)
    return [
        record.task_id,
        record.queue,
        _text(record.available_at),
        _text(record.created_at),
        record.name,
        record.payload,
        record.max_attempts,
        record.status.value,
        record.version,
        record.attempts,
        len(extra) // 2,
        *extra,
    ]


def _change_fields(change: Transition) -> tuple[list[str], list[str]]:
    """Return the fields a transition sets (names and values) and the fields it deletes."""
    sets: list[str] = []
    for name in _CHANGE_FIELDS:
        if change.release and name in ("lease_until", "worker_id"):
            continue
        value = getattr(change, name)
        if value is None:
            continue
        sets += (name, value if isinstance(value, str) else _text(value))
        if name == "attempts":
            sets[-1] = str(value)
    deletes = ["lease_until", "worker_id"] if change.release else []
    return sets, deletes


def _optional_float(value: str | None) -> float | None:
    return None if value is None else float(value)


def record_from_hash(data: Mapping[str, str], task_id: str | None = None) -> TaskRecord:
    """Build a record from the fields of its hash.

    A hash that taskfuture did not write (a missing field, a value of the wrong
    type, an unknown status) gives a record whose ``damage`` names each bad field.
    """
    try:
        record = _decode_hash(data)
    except (KeyError, ValueError, TypeError):
        pass
    else:
        if record.sound:
            return record
    return checked_record(task_id or data.get("id", ""), data)


def _decode_hash(data: Mapping[str, str]) -> TaskRecord:
    return TaskRecord(
        task_id=data["id"],
        name=data["name"],
        queue=data["queue"],
        status=TaskStatus(data["status"]),
        payload=data["payload"],
        version=int(data["version"]),
        attempts=int(data["attempts"]),
        max_attempts=int(data["max_attempts"]),
        created_at=float(data["created_at"]),
        available_at=float(data["available_at"]),
        started_at=_optional_float(data.get("started_at")),
        finished_at=_optional_float(data.get("finished_at")),
        expires_at=_optional_float(data.get("expires_at")),
        lease_until=_optional_float(data.get("lease_until")),
        worker_id=data.get("worker_id"),
        result=data.get("result"),
        error=data.get("error"),
        progress=data.get("progress"),
    )


def _record_from_flat(flat: Sequence[str]) -> TaskRecord:
    """Build a record from a script's HGETALL reply: names and values alternating."""
    return record_from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))


def _record_from_reply(reply: Mapping[str, str] | Sequence[str], task_id: str) -> TaskRecord:
    """Build a record from a raw HGETALL reply: a map on RESP3, a flat list on RESP2."""
    if isinstance(reply, Mapping):
        return record_from_hash(reply, task_id)
    return record_from_hash(dict(zip(reply[::2], reply[1::2], strict=True)), task_id)


def _connection_pool(settings: Settings) -> redis.ConnectionPool:
    """Build a pool from the DSN; the DSN's query options win over our defaults."""
    query = urllib.parse.urlsplit(settings.dsn).query
    allowed = set(redis.connection.URL_QUERY_ARGUMENT_PARSERS) | _EXTRA_QUERY_OPTIONS
    unknown = sorted(set(urllib.parse.parse_qs(query)) - allowed)
    if unknown:
        raise ConfigurationError(
            f"invalid Redis DSN {settings.masked_dsn!r}: unknown option(s) {', '.join(unknown)}; "
            f"known options: {', '.join(sorted(allowed))}"
        )
    defaults: dict[str, Any] = {
        "socket_connect_timeout": settings.connect_timeout_s,
        "socket_timeout": DEFAULT_SOCKET_TIMEOUT_S,
        "decode_responses": True,
        # Only connection errors are retried: a command whose reply timed out
        # may have run, and running it again could apply it twice.
        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 3, (redis.ConnectionError,)),
    }
    try:
        pool = redis.ConnectionPool.from_url(settings.dsn, **defaults)
        # Building a connection checks the options without connecting.
        pool.connection_class(**pool.connection_kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid Redis DSN {settings.masked_dsn!r}: {exc}") from None
    return pool


class RedisStorage(TaskStorage):
    """Tasks in Redis hashes, queued in streams read through one consumer group."""

    pushes_changes = True

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._pool = _connection_pool(settings)
        self._client = redis.Redis(connection_pool=self._pool)
        self._connections = _Connections(self._pool)
        password = self._pool.connection_kwargs.get("password")
        self._password = str(password) if password else None
        timeout = self._pool.connection_kwargs.get("socket_timeout")
        self._socket_timeout_s = float(timeout) if timeout else None
        self._prefix = "{" + settings.table + "}"
        self._delayed = f"{self._prefix}:delayed"
        self._leases = f"{self._prefix}:leases"
        self._expiring = f"{self._prefix}:expiring"
        self._tombstones = f"{self._prefix}:tombstones"
        self._queues = f"{self._prefix}:queues"
        self._channel = f"{self._prefix}:changes"
        #: Last-delivered id of each queue's group, as the last claim saw it.
        self._cursors: dict[str, str] = {}
        #: Earliest available_at in the delayed index, as the last claim saw it.
        self._next_due: float | None = None
        self._feed: _ChangeFeed | None = None
        self._feed_lock = threading.Lock()

    # -- keys and calls ----------------------------------------------------------

    def _task_key(self, task_id: str) -> str:
        return f"{self._prefix}:task:{task_id}"

    def _queue_key(self, queue: str) -> str:
        return f"{self._prefix}:queue:{queue}"

    def _storage_error(self, exc: Exception) -> StorageError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        return StorageError(f"redis storage failed ({self.description}): {detail}")

    def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            try:
                return self._connections.execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                return self._connections.execute("EVAL", script.text, len(keys), *keys, *args)
        except ResponseError as exc:
            text = str(exc)
            if text.startswith("TASKFUTURE_DUPLICATE "):
                raise ConcurrentModificationError(text.split(" ", 1)[1], 0) from None
            raise self._storage_error(exc) from exc
        except redis.RedisError as exc:
            raise self._storage_error(exc) from exc

    # -- schema ------------------------------------------------------------------

    def setup(self) -> None:
        try:
            version = str(self._client.info("server").get("redis_version", "0"))
        except redis.RedisError as exc:
            raise self._storage_error(exc) from exc
        major = int(version.split(".", 1)[0] or 0) if version.split(".", 1)[0].isdigit() else 0
        if major < 5:
            raise StorageError(
                f"redis storage failed ({self.description}): server version {version} has no "
                "streams; use Redis 5.0 or later"
            )
        self._eval(_CURSORS, [self._delayed], [self._prefix, *self.settings.queues])

    def drop(self) -> None:
        """Delete every key of this table; for tests and tear-down scripts."""
        try:
            batch: list[str] = []
            for key in self._client.scan_iter(match=f"{self._prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 500:
                    self._client.unlink(*batch)
                    batch = []
            if batch:
                self._client.unlink(*batch)
        except redis.RedisError as exc:
            raise self._storage_error(exc) from exc
        self._cursors.clear()

    # -- writes ------------------------------------------------------------------

    def enqueue(self, records: Sequence[TaskRecord], connection: Any = None) -> None:
        if connection is not None:
            raise ConfigurationError(
                "the Redis backend cannot write in an application transaction; "
                "submit without connection="
            )
        if not records:
            return
        keys = [self._delayed]
        args: list[Any] = [self._prefix, _text(time.time())]
        for record in records:
            keys.append(self._task_key(record.task_id))
            args += _enqueue_args(record)
        self._eval(_ENQUEUE, keys, args)

    def transition(self, task_id: str, expected_version: int, change: Transition) -> TaskRecord:
        keys = [self._leases, self._delayed, self._expiring, self._task_key(task_id)]
        args = [self._prefix, _text(time.time()), self._channel, "1"]
        args += self._transition_args(task_id, expected_version, change)
        outcome = self._eval(_TRANSITION, keys, args)[0]
        if outcome == "missing":
            raise TaskNotFoundError(task_id)
        if outcome == "conflict":
            raise ConcurrentModificationError(task_id, expected_version)
        return _record_from_flat(outcome)

    def transition_many(
        self, changes: Sequence[tuple[str, int, Transition]]
    ) -> list[TaskFutureError | None]:
        """Apply every transition in one script, so a batch costs one round trip."""
        if not changes:
            return []
        keys = [self._leases, self._delayed, self._expiring]
        args = [self._prefix, _text(time.time()), self._channel, "0"]
        for task_id, expected_version, change in changes:
            keys.append(self._task_key(task_id))
            args += self._transition_args(task_id, expected_version, change)
        try:
            outcomes = self._eval(_TRANSITION, keys, args)
        except StorageError as exc:
            return [exc] * len(changes)
        results: list[TaskFutureError | None] = []
        for (task_id, expected_version, _), outcome in zip(changes, outcomes, strict=True):
            if outcome == "missing":
                results.append(TaskNotFoundError(task_id))
            elif outcome == "conflict":
                results.append(ConcurrentModificationError(task_id, expected_version))
            else:
                results.append(None)
        return results

    def _transition_args(
        self, task_id: str, expected_version: int, change: Transition
    ) -> list[Any]:
        """Return the transition script's arguments for one item."""
        sets, deletes = _change_fields(change)
        now = time.time()
        expires_at = change.expires_at
        if expires_at is None:
            expires_at = now + self.settings.retention_s
        ttl_ms = max(math.ceil((expires_at - now) * 1000), int(MIN_TTL_S * 1000))
        return [
            task_id,
            str(expected_version),
            change.status.value,
            ttl_ms,
            len(sets) // 2,
            *sets,
            len(deletes),
            *deletes,
        ]

    def claim(
        self, worker_id: str, queues: Sequence[str], limit: int, lease_s: float
    ) -> list[TaskRecord]:
        if limit < 1 or not queues:
            return []
        now = time.time()
        claimed, cursors, next_due = self._eval(
            _CLAIM,
            [self._delayed, self._leases],
            [self._prefix, worker_id, _text(now), _text(now + lease_s), limit, *queues],
        )
        self._remember(queues, cursors, next_due)
        return [_record_from_flat(flat) for flat in claimed]

    def _remember(self, queues: Sequence[str], cursors: Sequence[str], next_due: Any) -> None:
        """Keep what ``wait_for_work`` needs from a claim or cursor reply."""
        if cursors:
            self._cursors.update(zip(queues, cursors, strict=True))
        self._next_due = float(next_due) if next_due else None

    def extend_leases(self, worker_id: str, task_ids: Sequence[str], lease_s: float) -> set[str]:
        if not task_ids:
            return set()
        held = self._eval(
            _EXTEND_LEASES,
            [self._leases],
            [self._prefix, worker_id, _text(time.time() + lease_s), *task_ids],
        )
        return set(held)

    def set_progress(self, task_id: str, worker_id: str, progress: str) -> bool:
        stored = self._eval(
            _SET_PROGRESS,
            [self._task_key(task_id)],
            [self._prefix, worker_id, progress, self._channel, task_id],
        )
        return bool(stored)

    def find_expired_leases(self, limit: int) -> list[TaskRecord]:
        expired = self._eval(
            _EXPIRED_LEASES, [self._leases], [self._prefix, _text(time.time()), limit]
        )
        return [_record_from_flat(flat) for flat in expired]

    def delete_expired(self, limit: int) -> int:
        if limit < 1:
            return 0
        now = time.time()
        deleted = int(
            self._eval(
                _DELETE_EXPIRED,
                [self._expiring, self._tombstones],
                [self._prefix, _text(now), limit, _text(now + self.settings.tombstone_s)],
            )
        )
        if deleted < limit:
            removed = self._eval(
                _SWEEP_ORPHANS, [self._queues], [self._prefix, ORPHAN_CHECK_LIMIT, IDLE_CONSUMER_MS]
            )
            if removed:
                logger.info(
                    "Removed %d orphaned stream entries and idle consumers from %s",
                    removed,
                    self.description,
                )
        return deleted

    def expired_ids(self, task_ids: Sequence[str]) -> set[str]:
        if not task_ids:
            return set()
        expired = self._eval(
            _EXPIRED_IDS,
            [self._expiring, self._tombstones],
            [self._prefix, _text(time.time()), *task_ids],
        )
        return set(expired)

    # -- reads -------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        try:
            reply = self._connections.execute("HGETALL", self._task_key(task_id))
        except redis.RedisError as exc:
            raise self._storage_error(exc) from exc
        return _record_from_reply(reply, task_id) if reply else None

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        if len(task_ids) == 1:
            record = self.get(task_ids[0])
            return [] if record is None else [record]
        records: list[TaskRecord] = []
        try:
            for start in range(0, len(task_ids), READ_BATCH):
                batch = task_ids[start : start + READ_BATCH]
                commands = [("HGETALL", self._task_key(task_id)) for task_id in batch]
                replies = self._connections.execute_many(commands)
                records.extend(
                    _record_from_reply(reply, task_id)
                    for task_id, reply in zip(batch, replies, strict=True)
                    if reply
                )
        except redis.RedisError as exc:
            raise self._storage_error(exc) from exc
        return records

    # -- waiting -----------------------------------------------------------------

    def wait_for_work(self, queues: Sequence[str], timeout_s: float, stop: threading.Event) -> None:
        """Block on the queue streams until an undelivered entry exists, ``timeout_s``
        passes, a delayed task falls due or ``stop`` is set.

        The read starts after each group's last-delivered id, so an entry added
        since the last claim wakes the worker at once. Nothing is consumed here:
        the next ``claim`` reads the entries. Errors are logged, not raised.
        """
        deadline = time.monotonic() + timeout_s
        try:
            if any(queue not in self._cursors for queue in queues):
                cursors, next_due = self._eval(_CURSORS, [self._delayed], [self._prefix, *queues])
                self._remember(queues, cursors, next_due)
            streams: dict[Any, Any] = {
                self._queue_key(queue): self._cursors[queue] for queue in queues
            }
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if self._next_due is not None:
                    remaining = min(remaining, self._next_due - time.time())
                if remaining <= 0:
                    return
                block_s = min(remaining, MAX_BLOCK_S)
                if self._socket_timeout_s:
                    block_s = min(block_s, self._socket_timeout_s / 2)
                block_ms = max(1, int(block_s * 1000))
                reply = self._connections.execute(
                    "XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", *streams, *streams.values()
                )
                if reply:
                    return
        except (StorageError, redis.RedisError) as exc:
            logger.warning("Waiting for work on %s failed: %s", self.description, exc)
            stop.wait(max(0.0, deadline - time.monotonic()))

    def subscribe(self, listener: ChangeListener) -> Callable[[], None] | None:
        with self._feed_lock:
            if self._feed is None or not self._feed.alive:
                self._feed = _ChangeFeed(self._pool, self._channel, self.description)
            feed = self._feed
        return feed.add(listener)

    def close(self) -> None:
        with self._feed_lock:
            if self._feed is not None:
                self._feed.stop()
                self._feed = None
        self._connections.close()
        self._pool.disconnect()


class _Connections:
    """Connections used directly, without redis-py's per-command client layer.

    A command takes an idle connection (or opens one), sends, reads the reply
    and puts the connection back. In a loop of EVALSHA calls with redis-py 8.2
    and hiredis on a 2-core machine, this took about 35 µs of CPU per call
    against 65 µs through ``Redis.execute_command``; that difference bounds
    how many submits a second one thread can make.
    """

    #: Tries again after a connection that was open failed, such as one the
    #: server closed; a connection that fails to open was already retried.
    RETRIES = 3

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._idle: collections.deque[Any] = collections.deque()
        self._created: list[Any] = []
        self._lock = threading.Lock()

    def _take(self) -> Any:
        # An idle connection is not polled first (a poll costs about as much
        # CPU as the command): if the server closed it, the command fails with
        # ConnectionError before the server receives it, and run() retries it.
        # A connection goes back idle only after its reply was read in full.
        try:
            return self._idle.pop()
        except IndexError:
            connection = self._pool.connection_class(**self._pool.connection_kwargs)
            with self._lock:
                self._created.append(connection)
            return connection

    def run(self, operation: Callable[[Any], _T]) -> _T:
        """Call ``operation(connection)``; retry on a fresh connection if an open one failed."""
        failures = 0
        while True:
            connection = self._take()
            was_connected = connection.is_connected
            try:
                result = operation(connection)
            except ResponseError:
                self._idle.append(connection)
                raise
            except redis.ConnectionError:
                connection.disconnect()
                self._idle.append(connection)
                failures += 1
                if not was_connected or failures > self.RETRIES:
                    raise
                time.sleep(min(0.2, 0.02 * 2 ** (failures - 1)))
                continue
            except BaseException:
                # A timeout or an interrupt leaves the reply unread: drop the socket.
                connection.disconnect()
                self._idle.append(connection)
                raise
            self._idle.append(connection)
            return result

    def execute(self, *args: Any) -> Any:
        """Send one command and return its raw reply."""
        packed = _pack(args)

        def send(connection: Any) -> Any:
            connection.send_packed_command(packed)
            return connection.read_response()

        return self.run(send)

    def execute_many(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Send ``commands`` in one write and return their raw replies, in order.

        Every reply is read even when one is an error, so the connection stays
        usable; the first error is raised after the last reply.
        """

        packed = [b"".join(_pack(command)[0] for command in commands)]

        def send(connection: Any) -> list[Any]:
            connection.send_packed_command(packed)
            replies: list[Any] = []
            error: ResponseError | None = None
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:
                    error = error or exc
                    replies.append(None)
            if error is not None:
                raise error
            return replies

        return self.run(send)

    def close(self) -> None:
        with self._lock:
            created, self._created = self._created, []
        self._idle.clear()
        for connection in created:
            connection.disconnect()


class _ChangeFeed:
    """One pub/sub connection and thread passing published task ids to listeners.

    After each subscribe, including a re-subscribe after a lost connection,
    listeners are called with an empty list: messages published while the
    connection was down are lost, so they must re-check what they watch.
    """

    #: Maximum number of ids collected from received messages before the listeners are called.
    BATCH = 1000
    #: How long one read waits for a message, so a stop request is seen soon.
    READ_TIMEOUT_S = 0.25

    def __init__(self, pool: redis.ConnectionPool, channel: str, description: str) -> None:
        self._client = redis.Redis(connection_pool=pool)
        self._channel = channel
        self._description = description
        self._listeners: list[ChangeListener] = []
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        return not self._stopped.is_set()

    def add(self, listener: ChangeListener) -> Callable[[], None]:
        """Add ``listener``, starting the thread on the first one; return its unsubscribe."""
        with self._lock:
            self._listeners.append(listener)
            # Started only now, so the first subscribe confirmation reaches the
            # listener and it re-checks what was published before.
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="taskfuture-redis-feed", daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
                if not self._listeners:
                    self._stopped.set()

        return unsubscribe

    def stop(self) -> None:
        """Ask the thread to close its connection and end; it does within ``READ_TIMEOUT_S``."""
        self._stopped.set()

    def _deliver(self, task_ids: list[str]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(task_ids)
            except Exception:
                logger.exception("Change listener failed for %d task id(s)", len(task_ids))

    def _run(self) -> None:
        pause_s = 0.05
        failures = 0
        while not self._stopped.is_set():
            pubsub = self._client.pubsub()
            try:
                pubsub.subscribe(self._channel)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=self.READ_TIMEOUT_S)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        if failures:
                            logger.info(
                                "Change feed on %s subscribed again after %d failure(s)",
                                self._description,
                                failures,
                            )
                        failures = 0
                        pause_s = 0.05
                        self._deliver([])
                    elif message["type"] == "message":
                        task_ids, resubscribed = self._drain(pubsub, [message["data"]])
                        self._deliver(task_ids)
                        if resubscribed:
                            self._deliver([])
            except (redis.RedisError, OSError) as exc:
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                logger.log(
                    level,
                    "Change feed on %s lost its connection (failure %d): %s; reconnecting",
                    self._description,
                    failures,
                    exc,
                )
                self._stopped.wait(pause_s)
                pause_s = min(pause_s * 2, 2.0)
            finally:
                try:
                    pubsub.close()
                except redis.RedisError:
                    logger.debug("Closing the change feed connection failed", exc_info=True)

    def _drain(self, pubsub: Any, task_ids: list[str]) -> tuple[list[str], bool]:
        """Add the ids of messages already received, without waiting, up to ``BATCH``.

        Also returns whether a subscribe confirmation was among them, which
        means the connection was re-established in between.
        """
        resubscribed = False
        while len(task_ids) < self.BATCH:
            message = pubsub.get_message(timeout=0)
            if message is None:
                break
            if message["type"] == "message":
                task_ids.append(message["data"])
            elif message["type"] == "subscribe":
                resubscribed = True
        return task_ids, resubscribed
