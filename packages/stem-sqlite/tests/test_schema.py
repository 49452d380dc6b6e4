"""Schema creation, migrations, and every kind of bad file, with what stays safe."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import msgspec
import pytest

from stem import AdapterError, FakeClock, SchemaVersionError
from stem.contracts import Message, RevokeEntry, ScheduleEntry, TaskState, WorkflowRun
from stem_sqlite import (
    SCHEMA_VERSION,
    SqliteBroker,
    SqliteResultBackend,
    SqliteRevokeStore,
    SqliteScheduleStore,
    SqliteWorkflowStore,
)
from stem_sqlite._schema import migrations, split_statements

pytestmark = pytest.mark.sqlite

FileAtVersion = Callable[[Path, int], AbstractContextManager[sqlite3.Connection]]

Run = Callable[..., subprocess.CompletedProcess[str]]

TABLES = {
    "stem_schema",
    "stem_messages",
    "stem_dead_letters",
    "stem_task_statuses",
    "stem_groups",
    "stem_group_results",
    "stem_heartbeats",
    "stem_locks",
    "stem_revokes",
    "stem_schedules",
    "stem_subscriptions",
    "stem_workflow_runs",
    "stem_workflow_steps",
    "stem_workflow_watchers",
    "stem_workflow_mail",
}


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def schema_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT version FROM stem_schema").fetchone()[0])
    finally:
        conn.close()


async def put(path: Path, *ids: str) -> None:
    broker = SqliteBroker(path, clock=FakeClock())
    try:
        await broker.publish_many([Message(id=i, queue="q", body=i.encode()) for i in ids])
    finally:
        await broker.aclose()


def read(path: Path) -> bytes:
    return path.read_bytes()


def write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def message_ids(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM stem_messages ORDER BY seq")]
    finally:
        conn.close()


# -- creation and migrations --------------------------------------------------------------


async def test_first_use_creates_directories_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "stem.db"
    await put(path, "m1")
    assert tables(path) >= TABLES
    assert schema_version(path) == SCHEMA_VERSION
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_reopening_keeps_data_and_applies_nothing(db_path: Path) -> None:
    await put(db_path, "m1")
    await put(db_path, "m2")
    assert message_ids(db_path) == ["m1", "m2"]
    assert schema_version(db_path) == SCHEMA_VERSION


async def test_migrates_an_existing_sqlite_file_without_touching_its_tables(db_path: Path) -> None:
    # Given a SQLite file another program already uses
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE app_users (name TEXT)")
        conn.execute("INSERT INTO app_users VALUES ('ada')")
    conn.close()
    # When Stem uses it
    await put(db_path, "m1")
    # Then Stem's tables are added beside the program's, which are intact
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT name FROM app_users").fetchall() == [("ada",)]
    conn.close()
    assert tables(db_path) >= TABLES


def test_migrations_are_numbered_from_one_and_split_into_statements() -> None:
    found = migrations()
    assert [m.version for m in found] == list(range(1, SCHEMA_VERSION + 1))
    assert found[0].name == "0001_initial.sql"
    assert all(s.rstrip().endswith(";") for m in found for s in m.statements)


def test_split_statements_keeps_semicolons_in_strings_and_refuses_a_fragment() -> None:
    sql = (
        "-- a comment; not a statement\n"
        "CREATE TABLE t (x TEXT DEFAULT ';');\n"
        "INSERT INTO t VALUES ('a;b');\n"
        "-- end\n"
    )
    assert split_statements(sql) == (
        "-- a comment; not a statement\nCREATE TABLE t (x TEXT DEFAULT ';');",
        "INSERT INTO t VALUES ('a;b');",
    )
    with pytest.raises(ValueError, match="incomplete"):
        split_statements("CREATE TABLE t (x TEXT")


CONCURRENT_OPEN = """
import asyncio, sys
from stem.contracts import Message
from stem_sqlite import SqliteBroker

async def main():
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    sys.stdin.readline()  # all processes start together
    broker = SqliteBroker(sys.argv[1], busy_timeout=30)
    try:
        await broker.publish(Message(id=sys.argv[2], queue="q", body=b"x"))
    finally:
        await broker.aclose()

