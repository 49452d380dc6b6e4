"""The beat scheduler on every store: memory, SQLite and Redis, on a FakeClock.

Two apps on one store (two beats, as two processes would run them): each firing is
enqueued once and none is missed, a beat that dies holding a claim is replaced, a bad
entry is recorded while the others fire, and entries from code survive a restart.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from stem import Beat, Cron, Envelope, FakeClock, Interval, Stem
from stem.contracts import ScheduleEntry
from stem.memory import (
    MemoryBroker,
    MemoryLockStore,
    MemoryResultBackend,
    MemoryScheduleStore,
)

START = 1_700_000_000.0

Fired = list[tuple[str, float]]
MakeApp = Callable[[], Awaitable[Stem]]


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.memory),
        pytest.param("sqlite", marks=pytest.mark.sqlite),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
async def make_app(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[MakeApp]:
    """Builds apps that share one store (each as a process of its own would build it),
    with the same tasks registered, closed at the end."""
    clock.set(START)
    apps: list[Stem] = []
    shared: dict[str, Any] = {}
    if request.param == "memory":
        shared = {
            "broker": MemoryBroker(clock=clock),
            "backend": MemoryResultBackend(clock=clock),
            "lock_store": MemoryLockStore(clock=clock),
            "schedule_store": MemoryScheduleStore(clock=clock),
        }
    url = (
        f"sqlite:///{tmp_path / 'stem.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("redis_url")
        if request.param == "redis"
        else ""
    )

    async def make() -> Stem:
        if shared:
            app = Stem(
                shared["broker"],
                shared["backend"],
                lock_store=shared["lock_store"],
                schedule_store=shared["schedule_store"],
                clock=clock,
            )
        else:
            app = Stem.from_url(url, clock=clock)

        @app.task(name="reports.send")
        async def send(report: str = "daily") -> None: ...

        @app.task(name="cache.sweep")
        async def sweep() -> None: ...

        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.aclose()


def record_firings(app: Stem, fired: Fired) -> None:
    @app.hooks.on("after_enqueue")
    def record(envelope: Envelope) -> None:
        beat = envelope.meta.get("stem.beat")
        if beat is not None:
            fired.append((beat["entry"], beat["at"]))


def of(fired: Fired, entry_id: str) -> list[float]:
    return [at for entry, at in fired if entry == entry_id]


class Time:
    """Moves the FakeClock; waits (in real time, a store may do I/O) until each running
    beat has ticked and sleeps on the clock again."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.beats: list[Beat] = []

    async def settle(self) -> None:
        def sleeping() -> bool:
            running = [b for b in self.beats if b._loop is not None and not b._loop.done()]
            return self.clock.sleepers >= len(running)

        async with asyncio.timeout(10):
            while not sleeping():  # noqa: ASYNC110 - the beats announce nothing else
                await asyncio.sleep(0.001)

    async def advance(self, seconds: float, step: float) -> None:
        left = seconds
        while left > 1e-9:
            self.clock.advance(min(step, left))
            left -= step
            await self.settle()

    async def start(self, beat: Beat) -> Beat:
        self.beats.append(beat)
        await beat.start()
        await self.settle()
        return beat


@pytest.fixture
def time(clock: FakeClock) -> Time:
    return Time(clock)


async def stored(app: Stem, entry_id: str) -> ScheduleEntry:
    found = await app.schedule_store.get(entry_id)
    assert found is not None
    return found


def define(app: Stem) -> None:
    app.schedule("fast", Interval(1), "cache.sweep")
    app.schedule("jittered", Interval(7), "cache.sweep", jitter=3)
    app.schedule("seconds", Cron("*/3 * * * * *"), "reports.send", args=["triple"])


