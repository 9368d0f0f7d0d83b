"""Private database servers that a test may crash, restart and disconnect.

Each class runs one server of its own on a free loopback port, with its data
in a folder of the test run, so that the shared servers on the default ports
are never disturbed. Every class offers the same operations:

``start()``
    Start the server (creating its data folder on first use) and return once
    it accepts connections.
``kill()``
    Crash it: SIGKILL, or PostgreSQL's immediate stop. No data is flushed and
    clients get no notice, so the next start runs crash recovery.
``restart(down_s)``
    Crash it, stay down ``down_s`` seconds, then start it again on the same
    port with the same data.
``terminate_connections()``
    End every client connection but the admin's own; return how many.
``stop()``
    End the server and release what the object holds.

An acknowledged write survives ``kill()``, because each server writes its
log before it replies. Redis runs with ``appendfsync always``, MariaDB with
``innodb_flush_log_at_trx_commit=2`` and PostgreSQL with ``fsync=off``. The
last two write the log to the operating system at commit, and a process
crash does not lose what the operating system has. The exception is a
PostgreSQL commit made with ``synchronous_commit=off``, as taskfuture makes
its claims and lease extensions: ``kill()`` may lose it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import NoReturn

import psycopg
import pymysql
import pytest
import redis
import sqlalchemy as sa
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy.pool import NullPool

from conftest import IN_CI

#: Maximum seconds a server may take to accept connections after a start.
START_TIMEOUT_S = 30.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that no socket is bound to right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def missing(message: str) -> NoReturn:
    """Skip the test for a missing server binary, or fail it under CI=true."""
    if IN_CI:
        pytest.fail(f"{message}; under CI=true every engine must run")
    pytest.skip(message)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def create_data_folder(command: list[str], timeout_s: float) -> None:
    """Run a server's set-up program, such as initdb, raising CalledProcessError if it fails."""
    subprocess.run(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout_s, check=True
    )


