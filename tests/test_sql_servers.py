"""PostgreSQL and MariaDB with real processes: exactly-once runs, killed workers,
dropped connections, transactional submits, migrations and indexes.

Worker subprocesses load ``sql_worker_app:tasks``; every run of its tasks
inserts a row into a side table, so a test counts runs across processes.
Each test uses its own task table, and on PostgreSQL its own
``application_name`` (on MariaDB its own user), so that it terminates only
the connections it opened.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

from runs_table import runs_table
from taskfuture import StorageError, TaskNotFoundError, TaskService, TaskStatus, Worker
from taskfuture.backends import sql_migrations
from taskfuture.backends.sql import SQLStorage
from taskfuture.cli import main
from taskfuture.errors import ConfigurationError

from apptasks import register
from conftest import (
    ENGINE_DSNS,
    TESTS,
    ServiceFactory,
    require_engine,
    stop_processes,
    unique_table,
)

SERVERS = ["postgresql", "mariadb"]
WORKER_COMMAND = [sys.executable, "-m", "taskfuture", "worker", "--app", "sql_worker_app:tasks"]

pytestmark = pytest.mark.slow


class Server:
    """One test's slice of a database server: its DSN, task table, side table and workers."""

    def __init__(self, engine: str, tmp_path: Path) -> None:
        require_engine(engine)
        base = ENGINE_DSNS[engine]
        assert base is not None
        self.engine = engine
        self.table = unique_table()
        self.runs = f"{self.table}_runs"
        self.tmp_path = tmp_path
        self.admin = sa.create_engine(_with_driver(base), isolation_level="AUTOCOMMIT")
        if engine == "postgresql":
            self.dsn = f"{base}?application_name={self.table}"
            self.user = ""
        else:
            # A user of its own lets the test KILL exactly its connections; the
            # password also shows that errors and logs mask it.
            self.user = self.table
            self.password = f"pw-{uuid.uuid4().hex[:10]}"
            with self.admin.connect() as connection:
                connection.exec_driver_sql(
                    f"CREATE USER '{self.user}'@'%%' IDENTIFIED BY '{self.password}'"
                )
                connection.exec_driver_sql(f"GRANT ALL ON test.* TO '{self.user}'@'%%'")
            self.dsn = f"mysql://{self.user}:{self.password}@127.0.0.1:3306/test"
        runs_table(self.runs).create(self.admin)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.services: list[TaskService] = []

    def service(self, **options: Any) -> TaskService:
        options.setdefault("poll_interval_s", 0.05)
        service = TaskService(self.dsn, table=self.table, **options)
        service.create_schema()
        self.services.append(service)
        return service

    def start_worker(self, concurrency: int = 4, lease_s: float = 30) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env.update(
            TASKFUTURE_DSN=self.dsn,
            TASKFUTURE_TABLE=self.table,
            TASKFUTURE_TEST_RUNS_TABLE=self.runs,
            TASKFUTURE_LEASE=str(lease_s),
            TASKFUTURE_POLL_INTERVAL="0.05",
            PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
        )
        log = (self.tmp_path / f"worker-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(
            [*WORKER_COMMAND, "-c", str(concurrency)],
            cwd=TESTS,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        return process

    def runs_by_key(self) -> dict[int, list[int]]:
        """Return the attempts recorded for each task key."""
        table = runs_table(self.runs)
        runs: dict[int, list[int]] = {}
        with self.admin.connect() as connection:
            for key, attempt in connection.execute(sa.select(table.c.task_key, table.c.attempt)):
                runs.setdefault(key, []).append(attempt)
        return runs

    def terminate_connections(self) -> int:
        """End every server connection this test opened; return how many."""
        with self.admin.connect() as connection:
            if self.engine == "postgresql":
                return len(
                    connection.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": self.table},
                    ).all()
                )
            ids = connection.execute(
                sa.text("SELECT id FROM information_schema.processlist WHERE user = :user"),
                {"user": self.user},
            ).scalars()
            killed = 0
            for connection_id in list(ids):
                with contextlib.suppress(sa.exc.DBAPIError):
                    connection.exec_driver_sql(f"KILL {int(connection_id)}")
                    killed += 1
            return killed

    def close(self) -> None:
        stop_processes(self.processes)
        for service in self.services:
            with contextlib.suppress(Exception):
                service.storage.drop()  # type: ignore[attr-defined]
            service.close()
        with self.admin.connect() as connection:
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {self.runs}")
            if self.user:
                connection.exec_driver_sql(f"DROP USER IF EXISTS '{self.user}'@'%%'")
        self.admin.dispose()