async def test_two_beats_fire_each_firing_once_and_miss_none(make_app: MakeApp, time: Time) -> None:
    fired: Fired = []
    apps = [await make_app(), await make_app()]
    beats = []
    for n, app in enumerate(apps):
        define(app)
        record_firings(app, fired)
        beats.append(await time.start(app.beat(owner=f"beat-{n}", max_interval=1, claim_ttl=5)))
    await time.advance(200, step=1)
    end = time.clock.now()
    counts = collections.Counter(fired)
    assert max(counts.values()) == 1  # never twice
    span = range(int(START) + 1, int(end) + 1)
    assert of(fired, "fast") == [float(t) for t in span]
    assert of(fired, "seconds") == [float(t) for t in span if t % 3 == 0]
    jittered = [float(t) for t in span if t % 7 == 0]
    assert of(fired, "jittered") in (jittered, jittered[:-1])  # the last may be up to 3 s late
    fast = await stored(apps[0], "fast")
    assert (fast.total_runs, fast.next_run_at, fast.last_drift) == (200, end + 1, 0.0)
    assert sum(b.counters["lost"] for b in beats) == 0
    for beat in beats:
        await beat.stop()


class DiesAfterEnqueue(Beat):
    """Dies after enqueueing a firing, before recording it (its claim is left behind)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dead = asyncio.Event()

    async def _record(self, *args: Any, **kwargs: Any) -> None:
        self.dead.set()
        await asyncio.Event().wait()  # until cancelled


async def test_a_killed_beat_is_replaced_without_a_missed_or_doubled_firing(
    make_app: MakeApp, time: Time
) -> None:
    fired: Fired = []
    victim_app, survivor_app = await make_app(), await make_app()
    for app in (victim_app, survivor_app):
        app.schedule("digest", Interval(10), "reports.send")
        record_firings(app, fired)
    victim = DiesAfterEnqueue(victim_app, owner="victim", max_interval=1, claim_ttl=5)
    await victim.start()
    time.clock.advance(10)
    async with asyncio.timeout(10):
        await victim.dead.wait()
    assert victim._loop is not None
    victim._loop.cancel()
    assert (await stored(survivor_app, "digest")).claimed_by == "victim"
    survivor = await time.start(survivor_app.beat(owner="survivor", max_interval=1, claim_ttl=5))
    await time.advance(40, step=1)
    assert of(fired, "digest") == [START + 10 * k for k in range(1, 6)]
    digest = await stored(survivor_app, "digest")
    assert (digest.total_runs, digest.next_run_at) == (5, START + 60)
    assert survivor.counters["already_enqueued"] == 1
    await survivor.stop()


async def test_a_bad_entry_is_recorded_while_the_others_fire(make_app: MakeApp, time: Time) -> None:
    fired: Fired = []
    app = await make_app()
    record_firings(app, fired)
    app.schedule("good", Interval(10), "cache.sweep")
    await app.schedule_store.upsert(
        ScheduleEntry(
            id="ghost",
            task="reports.gone",
            kind="interval",
            spec={"every": 10.0},
            next_run_at=START + 10,
        )
    )
    beat = await time.start(app.beat(owner="a", max_interval=5))
    await time.advance(20, step=5)
    assert of(fired, "good") == [START + 10, START + 20] and of(fired, "ghost") == []
    ghost = await stored(app, "ghost")
    assert ghost.last_error is not None and "'reports.gone' is not registered" in ghost.last_error
    assert (ghost.total_runs, ghost.next_run_at) == (0, START + 30)
    await beat.stop()


async def test_entries_from_code_survive_a_restart(make_app: MakeApp, time: Time) -> None:
    first = await make_app()
    define(first)
    report = await first.beat(owner="a").sync()
    assert sorted(report.created) == ["fast", "jittered", "seconds"]
    again = await make_app()
    define(again)
    report = await again.beat(owner="b").sync()
    assert sorted(report.unchanged) == ["fast", "jittered", "seconds"]
    changed = await make_app()
    changed.schedule("fast", Interval(2), "cache.sweep")
    report = await changed.beat(owner="c").sync()
    assert report.updated == ["fast"]
    assert sorted(report.no_longer_in_code) == ["jittered", "seconds"]
    assert (await stored(changed, "fast")).spec == {"every": 2.0}
