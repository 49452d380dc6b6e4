"""The beat loop on the in-memory store, driven by a FakeClock: firings on time, drift,
catch-up after downtime, several beats, a beat that dies, bad entries, sync from code."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from stem import (
    ArgumentError,
    Beat,
    Clocked,
    ConfigurationError,
    Cron,
    Envelope,
    FakeClock,
    Interval,
    Stem,
)
from stem._beat import firing_task_id
from stem.contracts import ScheduleEntry
from stem.memory import MemoryBroker, MemoryResultBackend, MemoryScheduleStore

START = 1_700_000_000.0  # a multiple of 10 and of 20: interval firings land on it


@pytest.fixture
async def app(clock: FakeClock) -> AsyncIterator[Stem]:
    stem = Stem(
        MemoryBroker(clock=clock),
        MemoryResultBackend(clock=clock),
        schedule_store=MemoryScheduleStore(clock=clock),
        clock=clock,
    )

    @stem.task(name="reports.send")
    async def send(report: str = "daily") -> None: ...

    @stem.task(name="cache.sweep")
    async def sweep() -> None: ...

    yield stem
    await stem.aclose()


class Fired:
    """Every firing published, as (entry id, nominal time), from the after_enqueue hook."""

    def __init__(self, app: Stem) -> None:
        self.items: list[tuple[str, float]] = []

        @app.hooks.on("after_enqueue")
        def record(envelope: Envelope) -> None:
            beat = envelope.meta.get("stem.beat")
            if beat is not None:
                self.items.append((beat["entry"], beat["at"]))

    def of(self, entry_id: str) -> list[float]:
        return [at for entry, at in self.items if entry == entry_id]


@pytest.fixture
def fired(app: Stem) -> Fired:
    return Fired(app)


Until = Callable[[Callable[[], bool]], Awaitable[None]]


class Time:
    """Moves the FakeClock and waits until every running beat has ticked and sleeps again."""

    def __init__(self, clock: FakeClock, until: Until) -> None:
        self.clock = clock
        self.until = until
        self.beats: list[Beat] = []

    def sleeping(self) -> bool:
        running = [b for b in self.beats if b._loop is not None and not b._loop.done()]
        return self.clock.sleepers >= len(running)

    async def settle(self) -> None:
        await self.until(self.sleeping)

    async def advance(self, seconds: float, step: float | None = None) -> None:
        left = seconds
        while left > 1e-9:
            move = min(step or left, left)
            self.clock.advance(move)
            left -= move
            await self.settle()

    async def start(self, beat: Beat) -> Beat:
        self.beats.append(beat)
        await beat.start()
        await self.settle()
        return beat


@pytest.fixture
def time(clock: FakeClock, until: Until) -> Time:
    clock.set(START)
    return Time(clock, until)


async def entry(app: Stem, entry_id: str) -> ScheduleEntry:
    found = await app.schedule_store.get(entry_id)
    assert found is not None
    return found


# -- firing on time ----------------------------------------------------------------------------


async def test_an_interval_entry_fires_on_time_and_records_each_run(
    app: Stem, fired: Fired, time: Time
) -> None:
    app.schedule("digest", Interval(10), "reports.send", args=["weekly"], queue="reports")
    beat = await time.start(app.beat(owner="a", max_interval=60))
    assert (await entry(app, "digest")).next_run_at == START + 10
    await time.advance(30, step=10)
    assert fired.of("digest") == [START + 10, START + 20, START + 30]
    stored = await entry(app, "digest")
    assert (stored.total_runs, stored.last_run_at, stored.last_drift) == (3, START + 30, 0.0)
    assert (stored.next_run_at, stored.last_error, stored.claimed_by) == (START + 40, None, None)
    # Each firing is a task of its own, with the entry's arguments and queue
    status = await app.get_status(firing_task_id("digest", START + 30))
    assert status is not None and status.queue == "reports"
    assert (beat.counters["fired"], beat.counters["failed"]) == (3, 0)
    await beat.stop()


async def test_a_late_firing_records_its_drift(app: Stem, fired: Fired, time: Time) -> None:
    app.schedule("digest", Interval(10), "reports.send")
    beat = await time.start(app.beat(owner="a", max_interval=60))
    # The beat wakes 2.5 s after the due time (a busy machine)
    await time.advance(12.5)
    assert fired.of("digest") == [START + 10]
    stored = await entry(app, "digest")
    assert stored.last_drift == pytest.approx(2.5)
    assert stored.last_run_at == START + 12.5 and stored.next_run_at == START + 20
    await beat.stop()


async def test_the_beat_sleeps_until_the_next_due_time(app: Stem, fired: Fired, time: Time) -> None:
    app.schedule("hourly", Cron("0 * * * *"), "cache.sweep")
    beat = await time.start(app.beat(owner="a", max_interval=600))
    ticks = beat.ticks
    await time.advance(3 * 3600, step=60)
    # 3 firings; between them the beat woke only every max_interval or at a due time
    assert len(fired.of("hourly")) == 3
    assert beat.ticks - ticks <= 3 * (3600 // 600 + 1)
    await beat.stop()


async def test_a_clocked_entry_fires_once(app: Stem, fired: Fired, time: Time) -> None:
    when = datetime.fromtimestamp(START + 25, UTC)
    app.schedule("launch", Clocked(when), "reports.send")
    beat = await time.start(app.beat(owner="a", max_interval=5))
    await time.advance(100, step=5)
    assert fired.of("launch") == [START + 25]
    stored = await entry(app, "launch")
    assert (stored.total_runs, stored.next_run_at) == (1, None)
    await beat.stop()


# -- catch-up after downtime -------------------------------------------------------------------


async def test_catch_up_policies_after_downtime(app: Stem, fired: Fired, time: Time) -> None:
    app.schedule("once", Interval(10), "cache.sweep")
    app.schedule("each", Interval(10), "cache.sweep", catch_up="each", catch_up_limit=3)
    app.schedule("all", Interval(10), "cache.sweep", catch_up="each")
    app.schedule("skip", Interval(10), "cache.sweep", catch_up="skip")
    first = await time.start(app.beat(owner="a", max_interval=5))
    await time.advance(10)
    await first.stop()
    time.beats.remove(first)
    assert {e for e, _ in fired.items} == {"once", "each", "all", "skip"}
    fired.items.clear()
    # No beat for 95 s: the firings at +20 ... +100 are missed (9 of them)
    time.clock.advance(95)
    second = await time.start(app.beat(owner="b", max_interval=5, grace=2))
    assert fired.of("once") == [START + 100]
    assert fired.of("each") == [START + 80, START + 90, START + 100]
    assert fired.of("all") == [START + 10 * k for k in range(2, 11)]
    assert fired.of("skip") == []  # +100 is 5 s late, more than the grace of 2 s
    skipped = await entry(app, "skip")
    assert skipped.next_run_at == START + 110 and skipped.total_runs == 1
    assert skipped.last_error is not None and "skipped 9 missed firing(s)" in skipped.last_error
    # Every entry is back on its schedule
    fired.items.clear()
    await time.advance(10, step=5)
    assert sorted(fired.items) == [(e, START + 110) for e in ("all", "each", "once", "skip")]
    assert (await entry(app, "skip")).last_error is None
    await second.stop()


# -- several beats -----------------------------------------------------------------------------


class InterleavingStore(MemoryScheduleStore):
    """The memory store, yielding to the loop around each call as a networked store
    would, so two beats in one loop interleave their claims and records."""

    async def due(self, now: float, **kwargs: Any) -> list[ScheduleEntry]:
        await asyncio.sleep(0)
        found = await super().due(now, **kwargs)
        await asyncio.sleep(0)
        return found

    async def mark_executed(self, entry_id: str, **kwargs: Any) -> bool:
        await asyncio.sleep(0)
        return await super().mark_executed(entry_id, **kwargs)


async def test_two_beats_never_double_fire_across_a_thousand_ticks(
    app: Stem, fired: Fired, time: Time
) -> None:
    app._schedule_store = InterleavingStore(clock=time.clock)
    app.schedule("fast", Interval(1), "cache.sweep")
    app.schedule("jittered", Interval(7), "cache.sweep", jitter=3)
    app.schedule("minutely", Cron("* * * * *"), "reports.send")
    app.schedule("seconds", Cron("*/3 * * * * *"), "reports.send")
    a = await time.start(app.beat(owner="a", max_interval=1, claim_ttl=5, batch=1))
    b = await time.start(app.beat(owner="b", max_interval=1, claim_ttl=5, batch=1))
    await time.advance(1000, step=1)
    end = time.clock.now()
    expected = {
        "fast": [START + k for k in range(1, 1001)],
        "jittered": [t for t in range(int(START) + 1, int(end) + 1) if t % 7 == 0],
        "minutely": [t for t in range(int(START) + 1, int(end) + 1) if t % 60 == 0],
        "seconds": [t for t in range(int(START) + 1, int(end) + 1) if t % 3 == 0],
    }
    counts = collections.Counter(fired.items)
    assert max(counts.values()) == 1  # never twice
    for entry_id, times in expected.items():
        got = fired.of(entry_id)
        if entry_id == "jittered":  # the last one may not be due yet: up to 3 s late
            assert got in (times, times[:-1])
        else:
            assert got == times, entry_id
    # Both beats fired some
    assert a.counters["fired"] > 0 and b.counters["fired"] > 0
    assert a.counters["lost"] == b.counters["lost"] == 0
    await a.stop()
    await b.stop()


class DiesAfterEnqueue(Beat):
    """A beat whose process dies after it enqueued a firing, before recording it."""

    async def _record(self, *args: Any, **kwargs: Any) -> None:
        self.dead.set()
        await asyncio.Event().wait()  # never returns: the test cancels it

    @property
    def dead(self) -> asyncio.Event:
        if not hasattr(self, "_dead"):
            self._dead = asyncio.Event()
        return self._dead


class DiesBeforeEnqueue(DiesAfterEnqueue):
    """A beat whose process dies after it claimed an entry, before it enqueued anything."""

    async def _enqueue(self, entry: ScheduleEntry, at: float) -> None:
        self.dead.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize(
    ("dying", "finished"),
    [(DiesAfterEnqueue, False), (DiesAfterEnqueue, True), (DiesBeforeEnqueue, False)],
    ids=["after-enqueue", "after-enqueue-task-finished", "before-enqueue"],
)
async def test_a_killed_beat_is_replaced_without_a_missed_or_doubled_firing(
    app: Stem,
    fired: Fired,
    time: Time,
    until: Until,
    dying: type[DiesAfterEnqueue],
    finished: bool,
) -> None:
    # finished: the firing's task ran to its end (its unique claim is gone) before the
    # next beat takes over; eager mode runs each task at enqueue
    app.eager = finished
    app.schedule("digest", Interval(10), "reports.send")
    victim = dying(app, owner="victim", max_interval=1, claim_ttl=5)
    await victim.start()
    # The victim claims the firing at +10 and dies holding the claim
    time.clock.advance(10)
    await until(victim.dead.is_set)
    assert victim._loop is not None
    victim._loop.cancel()
    held = await entry(app, "digest")
    assert held.claimed_by == "victim" and held.total_runs == 0
    # A second beat takes it over when the claim runs out, then keeps the schedule
    survivor = await time.start(app.beat(owner="survivor", max_interval=1, claim_ttl=5))
    await time.advance(4, step=1)
    assert (await entry(app, "digest")).total_runs == 0  # the claim still holds
    await time.advance(36, step=1)
    assert fired.of("digest") == [START + 10, START + 20, START + 30, START + 40, START + 50]
    stored = await entry(app, "digest")
    assert stored.total_runs == 5 and stored.next_run_at == START + 60
    taken_over = 1 if dying is DiesAfterEnqueue else 0
    assert survivor.counters["already_enqueued"] == taken_over
    await survivor.stop()


async def test_a_beat_whose_claim_ran_out_does_not_record_over_the_next_one(
    app: Stem, fired: Fired, time: Time
) -> None:
    app.schedule("digest", Interval(10), "reports.send")
    store = app.schedule_store
    await app.beat(owner="sync").sync()
    time.clock.advance(10)
    [slow] = await store.due(time.clock.now(), owner="slow", claim_ttl=5)
    time.clock.advance(6)  # the slow beat's claim ran out
    fast = await time.start(app.beat(owner="fast", max_interval=1, claim_ttl=5))
    assert fired.of("digest") == [START + 10]
    # The slow beat's record of the same firing is refused; nothing moves back
    assert not await store.mark_executed(
        "digest",
        owner="slow",
        due_at=START + 10,
        ran_at=START + 16,
        next_run_at=START + 20,
        drift=6,
    )
    assert (await entry(app, "digest")).total_runs == 1
    assert slow.next_run_at == START + 10
    await fast.stop()


# -- bad entries at fire time --------------------------------------------------------------------


async def test_an_unknown_task_at_fire_time_is_recorded_and_other_entries_keep_firing(
    app: Stem, fired: Fired, time: Time
) -> None:
    app.schedule("good", Interval(10), "cache.sweep")
    store = app.schedule_store
    # Entries written by someone else (the CLI with --url, an older release)
    await store.upsert(
        ScheduleEntry(
            id="ghost",
            task="reports.gone",
            kind="interval",
            spec={"every": 10.0},
            next_run_at=START + 10,
        )
    )
    await store.upsert(
        ScheduleEntry(
            id="broken",
            task="cache.sweep",
            kind="cron",
            spec={"expr": "every day at 9"},
            next_run_at=START + 10,
        )
    )
    await store.upsert(
        ScheduleEntry(
            id="misfit",
            task="reports.send",
            kind="interval",
            spec={"every": 10.0},
            args=["a", "b", "c"],
            next_run_at=START + 10,
        )
    )
    beat = await time.start(app.beat(owner="a", max_interval=5))
    await time.advance(30, step=5)
    assert fired.of("good") == [START + 10, START + 20, START + 30]
    assert fired.of("ghost") == fired.of("broken") == fired.of("misfit") == []
    ghost = await entry(app, "ghost")
    assert ghost.last_error is not None and "'reports.gone' is not registered" in ghost.last_error
    assert ghost.total_runs == 0 and ghost.next_run_at == START + 40  # tried at each firing
    broken = await entry(app, "broken")
    assert broken.last_error is not None and "invalid cron expression" in broken.last_error
    assert broken.next_run_at is None  # not fired again until its spec is fixed
    misfit = await entry(app, "misfit")
    assert misfit.last_error is not None and misfit.last_error.startswith("ArgumentError")
    assert beat.counters["failed"] == 3 + 3 + 1  # ghost and misfit at each firing, broken once
    await beat.stop()


# -- sync from code ------------------------------------------------------------------------------


async def test_sync_creates_updates_and_leaves_alone(app: Stem, time: Time) -> None:
    store = app.schedule_store
    app.schedule("digest", Interval(10), "reports.send", args=["daily"])
    app.schedule("sweep", Cron("*/5 * * * *"), "cache.sweep")
    report = await app.beat(owner="a").sync()
    assert (report.created, report.updated) == (["digest", "sweep"], [])
    digest = await entry(app, "digest")
    assert digest.meta["stem.source"] == "code" and digest.version == 1
    # Fired a few times; an operator disables "sweep"
    assert await store.due(START + 10, owner="a", claim_ttl=5)
    assert await store.mark_executed(
        "digest", owner="a", due_at=START + 10, ran_at=START + 10, next_run_at=START + 20, drift=0
    )
    sweep = await entry(app, "sweep")
    await store.upsert(msgspec.structs.replace(sweep, enabled=False))
    # A restart with the same code changes nothing: no write, the operator's change stays
    report = await app.beat(owner="b").sync()
    assert report.unchanged == ["digest", "sweep"] and not report.updated
    assert (await entry(app, "sweep")).enabled is False
    assert (await entry(app, "digest")).version == digest.version + 1  # only the firing
    # The code changes: arguments and spec; run fields are kept, the due time follows the spec
    app.schedules.clear()
    app.schedule("digest", Interval(60), "reports.send", args=["weekly"])
    time.clock.advance(3)
    report = await app.beat(owner="c").sync()
    assert report.updated == ["digest"] and report.no_longer_in_code == ["sweep"]
    digest = await entry(app, "digest")
    assert (digest.args, digest.spec, digest.total_runs) == (["weekly"], {"every": 60.0}, 1)
    assert digest.next_run_at == START + 40  # the first whole minute after the change
    assert (await entry(app, "sweep")).enabled is False  # left alone, listed


async def test_sync_retries_when_a_beat_writes_meanwhile(app: Stem) -> None:
    store = app.schedule_store
    app.schedule("digest", Interval(10), "reports.send")
    await app.beat(owner="a").sync()
    app.schedules.clear()
    app.schedule("digest", Interval(20), "reports.send")
    real_get = store.get
    raced = False

    async def get_then_someone_writes(entry_id: str) -> ScheduleEntry | None:
        nonlocal raced
        found = await real_get(entry_id)
        if not raced and found is not None:
            raced = True
            await store.upsert(msgspec.structs.replace(found, meta={**found.meta, "x": 1}))
        return found

    store.get = get_then_someone_writes  # type: ignore[method-assign]
    report = await app.beat(owner="b").sync()
    assert raced and report.updated == ["digest"]
    stored = await real_get("digest")
    assert stored is not None and stored.spec == {"every": 20.0} and stored.meta["x"] == 1


# -- bad input at definition -------------------------------------------------------------------


async def test_bad_entries_are_refused_when_defined(app: Stem) -> None:
    with pytest.raises(ConfigurationError, match=r"'reports\.nope' is not registered"):
        app.schedule("x", Interval(10), "reports.nope")
    with pytest.raises(ArgumentError):
        app.schedule("x", Interval(10), "reports.send", args=[1, 2, 3])

    @app.task(name="anything")
    async def anything(*values: Any) -> None: ...

    # Stored as JSON: what would come back as something else is refused
    with pytest.raises(ConfigurationError, match="plain JSON values"):
        app.schedule("x", Interval(10), "anything", args=[datetime.now(UTC)])
    with pytest.raises(ConfigurationError, match="plain JSON values"):
        app.schedule("x", Interval(10), "anything", args=[(1, 2)])
    with pytest.raises(ConfigurationError, match="plain JSON values"):
        app.schedule("x", Interval(10), "anything", args=[{1: "int key"}])
    with pytest.raises(ConfigurationError, match="catch_up must be 'once'"):
        app.schedule("x", Interval(10), "cache.sweep", catch_up="all")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="catch_up_limit goes with catch_up='each'"):
        app.schedule("x", Interval(10), "cache.sweep", catch_up_limit=3)
    with pytest.raises(ConfigurationError, match=r"jitter .* shorter than the interval"):
        app.schedule("x", Interval(10), "cache.sweep", jitter=10)
    with pytest.raises(ConfigurationError, match="unknown option"):
        app.schedule("x", Interval(10), "cache.sweep", options={"delay": 5})
    with pytest.raises(ConfigurationError, match="priority"):
        app.schedule("x", Interval(10), "cache.sweep", options={"priority": 12})
    with pytest.raises(ConfigurationError, match="the spec must be Interval"):
        app.schedule("x", "*/5 * * * *", "cache.sweep")  # type: ignore[arg-type]
    app.schedule("x", Interval(10), "cache.sweep")
    app.schedule("x", Interval(10), "cache.sweep")  # the same again: fine
    with pytest.raises(ConfigurationError, match="already defined as 'x'"):
        app.schedule("x", Interval(20), "cache.sweep")
    with pytest.raises(ConfigurationError, match="claim_ttl"):
        app.beat(claim_ttl=0)