asyncio.run(main())
"""


def test_processes_opening_a_new_file_at_once_migrate_it_once(db_path: Path) -> None:
    # Given several processes waiting to open the same file, which does not exist yet
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_OPEN, str(db_path), f"p{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
        # When they are released together
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = [proc.communicate(timeout=60) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    # Then every one succeeded, the schema is there once, and every message is stored
    assert [p.returncode for p in procs] == [0] * len(procs), results
    assert schema_version(db_path) == SCHEMA_VERSION
    assert sorted(message_ids(db_path)) == [f"p{i}" for i in range(6)]


# -- bad input ---------------------------------------------------------------------------------


async def test_a_newer_schema_is_refused_and_the_file_left_alone(db_path: Path) -> None:
    # Given a file written by a newer stem-sqlite, holding a message
    await put(db_path, "precious")
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE stem_schema SET version = ?", (SCHEMA_VERSION + 1,))
    conn.close()
    before = read(db_path)
    # When this version opens it
    broker = SqliteBroker(db_path)
    with pytest.raises(SchemaVersionError) as caught:
        await broker.pending_count("q")
    await broker.aclose()
    # Then the error names the file and says to upgrade, and the file is unchanged
    message = str(caught.value)
    assert str(db_path) in message
    assert "pip install -U stem-sqlite" in message
    assert read(db_path) == before
    assert message_ids(db_path) == ["precious"]


async def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(db_path: Path) -> None:
    garbage = b"these are my notes, not a database\n" * 200
    write(db_path, garbage)
    backend = SqliteResultBackend(db_path)
    with pytest.raises(AdapterError, match="is not a SQLite database") as caught:
        await backend.get_status("t1")
    await backend.aclose()
    assert str(db_path) in str(caught.value)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert read(db_path) == garbage


async def test_a_path_under_a_regular_file_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me")
    path = blocker / "stem.db"
    broker = SqliteBroker(path)
    with pytest.raises(AdapterError, match="cannot create the directory") as caught:
        await broker.publish(Message(id="m", queue="q", body=b""))
    await broker.aclose()
    assert str(path) in str(caught.value)
    assert blocker.read_text() == "keep me"


async def test_a_directory_where_the_file_should_be_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "stem.db"
    path.mkdir()
    (path / "inside.txt").write_text("keep me")
    broker = SqliteBroker(path)
    with pytest.raises(AdapterError, match="is a directory") as caught:
        await broker.pending_count("q")
    await broker.aclose()
    assert str(path) in str(caught.value)
    assert (path / "inside.txt").read_text() == "keep me"


async def test_a_lock_held_beyond_the_busy_timeout_is_a_clear_error(db_path: Path) -> None:
    # Given a file with a message, and another connection holding its write lock
    await put(db_path, "precious")
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    broker = SqliteBroker(db_path, busy_timeout=0.05)
    try:
        # When a write waits longer than the busy timeout
        with pytest.raises(AdapterError, match="locked") as caught:
            await broker.publish(Message(id="late", queue="q", body=b""))
        message = str(caught.value)
        assert str(db_path) in message
        assert "another process" in message
        assert "busy_timeout" in message
        # Then reads still work meanwhile (WAL), and nothing was lost or half-written
        assert await broker.pending_count("q") == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await broker.publish(Message(id="after", queue="q", body=b""))
    await broker.aclose()
    assert message_ids(db_path) == ["precious", "after"]


async def test_a_failed_open_is_retried_on_the_next_use(tmp_path: Path) -> None:
    # Given a path that cannot be created yet
    blocker = tmp_path / "data"
    blocker.write_text("")
    broker = SqliteBroker(blocker / "stem.db")
    with pytest.raises(AdapterError):
        await broker.pending_count("q")
    # When the obstacle is removed, the same broker works
    blocker.unlink()
    assert await broker.pending_count("q") == 0
    await broker.aclose()


async def test_version_1_revocations_are_numbered_in_their_old_order(
    db_path: Path, file_at_version: FileAtVersion
) -> None:
    # Given a file at schema version 1 holding two revocations
    with file_at_version(db_path, 1) as conn:
        for task_id, at in (("late", 20.0), ("early", 10.0)):
            conn.execute(
                "INSERT INTO stem_revokes (task_id, revoked_at, expires_at, data) VALUES (?, ?, NULL, ?)",
                (task_id, at, f'{{"task_id":"{task_id}","revoked_at":{at}}}'),
            )
    # When a current store opens it, the migration numbers them oldest first
    store = SqliteRevokeStore(db_path, clock=FakeClock())
    try:
        listed = await store.list()
        assert [(e.task_id, e.seq) for e in listed] == [("early", 1), ("late", 2)]
        # and a new revocation comes after them
        new = await store.revoke(RevokeEntry(task_id="new", revoked_at=5.0))
        assert new.seq == 3
        assert [e.task_id for e in await store.list(since=2)] == ["new"]
    finally:
        await store.aclose()
    assert schema_version(db_path) == SCHEMA_VERSION


async def test_version_2_files_get_the_lean_status_indexes(
    db_path: Path, file_at_version: FileAtVersion
) -> None:
    # Given a file at schema version 2 with a status in it
    with file_at_version(db_path, 2) as conn:
        conn.execute(
            "INSERT INTO stem_task_statuses (id, state, task, updated_at, version, data)"
            " VALUES ('t1', 'failed', 'x', 1.0, 1,"
            ' \'{"id":"t1","state":"failed","task":"x","updated_at":1.0}\')'
        )
    # When a current store opens it
    backend = SqliteResultBackend(db_path, clock=FakeClock())
    try:
        [listed] = await backend.list_statuses(task="x", state=TaskState.FAILED)
        assert listed.id == "t1"
    finally:
        await backend.aclose()
    # Then the status indexes are those the queries walk, and nothing else
    with sqlite3.connect(db_path) as conn:
        indexes = {
            name: [column for _, _, column in conn.execute(f"PRAGMA index_info({name})")]
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'stem_task_statuses' AND sql IS NOT NULL"
            )
        }
    assert indexes == {
        "stem_task_statuses_state": ["state", "updated_at"],
        "stem_task_statuses_task": ["task", "state", "updated_at"],
        "stem_task_statuses_expires": ["expires_at"],
    }
    assert schema_version(db_path) == SCHEMA_VERSION


async def test_version_5_files_get_the_workflow_tables_and_keep_their_data(
    db_path: Path, file_at_version: FileAtVersion
) -> None:
    # Given a file at schema version 5, with a message and no workflow tables
    with file_at_version(db_path, 5) as conn:
        conn.execute(
            "INSERT INTO stem_messages (queue, id, body, due) VALUES ('q', 'kept', x'00', 0)"
        )
    assert "stem_workflow_runs" not in tables(db_path)
    # When a workflow store opens it
    store = SqliteWorkflowStore(db_path, clock=FakeClock())
    try:
        await store.create_run(WorkflowRun(id="r1", workflow="w"))
        assert [r.id for r in await store.list_runs(workflow="w")] == ["r1"]
    finally:
        await store.aclose()
    # Then the file is at the current version, with its message and every table
    assert schema_version(db_path) == SCHEMA_VERSION
    assert message_ids(db_path) == ["kept"]
    assert tables(db_path) >= TABLES


async def test_version_6_files_keep_their_beat_entries_in_the_default_namespace(
    db_path: Path, file_at_version: FileAtVersion
) -> None:
    # Given a file at schema version 6 with two beat entries, as that version wrote them
    with file_at_version(db_path, 6) as conn:
        for entry_id, enabled, next_run_at in (("b", 1, 10.0), ("a", 0, None)):
            data = (
                f'{{"id":"{entry_id}","task":"t","kind":"interval","spec":{{"every":60}},'
                f'"enabled":{"true" if enabled else "false"},"next_run_at":{next_run_at or "null"},'
                '"total_runs":3}'
            )
            conn.execute(
                "INSERT INTO stem_schedules (id, enabled, next_run_at, data) VALUES (?, ?, ?, ?)",
                (entry_id, enabled, next_run_at, data),
            )
    # When a current schedule store opens it
    store = SqliteScheduleStore(db_path, clock=FakeClock())
    try:
        # Then they are the default namespace's, at version 1, unclaimed, in their order
        listed = await store.list()
        assert [(e.id, e.version, e.total_runs, e.claimed_by) for e in listed] == [
            ("b", 1, 3, None),
            ("a", 1, 3, None),
        ]
        # and they are claimed, fired and written as any other
        [due] = await store.due(10.0, owner="beat", claim_ttl=30)
        assert due.id == "b"
        assert await store.mark_executed(
            "b", owner="beat", due_at=10.0, ran_at=10.5, next_run_at=70.0, drift=0.5
        )
        assert (await store.upsert(msgspec.structs.replace(listed[1], enabled=True))).version == 2
        new = await store.upsert(ScheduleEntry(id="c", task="t", kind="clocked", spec={}))
        assert [e.id for e in await store.list()] == ["b", "a", "c"]
        assert new.version == 1
    finally:
        await store.aclose()
    assert schema_version(db_path) == SCHEMA_VERSION
    with sqlite3.connect(db_path) as conn:
        keys = conn.execute(
            "SELECT name FROM pragma_index_list('stem_schedules') WHERE origin = 'u'"
        ).fetchall()
        [(unique,)] = keys
        columns = [c for _, _, c in conn.execute(f"PRAGMA index_info({unique})")]
    conn.close()
    assert columns == ["namespace", "id"]
