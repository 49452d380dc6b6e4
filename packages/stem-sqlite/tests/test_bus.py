"""Wake-ups between processes: datagrams, and the checks that stand in for a lost one."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stem import FakeClock, TaskState, TaskStatus
from stem_sqlite import SqliteBroker, SqliteResultBackend, _wake
from stem_sqlite._bus import QUEUES, WakeBus

pytestmark = pytest.mark.sqlite

Run = Callable[..., Any]

PUBLISH = """
import asyncio, sys
from stem.contracts import Message
from stem_sqlite import SqliteBroker

async def main():
    broker = SqliteBroker(sys.argv[1])
    try:
        await broker.publish(Message(id=sys.argv[2], queue=sys.argv[3], body=b"from afar"))
    finally:
        await broker.aclose()

asyncio.run(main())
"""

SET_STATUS = """
import asyncio, sys
from stem import TaskState, TaskStatus
from stem_sqlite import SqliteResultBackend

async def main():
    backend = SqliteResultBackend(sys.argv[1])
    try:
        await backend.set_status(TaskStatus(id=sys.argv[2], state=TaskState.SUCCEEDED, value=42))
    finally:
        await backend.aclose()

asyncio.run(main())
"""


@pytest.fixture
def no_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters check for other processes' commits only once an hour: a wait that ends
    within the test's few seconds was ended by a datagram."""
    monkeypatch.setattr(_wake, "FIRST_PROBE", 3600.0)


@pytest.fixture
def no_datagrams(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a platform without Unix sockets: only the checks can notice."""
    monkeypatch.setattr(WakeBus, "_ready", lambda self: False)


@pytest.mark.parametrize("mode", ["no_checks", "no_datagrams"])
async def test_a_publish_in_another_process_wakes_a_waiting_consumer(
    mode: str, request: pytest.FixtureRequest, db_path: Path, run_python: Run
) -> None:
    request.getfixturevalue(mode)
    broker = SqliteBroker(db_path, clock=FakeClock(), wake_interval=3600)
    try:
        assert await broker.reserve(["q"], 1, 30) == []
        waiter = asyncio.create_task(broker.wait_for_messages(["q"], 3600))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        result = await asyncio.to_thread(run_python, PUBLISH, str(db_path), "far", "q")
        assert result.returncode == 0, result.stderr
        await asyncio.wait_for(waiter, 20)
        assert len(await broker.reserve(["q"], 1, 30)) == 1
    finally:
        await broker.aclose()


@pytest.mark.usefixtures("no_checks")
async def test_a_datagram_for_another_queue_does_not_end_the_wait(
    db_path: Path, run_python: Run
) -> None:
    clock = FakeClock()
    broker = SqliteBroker(db_path, clock=clock, wake_interval=3600)
    try:
        waiter = asyncio.create_task(broker.wait_for_messages(["q"], 3600))
        result = await asyncio.to_thread(run_python, PUBLISH, str(db_path), "x", "elsewhere")
        assert result.returncode == 0, result.stderr
        await asyncio.sleep(0.1)
        assert not waiter.done()
        clock.advance(3600)
        await asyncio.wait_for(waiter, 10)
    finally:
        await broker.aclose()


@pytest.mark.parametrize("mode", ["no_checks", "no_datagrams"])
async def test_a_status_stored_in_another_process_wakes_its_watcher(
    mode: str, request: pytest.FixtureRequest, db_path: Path, run_python: Run
) -> None:
    request.getfixturevalue(mode)
    backend = SqliteResultBackend(db_path, clock=FakeClock(), wake_interval=3600)
    try:
        await backend.set_status(TaskStatus(id="t1", state=TaskState.STARTED))
        seen: list[TaskState] = []

        async def watch() -> None:
            async for status in backend.watch("t1"):
                seen.append(status.state)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.05)
        assert seen == [TaskState.STARTED]
        result = await asyncio.to_thread(run_python, SET_STATUS, str(db_path), "t1")
        assert result.returncode == 0, result.stderr
        await asyncio.wait_for(watcher, 20)
        assert seen == [TaskState.STARTED, TaskState.SUCCEEDED]
    finally:
        await backend.aclose()


@pytest.fixture
def bus(tmp_path: Path) -> WakeBus:
    return WakeBus(str(tmp_path / "x.db"))


def test_a_socket_left_by_a_dead_process_is_removed_by_the_next_send(bus: WakeBus) -> None:
    assert bus._ready()
    dead = os.path.join(bus.directory, f"{QUEUES}-999999-dead")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(dead)
    sock.close()  # its file stays, refusing datagrams, as after a kill -9
    bus.send(QUEUES, b"q")
    assert not os.path.exists(dead)


async def test_a_listening_socket_gets_the_datagram_and_goes_when_dropped(
    bus: WakeBus, monkeypatch: pytest.MonkeyPatch
) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue()
    handle = bus.listen(asyncio.get_running_loop(), QUEUES, got.put_nowait)
    assert handle is not None
    # This process skips its own sockets (its waiters are woken in-process)...
    bus.send(QUEUES, b"mine")
    # ...and another process (a forked child, say: another pid) sends to them
    monkeypatch.setattr(os, "getpid", lambda: 1)
    sender = WakeBus(bus.directory.replace("stem-wake-", "unused-") + ".db")
    sender.directory = bus.directory
    sender.send(QUEUES, b"q\nother")
    monkeypatch.undo()
    assert await asyncio.wait_for(got.get(), 5) == b"q\nother"
    assert got.empty()
    [name] = os.listdir(bus.directory)
    del handle
    assert os.listdir(bus.directory) == []
    assert name.startswith(f"{QUEUES}-{os.getpid()}-")


def test_a_directory_that_is_not_this_users_own_turns_datagrams_off(tmp_path: Path) -> None:
    bus = WakeBus(str(tmp_path / "x.db"))
    bus.directory = str(tmp_path / "a-file")
    Path(bus.directory).write_text("not a directory")
    assert not bus._ready()
    loop = asyncio.new_event_loop()
    try:
        assert bus.listen(loop, QUEUES, lambda _: None) is None
    finally:
        loop.close()
    bus.send(QUEUES, b"q")  # nothing to send to, and no error