def _with_driver(dsn: str) -> str:
    scheme, rest = dsn.split("://", 1)
    drivers = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    return f"{drivers.get(scheme, scheme)}://{rest}"


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    server = Server(request.param, tmp_path)
    try:
        yield server
    finally:
        server.close()


def wait_until(condition: Callable[[], bool], timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting until {description}")
        time.sleep(0.05)


# -- real processes -----------------------------------------------------------------


def test_four_workers_run_each_task_once(server: Server) -> None:
    # A slow waiter leaves the two cores to the workers: it reads 2 000 ids a pass.
    service = server.service(poll_interval_s=0.5)
    service.declare("record_run")
    for _ in range(4):
        server.start_worker(concurrency=4)

    futures = service.submit_many("record_run", [(key,) for key in range(2000)])
    done, not_done = concurrent.futures.wait(futures, timeout=75)

    assert not not_done, f"{len(not_done)} of 2000 tasks unfinished"
    assert sorted(future.result() for future in done) == list(range(2000))
    runs = server.runs_by_key()
    assert sorted(runs) == list(range(2000))
    assert [key for key, attempts in runs.items() if len(attempts) != 1] == []
    pids = {process.pid for process in server.processes}
    assert all(process.poll() is None for process in server.processes), pids


def test_killed_worker_task_runs_again(server: Server) -> None:
    service = server.service()
    service.declare("record_then_sleep")
    victim = server.start_worker(concurrency=1, lease_s=2)
    future = service.submit("record_then_sleep", 7, 60.0)
    wait_until(lambda: 7 in server.runs_by_key(), 20, "the first attempt started")

    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    server.start_worker(concurrency=1, lease_s=2)

    assert future.result(timeout=30) == 2
    assert server.runs_by_key()[7] == [1, 2]


def test_dropped_connections_recover(server: Server) -> None:
    service = server.service()
    service.declare("record_then_sleep")
    service.declare("record_run")
    server.start_worker(concurrency=2, lease_s=10)
    future = service.submit("record_then_sleep", 1, 2.0)
    # The task's own INSERT must be done: it uses the worker's pool, and a
    # connection killed under it would fail the task rather than the library.
    wait_until(lambda: 1 in server.runs_by_key(), 20, "the task recorded its run")

    assert server.terminate_connections() >= 2

    assert future.result(timeout=30) == 1
    assert service.submit("record_run", 2).result(timeout=30) == 2
    assert service.status(future.task_id) is TaskStatus.COMPLETED


# -- in one process ---------------------------------------------------------------------


def test_caller_retries_after_terminated_connection(server: Server) -> None:
    service = server.service()
    register(service)
    future = service.tasks["add"].submit(1, 2)
    service.status(future.task_id)

    server.terminate_connections()

    assert service.status(future.task_id) is TaskStatus.PENDING
    claimed = service.storage.claim("probe", ["default"], 1, 30)
    assert [record.task_id for record in claimed] == [future.task_id]


def test_storage_error_masks_password(server: Server) -> None:
    scheme = "postgresql" if server.engine == "postgresql" else "mysql"
    service = TaskService(f"{scheme}://someone:s3cret-word@127.0.0.1:1/test", connect_timeout_s=2)
    try:
        with pytest.raises(StorageError) as caught:
            service.status(str(uuid.uuid4()))
    finally:
        service.close()

    assert "s3cret-word" not in str(caught.value)
    assert "***" in str(caught.value)


@pytest.mark.parametrize("engine", [*SERVERS, "sqlite"])
def test_rolled_back_submit_leaves_no_task(
    engine: str, tmp_path: Path, make_engine_service: Callable[[str], TaskService]
) -> None:
    service = make_engine_service(engine)
    app_engine = sa.create_engine(service.storage.engine.url)  # type: ignore[attr-defined]
    try:
        with app_engine.connect() as connection:
            future = service.submit_with_options("add", (1, 2), connection=connection)
            time.sleep(0.3)
            assert future.status() is TaskStatus.PENDING
            assert not future.done()
            assert service.storage.get(future.task_id) is None
            connection.rollback()

        with pytest.raises(TaskNotFoundError):
            future.result(timeout=10)
        assert service.storage.get(future.task_id) is None
    finally:
        app_engine.dispose()


@pytest.mark.parametrize("engine", [*SERVERS, "sqlite"])
def test_committed_session_submit_runs(
    engine: str, make_engine_service: Callable[[str], TaskService]
) -> None:
    service = make_engine_service(engine)
    app_engine = sa.create_engine(service.storage.engine.url)  # type: ignore[attr-defined]
    try:
        with Session(app_engine) as session:
            futures = service.submit_many("add", [(1, 2), (3, 4)], connection=session)
            time.sleep(0.3)
            assert [future.status() for future in futures] == [TaskStatus.PENDING] * 2
            assert not futures[0].cancel()
            session.commit()

        assert [future.result(timeout=10) for future in futures] == [3, 7]
    finally:
        app_engine.dispose()


def test_submit_on_other_database_is_rejected(
    make_engine_service: Callable[[str], TaskService], tmp_path: Path
) -> None:
    service = make_engine_service("sqlite")
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        with other.connect() as connection, pytest.raises(ConfigurationError, match="database"):
            service.submit_with_options("add", (1, 2), connection=connection)
        with pytest.raises(ConfigurationError, match="Connection or ORM Session"):
            service.submit_with_options("add", (1, 2), connection=object())
    finally:
        other.dispose()


@pytest.fixture
def make_engine_service(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], TaskService]]:
    """Build a service with the test tasks and an in-process worker on a named engine."""
    factories: list[ServiceFactory] = []

    def make(engine: str) -> TaskService:
        factory = ServiceFactory(engine, tmp_path)
        factories.append(factory)
        service = factory()
        register(service)
        factory.worker(service, concurrency=2)
        return service

    yield make
    for factory in factories:
        factory.close()


