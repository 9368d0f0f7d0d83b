from __future__ import annotations

import threading
import time
from pathlib import Path

from taskfuture.backends.local_channel import WAITERS, WORKERS, LocalChannel, channel_folder


def test_folder_is_beside_short_database_path(tmp_path: Path) -> None:
    database = tmp_path / "t.db"

    folder = channel_folder(database)

    assert folder.parent == database.resolve().parent or folder.name.startswith("taskfuture-")


def test_long_database_path_uses_temporary_folder(tmp_path: Path) -> None:
    database = tmp_path / ("x" * 120) / "tasks.db"

    folder = channel_folder(database)

    assert folder.name.startswith("taskfuture-")
    assert channel_folder(database) == folder


def test_listener_receives_announced_ids(tmp_path: Path) -> None:
    sender = LocalChannel(tmp_path / "a.db")
    receiver = LocalChannel(tmp_path / "a.db")
    received: list[list[str]] = []
    arrived = threading.Event()

    def on_ids(ids: list[str]) -> None:
        received.append(ids)
        arrived.set()

    stop = receiver.listen(on_ids)
    sender.announce(WAITERS, ["one", "two"])

    assert arrived.wait(5)
    assert received == [["one", "two"]]
    stop()
    sender.close()
    receiver.close()


def test_worker_wakes_on_announced_work(tmp_path: Path) -> None:
    worker = LocalChannel(tmp_path / "b.db")
    submitter = LocalChannel(tmp_path / "b.db")
    never = threading.Event()
    worker.wait_for_work(0.01, never)

    threading.Timer(0.05, submitter.announce, (WORKERS, [])).start()
    started = time.monotonic()
    worker.wait_for_work(5, never)

    assert time.monotonic() - started < 4
    worker.close()
    submitter.close()


def test_stale_socket_is_removed(tmp_path: Path) -> None:
    gone = LocalChannel(tmp_path / "c.db")
    gone.listen(lambda ids: None)
    stale = next((gone.folder / WAITERS).iterdir())
    gone._sender.close()
    for listener in gone._listeners:
        listener.closed.set()
        listener.thread.join(5)
        listener.socket.close()

    LocalChannel(tmp_path / "c.db").announce(WAITERS, ["x"])

    assert not stale.exists()


def test_full_queue_is_followed_by_a_reread_request(tmp_path: Path) -> None:
    sender = LocalChannel(tmp_path / "c.db")
    receiver = LocalChannel(tmp_path / "c.db")
    received: list[list[str]] = []
    released = threading.Event()
    reread = threading.Event()

    def on_ids(ids: list[str]) -> None:
        # Hold the first datagram so that the queue behind it fills up.
        released.wait(10)
        received.append(ids)
        if not ids:
            reread.set()

    stop = receiver.listen(on_ids)
    for index in range(100):
        sender.announce(WAITERS, [f"task-{index}"])
    released.set()

    assert reread.wait(5), "no re-read request followed the dropped datagrams"
    delivered = [ids[0] for ids in received if ids]
    assert len(delivered) < 100
    assert received[-1] == []
    stop()
    sender.close()
    receiver.close()