class PrivateServer:
    """The operations every private server offers; see the module docstring."""

    #: Engine name as the tests' parametrization spells it.
    engine = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        #: Password of the DSN's user, so tests can check that messages mask it.
        self.password = f"pw-{uuid.uuid4().hex[:12]}"
        self.dsn = ""

    @property
    def running(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    def terminate_connections(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, down_s: float) -> None:
        """Crash the server, stay down ``down_s`` seconds, then start it with the same data."""
        self.kill()
        time.sleep(down_s)
        self.start()

    def ensure_running(self) -> None:
        """Start the server if a crash left it down, such as after a failed test."""
        if not self.running:
            self.start()


class PrivateRedis(PrivateServer):
    """A redis-server with append-only persistence and a password."""

    engine = "redis"

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing("redis-server is not installed")
        super().__init__(folder)
        self.binary = binary
        self.dsn = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        # No retries: a command to a killed server fails at once.
        self.admin = redis.Redis(
            port=self.port,
            password=self.password,
            socket_timeout=5,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        # appendfsync always writes each command to the log before the reply,
        # so a killed server loses no acknowledged write.
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--requirepass", self.password, "--daemonize", "no", "--save", ""]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.folder)]
        command += ["--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.admin.ping()
                return
            except (redis.ConnectionError, redis.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server on port {self.port} did not start:\n"
                        + _log_tail(self.folder / "redis.log")
                    ) from None
                time.sleep(0.02)

    def kill(self) -> None:
        """Crash the server with SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.admin.connection_pool.disconnect()

    def terminate_connections(self) -> int:
        """Close every client connection, pub/sub ones included, but the admin one."""
        killed = 0
        for kind in ("normal", "pubsub"):
            killed += int(self.admin.client_kill_filter(_type=kind, skipme=True))
        return killed

    def stop(self) -> None:
        self.kill()
        self.admin.close()


def _postgres_binaries() -> tuple[str, str] | None:
    """Return the paths of initdb and pg_ctl: from PATH, else the newest Debian install."""
    initdb = shutil.which("initdb")
    if initdb is None:
        installed = sorted(
            glob.glob("/usr/lib/postgresql/*/bin/initdb"),
            key=lambda path: int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0,
        )
        initdb = installed[-1] if installed else None
    if initdb is None:
        return None
    pg_ctl = Path(initdb).resolve().parent / "pg_ctl"
    if not pg_ctl.exists():
        found = shutil.which("pg_ctl")
        return (initdb, found) if found else None
    return initdb, str(pg_ctl)


class PrivatePostgres(PrivateServer):
    """A PostgreSQL cluster with a ``test`` database, run with ``pg_ctl``.

    The server refuses to run as root, so under root it runs as the
    ``postgres`` user. pytest's base folder is private to root, so the
    server's files then live in a temporary folder of their own that
    ``postgres`` owns, and ``folder`` gets a copy of the server log at
    ``stop()``. The cluster trusts local TCP connections, so the DSN's
    password only shows that messages mask it.
    """

    engine = "postgresql"

    def __init__(self, folder: Path) -> None:
        binaries = _postgres_binaries()
        if binaries is None:
            missing("initdb and pg_ctl of PostgreSQL are not installed")
        self.initdb, self.pg_ctl = binaries
        self.run_as: list[str] = []
        self.home = folder
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                missing("running PostgreSQL as root needs a 'postgres' user, and there is none")
            self.run_as = ["runuser", "-u", "postgres", "--"]
            self.home = Path(tempfile.mkdtemp(prefix="taskfuture-pg-"))
            os.chown(self.home, owner.pw_uid, owner.pw_gid)
        super().__init__(folder)
        self.data = self.home / "data"
        self.log = self.home / "server.log"
        self.dsn = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/test"
        #: Admin access with SQLAlchemy; NullPool, so no connection outlives a crash.
        self.admin = sa.create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/test",
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )

    def _pg_ctl(self, *args: str) -> None:
        completed = subprocess.run(
            [*self.run_as, self.pg_ctl, "-D", str(self.data), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT_S + 10,
            check=False,
        )
        if completed.returncode != 0:
            output = completed.stdout.decode(errors="replace")
            raise RuntimeError(
                f"pg_ctl {' '.join(args)} failed for port {self.port}: {output}\n"
                + _log_tail(self.log)
            )

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def _connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user="postgres",
            dbname=database,
            autocommit=True,
            connect_timeout=5,
        )

    def start(self) -> None:
        created = not self.data.exists()
        if created:
            command = [*self.run_as, self.initdb, "-D", str(self.data), "-A", "trust"]
            command += ["-U", "postgres", "--no-sync", "-E", "UTF8"]
            create_data_folder(command, timeout_s=60)
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._pg_ctl(
            "-o", options, "-l", str(self.log), "-t", str(int(START_TIMEOUT_S)), "-w", "start"
        )
        if created:
            with self._connect() as connection:
                connection.execute("CREATE DATABASE test")

    def kill(self) -> None:
        """Crash the server with an immediate stop: no checkpoint, recovery at the next start."""
        if self.running:
            self._pg_ctl("-m", "immediate", "stop", "-w")

    def terminate_connections(self) -> int:
        """End every client backend but the admin's own with ``pg_terminate_backend``."""
        with self._connect() as connection:
            rows = connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
            ).fetchall()
        return sum(1 for (ended,) in rows if ended)

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.kill()
        self.admin.dispose()
        if self.home != self.folder:
            with contextlib.suppress(OSError):
                shutil.copyfile(self.log, self.folder / "postgresql.log")
            shutil.rmtree(self.home, ignore_errors=True)


class PrivateMariaDB(PrivateServer):
    """A mariadbd child process with a ``test`` database and a user with a password."""

    engine = "mariadb"
    #: The user of the DSN; the admin connects as root, which has no password.
    user = "app"

    def __init__(self, folder: Path) -> None:
        server = shutil.which("mariadbd") or shutil.which("mysqld")
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if server is None or install is None:
            missing("mariadbd and mariadb-install-db are not installed")
        super().__init__(folder)
        self.server_binary = server
        self.install_binary = install
        self.data = folder / "data"
        self.error_log = folder / "error.log"
        self.dsn = f"mysql://{self.user}:{self.password}@127.0.0.1:{self.port}/test"
        self.admin = sa.create_engine(
            f"mysql+pymysql://root@127.0.0.1:{self.port}/test",
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _connect(self) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        return pymysql.connect(
            host="127.0.0.1", port=self.port, user="root", connect_timeout=5, autocommit=True
        )

    def start(self) -> None:
        created = not self.data.exists()
        if created:
            install = [self.install_binary, "--no-defaults", f"--datadir={self.data}"]
            install += ["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"]
            create_data_folder(install, timeout_s=120)
        command = [self.server_binary, "--no-defaults", f"--datadir={self.data}", "--user=root"]
        command += [f"--port={self.port}", "--bind-address=127.0.0.1"]
        command += [f"--socket={self.folder / 'mariadb.sock'}", f"--pid-file={self.folder / 'pid'}"]
        command += ["--skip-log-bin", "--innodb-flush-log-at-trx-commit=2"]
        command += [f"--log-error={self.error_log}"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with self._connect() as connection, connection.cursor() as cursor:
                    cursor.execute("SELECT 1")
                break
            except pymysql.err.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mariadbd on port {self.port} did not start:\n" + _log_tail(self.error_log)
                    ) from None
                time.sleep(0.05)
        if created:
            with self._connect() as connection, connection.cursor() as cursor:
                cursor.execute("CREATE DATABASE test")
                cursor.execute(f"CREATE USER '{self.user}'@'%%' IDENTIFIED BY %s", (self.password,))
                cursor.execute(f"GRANT ALL ON test.* TO '{self.user}'@'%'")

    def kill(self) -> None:
        """Crash the server with SIGKILL."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def terminate_connections(self) -> int:
        """``KILL`` every client connection but the admin's own."""
        killed = 0
        with self._connect() as connection, connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM information_schema.processlist "
                "WHERE id <> CONNECTION_ID() AND command <> 'Daemon'"
            )
            for (connection_id,) in cursor.fetchall():
                try:
                    cursor.execute(f"KILL {int(connection_id)}")
                except pymysql.err.OperationalError:
                    continue  # the connection closed meanwhile
                killed += 1
        return killed

    def stop(self) -> None:
        self.kill()
        self.admin.dispose()


#: Server classes by engine name.
SERVER_CLASSES: dict[str, type[PrivateServer]] = {
    "postgresql": PrivatePostgres,
    "mariadb": PrivateMariaDB,
    "redis": PrivateRedis,
}