# -- schema -------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [*SERVERS, "sqlite"])
def test_schema_upgrade_migrates_version_one(engine: str, tmp_path: Path) -> None:
    factory = ServiceFactory(engine, tmp_path)
    url = sa.make_url(_with_driver(factory.dsn))
    plain = sa.create_engine(url)
    table = factory.table
    try:
        sql_migrations.upgrade(plain, table, target=1)
        with plain.begin() as connection:
            connection.execute(
                sa.text(
                    f"INSERT INTO {table} (id, name, queue, status, payload, version, attempts, "
                    "max_attempts, created_at, available_at) VALUES "
                    "(:id, 'add', 'default', 'PENDING', :payload, 0, 0, 1, 1, 1)"
                ),
                {"id": str(uuid.uuid4()), "payload": '{"args": [1, 2], "kwargs": {}}'},
            )
        with pytest.raises(ConfigurationError, match="taskfuture schema upgrade"):
            TaskService(factory.dsn, table=table).create_schema()

        result = CliRunner().invoke(
            main, ["--dsn", factory.dsn, "schema", "upgrade"], env={"TASKFUTURE_TABLE": table}
        )
        again = CliRunner().invoke(
            main, ["--dsn", factory.dsn, "schema", "upgrade"], env={"TASKFUTURE_TABLE": table}
        )

        assert result.exit_code == 0, result.output
        assert "applied schema version 2" in result.output
        assert f"applied schema version {sql_migrations.LATEST_VERSION}" in result.output
        assert "already up to date" in again.output
        service = factory(poll_interval_s=0.05)
        assert isinstance(service.storage, SQLStorage)
        assert service.storage.schema_version() == sql_migrations.LATEST_VERSION
        claimed = service.storage.claim("probe", ["default"], 10, 30)
        assert [record.name for record in claimed] == ["add"]
    finally:
        factory.close()
        with plain.begin() as connection:
            sql_migrations.forget(connection, table)
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
            tombstones = sql_migrations.tombstone_table_name(table)
            connection.exec_driver_sql(f"DROP TABLE IF EXISTS {tombstones}")
        plain.dispose()


def test_long_table_names_get_distinct_index_names() -> None:
    first = "t" * 60 + "abc"
    second = "t" * 60 + "abd"

    names = {sql_migrations.index_name(table, "due") for table in (first, second)}

    assert len(names) == 2
    assert all(len(name) <= sql_migrations.MAX_IDENTIFIER for name in names)
    assert sql_migrations.index_name("tasks", "due") == "ix_tasks_due"


@pytest.mark.parametrize("engine", SERVERS)
def test_claim_and_sweep_use_indexes(engine: str, tmp_path: Path) -> None:
    factory = ServiceFactory(engine, tmp_path)
    try:
        service = factory()
        register(service)
        storage = service.storage
        assert isinstance(storage, SQLStorage)
        service.submit_many("add", [(index, 0) for index in range(20000)])
        table = storage.table
        # Most rows of a busy table are finished tasks waiting for expiry.
        with storage.engine.connect() as connection:
            connection.execute(
                table.update().values(status="COMPLETED", expires_at=time.time() + 3600)
            )
            keep = sa.select(table.c.id).order_by(table.c.id).limit(100)
            pending_ids = list(connection.execute(keep).scalars())
            connection.execute(
                table.update()
                .where(table.c.id.in_(pending_ids))
                .values(status="PENDING", expires_at=None)
            )
        plans = _explain_claim_and_sweep(storage)
    finally:
        factory.close()

    claim_index = "due" if engine == "postgresql" else "claim"
    assert sql_migrations.index_name(factory.table, claim_index) in plans["claim"]
    assert sql_migrations.index_name(factory.table, "expires") in plans["sweep"]


