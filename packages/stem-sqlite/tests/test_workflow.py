"""What the SQLite workflow store adds to the contract: other processes, indexes, JSON rows."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from stem import FakeClock, Stem
from stem.contracts import RunStatus, WorkflowRun
from stem_sqlite import SqliteWorkflowStore, adapter
from stem_sqlite._workflow import DUE_RUNS, NEXT_WAKE, listing

pytestmark = pytest.mark.sqlite

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[SqliteWorkflowStore]:
    subject = SqliteWorkflowStore(db_path, clock=clock)
    yield subject
    await subject.aclose()


def plan(db_path: Path, sql: str, params: dict[str, object]) -> str:
    conn = sqlite3.connect(db_path)
    try:
        return " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    finally:
        conn.close()


async def test_dispatch_and_listing_read_index_ranges(
    store: SqliteWorkflowStore, db_path: Path
) -> None:
    await store.get_run("r")  # creates the file
    wake = "USING INDEX stem_workflow_runs_wake"
    assert wake in plan(db_path, DUE_RUNS, {"now": 0.0, "limit": 10})
    assert wake in plan(db_path, NEXT_WAKE, {})
    page = {"limit": 10, "offset": 0, "workflow": "w", "status": "pending", "parent_id": "p"}
    by_status = plan(db_path, listing(True, True, False), page)
    assert "USING INDEX stem_workflow_runs_listing" in by_status
    assert "TEMP B-TREE" not in by_status  # read in order, up to the limit
    assert "USING INDEX stem_workflow_runs_listing" in plan(
        db_path, listing(True, False, False), page
    )
    assert "USING INDEX stem_workflow_runs_parent" in plan(
        db_path, listing(False, False, True), page
    )


async def test_runs_are_json_the_sqlite_shell_can_read(
    store: SqliteWorkflowStore, db_path: Path, clock: FakeClock
) -> None:
    await store.create_run(WorkflowRun(id="r1", workflow="w", params={"n": 1}))
    claimed = await store.claim_run("r1", "w1", 30)
    assert claimed is not None
    conn = sqlite3.connect(db_path)
    try:
        row = conn.execute(
            "SELECT status, json_extract(data, '$.status'), json_extract(data, '$.params.n'),"
            " lease_expires_at, wake_at FROM stem_workflow_runs WHERE id = 'r1'"
        ).fetchone()
    finally:
        conn.close()
    assert row == ("running", "running", 1, clock.now() + 30, clock.now() + 30)


async def test_a_change_between_a_read_and_the_wait_is_not_missed(
    store: SqliteWorkflowStore, db_path: Path
) -> None:
    await store.create_run(WorkflowRun(id="r1", workflow="w"))
    assert await store.get_run("r1") is not None
    raw = sqlite3.connect(db_path, isolation_level=None)
    raw.execute("UPDATE stem_workflow_runs SET version = version + 1 WHERE id = 'r1'")
    raw.close()
    async with asyncio.timeout(5):  # the FakeClock never ends the wait by itself
        await store.wait_for_change("r1", 3600)


CLAIM = """
import asyncio, sys
from stem_sqlite import SqliteWorkflowStore

async def main():
    store = SqliteWorkflowStore(sys.argv[1])
    try:
        assert await store.claim_run("r1", "elsewhere", 3600) is not None
    finally:
        await store.aclose()

asyncio.run(main())
"""


async def test_a_change_made_by_another_process_ends_a_wait(
    store: SqliteWorkflowStore, db_path: Path, run_python: Run
) -> None:
    await store.create_run(WorkflowRun(id="r1", workflow="w"))
    assert await store.get_run("r1") is not None
    waiting = asyncio.ensure_future(store.wait_for_change("r1", 3600))
    result = await asyncio.to_thread(run_python, CLAIM, str(db_path))
    assert result.returncode == 0, result.stderr
    async with asyncio.timeout(5):  # the FakeClock never ends the wait by itself
        await waiting
    got = await store.get_run("r1")
    assert got is not None and got.lease_owner == "elsewhere"


DISPATCH = """
import asyncio, sys
from stem_sqlite import SqliteWorkflowStore

async def main():
    store = SqliteWorkflowStore(sys.argv[1])
    won = []
    try:
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        sys.stdin.readline()
        while ids := await store.due_runs(limit=5, redispatch_after=3600):
            for run_id in ids:
                if await store.claim_run(run_id, "child", 3600) is not None:
                    won.append(run_id)
    finally:
        await store.aclose()
    print(",".join(won))

asyncio.run(main())
"""


async def test_two_processes_dispatching_claim_each_run_once(db_path: Path) -> None:
    store = SqliteWorkflowStore(db_path)  # real clocks: two processes share the time
    ids = [f"run-{i}" for i in range(200)]
    try:
        now = store.clock.now()
        for run_id in ids:
            await store.create_run(WorkflowRun(id=run_id, workflow="w", wake_at=now))
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DISPATCH,
            str(db_path),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        assert await child.stdout.readline() == b"ready\n"
        child.stdin.write(b"go\n")
        mine = []
        while handed := await store.due_runs(limit=5, redispatch_after=3600):
            for run_id in handed:
                if await store.claim_run(run_id, "parent", 3600) is not None:
                    mine.append(run_id)
        out, _ = await asyncio.wait_for(child.communicate(), 60)
        theirs = [i for i in out.decode().strip().split(",") if i]
        assert sorted(mine + theirs) == sorted(ids), "every run claimed exactly once"
        runs = await store.list_runs(workflow="w", status=RunStatus.RUNNING, limit=1000)
        assert len(runs) == len(ids)
    finally:
        await store.aclose()


async def test_the_adapter_and_a_url_build_the_store(db_path: Path, no_stem_env: None) -> None:
    url = f"sqlite:///{db_path}?wake_interval=0.05&poll_interval=2"
    built = adapter.workflow_store(url)
    direct = SqliteWorkflowStore(url)
    app = Stem.from_url(url)
    try:
        for store in (built, direct, app.workflow_store):
            assert isinstance(store, SqliteWorkflowStore)
            assert store.path == str(db_path)
            assert store.poll_interval == 2.0
        assert SqliteWorkflowStore(url, poll_interval=1).poll_interval == 1.0
        await built.create_run(WorkflowRun(id="r1", workflow="w"))
        assert await direct.get_run("r1") is not None
    finally:
        await built.aclose()
        await direct.aclose()
        await app.aclose()
