"""The SQLite event bus beyond the contract: other processes, writing only for listeners,
retention, and the app's wiring."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import pytest

from stem import FakeClock, Stem, WorkflowContext
from stem_sqlite import SCHEMA_VERSION, SqliteEventBus
from stem_sqlite._support import SWEEP_EVERY

pytestmark = pytest.mark.sqlite

Run = Callable[..., subprocess.CompletedProcess[str]]

PUBLISH = """
import asyncio, sys
from stem_sqlite import SqliteEventBus

async def main():
    bus = SqliteEventBus(sys.argv[1])
    await bus.publish(sys.argv[2], {"from": "another process"})
    await bus.aclose()

asyncio.run(main())
"""


def rows(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT namespace, topic, payload FROM stem_events ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


class Stalled:
    """A pacer that never reads again by itself: only a wake-up makes the subscriber read."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    def next_gap(self) -> float:
        self.waiting.set()
        return 3600.0

    def active(self) -> None:
        pass


async def test_an_event_from_another_process_wakes_a_subscriber_by_datagram(
    db_path: Path, run_python: Run
) -> None:
    bus = SqliteEventBus(db_path)
    try:
        async with bus.subscription("orders.*") as events:
            stalled = Stalled()
            events._pacer = stalled  # type: ignore[attr-defined]
            first = asyncio.ensure_future(anext(events))
            await stalled.waiting.wait()  # it read, found nothing, and waits for a wake-up
            result = await asyncio.to_thread(run_python, PUBLISH, str(db_path), "orders.created")
            assert result.returncode == 0, result.stderr
            got = await asyncio.wait_for(first, 5.0)
        assert got == ("orders.created", {"from": "another process"})
    finally:
        await bus.aclose()


async def test_nothing_is_written_while_nobody_listens_in_the_namespace(
    db_path: Path, clock: FakeClock
) -> None:
    bus = SqliteEventBus(db_path, clock=clock)
    elsewhere = SqliteEventBus(db_path, clock=clock, namespace="other-app")
    try:
        await bus.publish("unheard", 1)
        assert rows(db_path) == []
        async with elsewhere.subscription("*"):  # a listener of another namespace
            await bus.publish("still-unheard", 2)
            assert rows(db_path) == []
            async with bus.subscription("nothing.matches.this"):
                await bus.publish("heard", 3)  # written: its subscriber matches client-side
        await bus.publish("unheard-again", 4)
        assert rows(db_path) == [("default", "heard", "3")]
        # A listener whose process died without closing (its row past alive_until) is ignored
        conn = sqlite3.connect(db_path)
        with conn:
            conn.execute(
                "INSERT INTO stem_event_listeners (id, namespace, alive_until) VALUES ('dead', 'default', 1)"
            )
        conn.close()
        await bus.publish("unheard-too", 5)
        assert [topic for _, topic, _ in rows(db_path)] == ["heard"]
    finally:
        await bus.aclose()
        await elsewhere.aclose()


async def test_old_events_are_pruned_and_a_subscriber_left_behind_is_warned(
    db_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    bus = SqliteEventBus(db_path, clock=clock, retention=10.0)
    try:
        behind = await bus.open_subscription("*")
        for i in range(3):
            await bus.publish(f"old.{i}", i)
        # Past the retention, and the sweep's pause: the next publish prunes the old rows
        clock.advance(SWEEP_EVERY + 11)
        await bus.publish("new", "kept")
        assert [topic for _, topic, _ in rows(db_path)] == ["new"]
        with caplog.at_level(logging.WARNING, logger="stem.events"):
            assert await asyncio.wait_for(anext(behind), 5.0) == ("new", "kept")
        assert any("fell more than the bus's retention (10 s)" in m for m in caplog.messages)
        await behind.aclose()
    finally:
        await bus.aclose()


async def test_from_url_gives_the_files_bus_in_the_urls_namespace_and_runs_are_followed(
    tmp_path: Path, no_stem_env: None
) -> None:
    url = f"sqlite:///{tmp_path / 'stem.db'}?namespace=billing"
    worker_app, observer = Stem.from_url(url), Stem.from_url(url)
    other_app = Stem.from_url(f"sqlite:///{tmp_path / 'stem.db'}")

    @worker_app.workflow(name="short")
    async def short(wf: WorkflowContext) -> str:
        await wf.sleep(timedelta(milliseconds=1))
        return "done"

    try:
        assert isinstance(observer.event_bus, SqliteEventBus)
        assert observer.event_bus.namespace == "billing"
        async with (
            observer.event_bus.subscription("stem.run.*") as runs,
            other_app.event_bus.subscription("*") as elsewhere,
        ):
            async with worker_app.worker():
                run_id = await short.start()
                result = await worker_app.wait_for_workflow(run_id, timeout=10)
                assert result.value == "done"
                seen = [await asyncio.wait_for(anext(runs), 5.0) for _ in range(2)]
            await other_app.event_bus.publish("mine", None)
            assert await asyncio.wait_for(anext(elsewhere), 5.0) == ("mine", None)
        assert seen == [
            ("stem.run.pending", {"run_id": run_id, "workflow": "short", "status": "pending"}),
            ("stem.run.completed", {"run_id": run_id, "workflow": "short", "status": "completed"}),
        ]
    finally:
        for app in (worker_app, observer, other_app):
            await app.aclose()


async def test_a_version_7_file_gets_the_event_tables_and_keeps_its_data(
    db_path: Path,
    clock: FakeClock,
    file_at_version: Callable[[Path, int], AbstractContextManager[sqlite3.Connection]],
) -> None:
    with file_at_version(db_path, 7) as conn:
        conn.execute(
            "INSERT INTO stem_messages (queue, id, body, due) VALUES ('q', 'kept', x'00', 0)"
        )
    bus = SqliteEventBus(db_path, clock=clock)
    try:
        async with bus.subscription("*") as events:
            await bus.publish("after.upgrade", [1])
            assert await asyncio.wait_for(anext(events), 5.0) == ("after.upgrade", [1])
    finally:
        await bus.aclose()
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("SELECT version FROM stem_schema").fetchone() == (SCHEMA_VERSION,)
        assert SCHEMA_VERSION >= 8
        assert conn.execute("SELECT id FROM stem_messages").fetchall() == [("kept",)]
    finally:
        conn.close()