def _explain_claim_and_sweep(storage: SQLStorage) -> dict[str, str]:
    table = storage.table.name
    claim = (
        f"SELECT id FROM {table} WHERE status = 'PENDING' AND queue = 'default' "
        f"AND available_at <= {time.time()} ORDER BY available_at, id LIMIT 10"
    )
    sweep = f"SELECT id FROM {table} WHERE expires_at <= {time.time() - 3600} LIMIT 100"
    plans: dict[str, str] = {}
    with storage.engine.connect() as connection:
        connection.exec_driver_sql(
            f"ANALYZE {'TABLE ' if storage.dialect != 'postgresql' else ''}{table}"
        )
        for name, query in (("claim", claim), ("sweep", sweep)):
            rows = connection.exec_driver_sql(f"EXPLAIN {query}").all()
            plans[name] = "\n".join(" ".join(str(value) for value in row) for row in rows)
    return plans


# -- push -------------------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["postgresql"], indirect=True)
def test_push_wakes_worker_and_waiter(server: Server) -> None:
    service = server.service(poll_interval_s=5)
    register(service)
    worker = Worker(service, concurrency=1)
    worker.start()
    try:
        service.tasks["add"].submit(0, 0).result(timeout=15)
        started = time.monotonic()
        result = service.tasks["add"].submit(2, 3).result(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        worker.stop(timeout_s=2)

    assert result == 5
    assert elapsed < 1.0, f"round trip took {elapsed:.2f} s with a 5 s poll interval"


# -- batched outcomes ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine", [*SERVERS, "sqlite"])
def test_transition_many_reports_each_item(engine: str, tmp_path: Path) -> None:
    from taskfuture.errors import ConcurrentModificationError
    from taskfuture.models import Transition

    factory = ServiceFactory(engine, tmp_path)
    try:
        service = factory()
        register(service)
        futures = service.submit_many("add", [(1, 1), (2, 2), (3, 3)])
        claimed = {
            record.task_id: record for record in service.storage.claim("w", ["default"], 3, 30)
        }
        first, second, third = (claimed[future.task_id] for future in futures)
        now = time.time()
        completed = Transition(
            TaskStatus.COMPLETED, finished_at=now, expires_at=now + 60, result="2", release=True
        )
        failed = Transition(
            TaskStatus.FAILED, finished_at=now, expires_at=now + 60, error="{}", release=True
        )

        outcomes = service.storage.transition_many(
            [
                (first.task_id, first.version, completed),
                (second.task_id, second.version - 1, completed),
                (str(uuid.uuid4()), 1, completed),
                (third.task_id, third.version, failed),
            ]
        )
        records = {task_id: service.storage.get(task_id) for task_id in claimed}
    finally:
        factory.close()

    assert outcomes[0] is None
    assert isinstance(outcomes[1], ConcurrentModificationError)
    assert isinstance(outcomes[2], TaskNotFoundError)
    assert outcomes[3] is None
    first_record, second_record, third_record = (records[r.task_id] for r in (first, second, third))
    assert first_record is not None
    assert first_record.status is TaskStatus.COMPLETED
    assert first_record.result == "2"
    assert first_record.worker_id is None
    assert first_record.version == first.version + 1
    assert second_record is not None
    assert second_record.status is TaskStatus.RUNNING
    assert third_record is not None
    assert third_record.status is TaskStatus.FAILED


def test_late_listen_connection_resyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg

    from taskfuture.backends import pg_listen

    require_engine("postgresql")
    monkeypatch.setattr(pg_listen, "READY_TIMEOUT_S", 0.2)
    attempts: list[float] = []

    def connect() -> psycopg.Connection[Any]:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise psycopg.OperationalError("server not up yet")
        return psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True)

    received: list[list[str] | None] = []
    unsubscribe = pg_listen.subscribe(
        f"test-late-{uuid.uuid4().hex}", connect, "test server", "tf_late", received.append
    )
    try:
        wait_until(lambda: None in received, 10, "the late listener asked for a resync")
    finally:
        unsubscribe()

    assert len(attempts) == 3
