"""An enqueue's `queued` status rides in its message row (schema version 4).

Every read of the backend must see it as if it were a stored status, until the task's
own row exists, which then wins.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from stem import FakeClock
from stem.contracts import Message, TaskState, TaskStatus
from stem_sqlite import SqliteBroker, SqliteResultBackend

pytestmark = pytest.mark.sqlite

FileAtVersion = Callable[[Path, int], AbstractContextManager[sqlite3.Connection]]


@pytest.fixture
async def backend(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteResultBackend]:
    subject = SqliteResultBackend(db_path, clock=clock)
    yield subject
    await subject.aclose()


def queued(task_id: str, task: str = "t") -> tuple[TaskStatus, float | None]:
    return TaskStatus(id=task_id, state=TaskState.QUEUED, task=task, queue="q"), None


async def enqueue(
    broker: SqliteBroker, backend: SqliteResultBackend, *ids: str, task: str = "t"
) -> None:
    messages = [Message(id=i, queue="q", body=b"x") for i in ids]
    assert await broker.enqueue(messages, [queued(i, task) for i in ids], backend) == [None] * len(
        ids
    )


def stored_rows(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM stem_task_statuses").fetchone()[0])


async def test_an_enqueue_writes_no_status_row_yet_every_read_sees_queued(
    broker: SqliteBroker, backend: SqliteResultBackend, db_path: Path, clock: FakeClock
) -> None:
    clock.advance(5)
    await enqueue(broker, backend, "a", "b")  # ties list in enqueue order
    clock.advance(1)
    await enqueue(broker, backend, "c", task="other")
    assert stored_rows(db_path) == 0
    status = await backend.get_status("a")
    assert status is not None
    assert (status.state, status.task, status.queue, status.updated_at) == (
        TaskState.QUEUED,
        "t",
        "q",
        clock.now() - 1,
    )
    assert set(await backend.get_statuses(["a", "c", "nope"])) == {"a", "c"}
    assert [s.id for s in await backend.list_statuses(state=TaskState.QUEUED)] == ["c", "a", "b"]
    assert [s.id for s in await backend.list_statuses(task="other")] == ["c"]
    assert [s.id for s in await backend.list_statuses(state=TaskState.QUEUED, task="t")] == [
        "a",
        "b",
    ]
    assert await backend.list_statuses(state=TaskState.STARTED) == []


async def test_the_tasks_own_row_wins_and_is_listed_once(
    broker: SqliteBroker, backend: SqliteResultBackend
) -> None:
    await enqueue(broker, backend, "a")
    await backend.set_status(TaskStatus(id="a", state=TaskState.STARTED, task="t"))
    status = await backend.get_status("a")
    assert status is not None and status.state is TaskState.STARTED
    assert [s.state for s in await backend.list_statuses()] == [TaskState.STARTED]
    assert (await backend.get_statuses(["a"]))["a"].state is TaskState.STARTED


async def test_an_expired_row_is_not_brought_back_by_the_message(
    broker: SqliteBroker, backend: SqliteResultBackend, clock: FakeClock
) -> None:
    await enqueue(broker, backend, "a")
    await backend.set_status(TaskStatus(id="a", state=TaskState.STARTED, task="t"), ttl=1)
    clock.advance(2)
    assert await backend.get_status("a") is None
    assert await backend.get_statuses(["a"]) == {}
    assert await backend.list_statuses() == []


async def test_reusing_a_task_id_replaces_its_old_status(
    broker: SqliteBroker, backend: SqliteResultBackend
) -> None:
    await backend.set_status(TaskStatus(id="a", state=TaskState.SUCCEEDED, task="t"))
    await enqueue(broker, backend, "a")
    status = await backend.get_status("a")
    assert status is not None and status.state is TaskState.QUEUED


async def test_expire_gives_a_riding_status_a_row_that_expires(
    broker: SqliteBroker, backend: SqliteResultBackend, clock: FakeClock
) -> None:
    await enqueue(broker, backend, "a")
    assert await backend.expire("a", 10)
    status = await backend.get_status("a")
    assert status is not None and status.state is TaskState.QUEUED
    assert status.expires_at == clock.now() + 10
    clock.advance(11)
    assert await backend.get_status("a") is None
    assert not await backend.expire("nope", 10)


async def test_a_status_with_a_ttl_is_stored_as_a_row(
    broker: SqliteBroker, backend: SqliteResultBackend, db_path: Path
) -> None:
    # Only a plain `queued` status rides in the message: anything else keeps its row.
    status = TaskStatus(id="a", state=TaskState.QUEUED, task="t")
    await broker.enqueue([Message(id="a", queue="q", body=b"x")], [(status, 60.0)], backend)
    assert stored_rows(db_path) == 1


async def test_the_status_goes_with_its_message(
    broker: SqliteBroker, backend: SqliteResultBackend
) -> None:
    # A purged task is unknown, not queued for ever.
    await enqueue(broker, backend, "a")
    assert await broker.purge("q") == 1
    assert await backend.get_status("a") is None


async def test_version_3_files_keep_their_queued_rows(
    db_path: Path, clock: FakeClock, file_at_version: FileAtVersion
) -> None:
    # Given a file at schema version 3 with a queued status stored the old way
    with file_at_version(db_path, 3) as conn:
        conn.execute(
            "INSERT INTO stem_task_statuses (id, state, task, updated_at, version, data)"
            " VALUES ('old', 'queued', 't', 1.0, 1,"
            ' \'{"id":"old","state":"queued","task":"t","updated_at":1.0}\')'
        )
        conn.execute(
            "INSERT INTO stem_messages (queue, id, body, due) VALUES ('q', 'old', x'00', 1.0)"
        )
    # When current stores open it and enqueue
    broker = SqliteBroker(db_path, clock=clock)
    backend = SqliteResultBackend(db_path, clock=clock)
    try:
        await enqueue(broker, backend, "new")
        # Then both statuses read, the old from its row, the new from its message
        assert {s.id for s in await backend.list_statuses(state=TaskState.QUEUED)} == {
            "old",
            "new",
        }
        assert len(await broker.reserve(["q"], 10, 30)) == 2
    finally:
        await broker.aclose()
        await backend.aclose()
