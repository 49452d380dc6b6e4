"""The workflow engine publishes on ``app.event_bus``: events emitted and sent, and every
run status change it makes; a bus that fails never fails the operation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from stem import FakeClock, SerializationError, Stem, WorkflowContext
from stem.contracts import EventBus, EventSubscription, RunStatus
from stem.memory import MemoryBroker, MemoryEventBus, MemoryResultBackend

from .conftest import Drive


async def until(clock: FakeClock, check: Any, *, step: float = 0.25, limit: float = 600.0) -> None:
    """Advance the clock in steps, letting the loop run, until ``await check()`` holds."""
    moved = 0.0
    while not await check():
        if moved > limit:
            raise AssertionError(f"still not true after {limit} fake seconds")
        clock.advance(step)
        moved += step
        await asyncio.sleep(0.001)


class Seen:
    """What one subscription got, read in the background."""

    def __init__(self, subscription: EventSubscription) -> None:
        self.got: list[tuple[str, Any]] = []
        self.task = asyncio.ensure_future(self._read(subscription))

    async def _read(self, subscription: EventSubscription) -> None:
        async for event in subscription:
            self.got.append(event)

    def runs(self) -> list[tuple[str, str, str]]:
        return [
            (topic, payload["workflow"], payload["status"])
            for topic, payload in self.got
            if topic.startswith("stem.run.")
        ]


@pytest.fixture
async def watch(app: Stem) -> AsyncIterator[Any]:
    opened: list[tuple[EventSubscription, Seen]] = []

    async def start(pattern: str) -> Seen:
        subscription = await app.event_bus.open_subscription(pattern)
        seen = Seen(subscription)
        opened.append((subscription, seen))
        return seen

    yield start
    for subscription, seen in opened:
        await subscription.aclose()
        await seen.task


async def settle() -> None:
    """Let the subscriptions' readers take what was delivered (the memory bus delivers
    inside publish; its readers run at the next turns of the loop)."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_an_app_built_without_a_bus_has_one_in_memory(app: Stem) -> None:
    assert isinstance(app.event_bus, MemoryEventBus)


async def test_from_url_takes_the_bus_of_the_workflow_stores_adapter() -> None:
    first, second = Stem.from_url("memory://events"), Stem.from_url("memory://events")
    try:
        assert isinstance(first.event_bus, MemoryEventBus)
        assert second.event_bus is first.event_bus  # memory://NAME: shared in the process
    finally:
        await first.aclose()
        await second.aclose()


async def test_closing_the_app_ends_its_subscriptions(clock: FakeClock) -> None:
    app = Stem(MemoryBroker(clock=clock), clock=clock)
    subscription = await app.event_bus.open_subscription("*")
    await app.aclose()
    with pytest.raises(StopAsyncIteration):
        await anext(subscription)


async def test_start_and_finish_publish_the_runs_status_changes(
    app: Stem, watch: Any, drive: Drive
) -> None:
    @app.workflow(name="ok")
    async def ok(wf: WorkflowContext) -> int:
        return await wf.step("one", lambda: 1)

    @app.workflow(name="broken")
    async def broken(wf: WorkflowContext) -> None:
        raise ValueError("no")

    seen = await watch("stem.run.*")
    async with app.worker():
        good, bad = await ok.start(), await broken.start()
        await app.wait_for_workflow(good, timeout=5)
        await app.wait_for_workflow(bad, timeout=5)
        await drive(lambda: len(seen.got) == 4)
    assert sorted(seen.runs()) == sorted(
        [
            ("stem.run.pending", "ok", "pending"),
            ("stem.run.pending", "broken", "pending"),
            ("stem.run.completed", "ok", "completed"),
            ("stem.run.failed", "broken", "failed"),
        ]
    )
    by_run = {payload["run_id"]: [] for _, payload in seen.got}
    for topic, payload in seen.got:
        by_run[payload["run_id"]].append(topic)
        assert set(payload) == {"run_id", "workflow", "status"}
    assert by_run == {
        good: ["stem.run.pending", "stem.run.completed"],
        bad: ["stem.run.pending", "stem.run.failed"],
    }


async def test_emit_and_send_publish_the_event_and_cancel_and_rewind_the_status(
    app: Stem, watch: Any, clock: FakeClock
) -> None:
    @app.workflow(name="waits")
    async def waits(wf: WorkflowContext) -> Any:
        await wf.step("first", lambda: "x")
        return await wf.wait_for_event("go", timeout=timedelta(hours=1))

    everything = await watch("*")
    run_id = await waits.start()
    async with app.worker():

        async def waiting() -> bool:
            return await app.workflow_store.runs_waiting_on("go") == [run_id]

        await until(clock, waiting)
        # An event emitted with nobody waiting is published all the same (observers see it)
        assert await app.emit_event("nobody.listens", {"n": 1}) == []
        assert await app.send_event(run_id, "go", {"sent": True})
        result = await app.wait_for_workflow(run_id, timeout=5)
        assert result.value == {"sent": True}
        # A send to an unknown run is not published: it went nowhere
        assert not await app.send_event("no-such-run", "go", 1)
        assert await app.rewind_workflow(run_id, "first")
        await until(clock, waiting)
        assert await app.cancel_workflow(run_id, "enough")
    await settle()
    topics = [topic for topic, _ in everything.got]
    assert topics == [
        "stem.run.pending",
        "nobody.listens",
        "go",
        "stem.run.completed",
        "stem.run.pending",  # the rewind
        "stem.run.cancelled",
    ]
    assert everything.got[1] == ("nobody.listens", {"n": 1})
    assert everything.got[2] == ("go", {"sent": True})
    assert [p["run_id"] for t, p in everything.got if t.startswith("stem.run.")] == [run_id] * 4


async def test_a_bus_that_fails_is_logged_and_the_operations_still_happen(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(EventBus):
        async def publish(self, topic: str, payload: Any = None) -> None:
            raise ConnectionError("the bus is down")

        async def open_subscription(self, pattern: str) -> EventSubscription:
            raise NotImplementedError

    app = Stem(
        MemoryBroker(clock=clock), MemoryResultBackend(clock=clock), clock=clock, event_bus=Broken()
    )

    @app.workflow(name="w")
    async def w(wf: WorkflowContext) -> str:
        return await wf.wait_for_event("go", timeout=timedelta(hours=1))

    try:
        with caplog.at_level(logging.WARNING, logger="stem.workflow"):
            async with app.worker():
                run_id = await w.start()

                async def waiting() -> bool:
                    return await app.workflow_store.runs_waiting_on("go") == [run_id]

                await until(clock, waiting)
                assert await app.emit_event("go", "now") == [run_id]
                result = await app.wait_for_workflow(run_id, timeout=5)
        assert (result.status, result.value) == (RunStatus.COMPLETED, "now")
        published = [r.getMessage() for r in caplog.records if "event bus" in r.getMessage()]
        assert any("'stem.run.pending'" in m and "the bus is down" in m for m in published)
        assert any("'go'" in m for m in published)
        assert any("'stem.run.completed'" in m for m in published)
    finally:
        await app.aclose()


async def test_an_event_payload_that_cannot_be_stored_is_refused_before_anything_is_published(
    app: Stem, watch: Any
) -> None:
    seen = await watch("*")
    with pytest.raises(SerializationError):
        await app.emit_event("bad", {"x": object()})
    await app.emit_event("good", 1)
    await settle()
    assert seen.got == [("good", 1)]
