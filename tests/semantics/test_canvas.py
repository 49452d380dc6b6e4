"""Canvas: group, chain and chord on memory, SQLite and Redis, on a FakeClock.

Results in order, chains passing results on, chords calling back exactly once (under
concurrent completion and after a crash at each point of the step), nesting, failures,
revocation, expiry, and a group started afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from stem import (
    CanvasFailedError,
    CanvasFailure,
    CanvasHandle,
    ConfigurationError,
    FakeClock,
    Stem,
    TaskError,
    TaskState,
    TaskStatus,
    TaskTimeoutError,
    chain,
    chord,
    group,
)
from stem.memory import (
    MemoryBroker,
    MemoryLockStore,
    MemoryResultBackend,
    MemoryRevokeStore,
)
from stem_sqlite import SqliteBroker, SqliteLockStore, SqliteResultBackend, SqliteRevokeStore

from .conftest import Drive


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def app(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Stem]:
    """This module's apps: the package's memory and SQLite ones, and Redis."""
    if request.param == "memory":
        request.applymarker(pytest.mark.memory)
        stem = Stem(
            MemoryBroker(clock=clock),
            MemoryResultBackend(clock=clock),
            lock_store=MemoryLockStore(clock=clock),
            revoke_store=MemoryRevokeStore(clock=clock),
            clock=clock,
        )
    elif request.param == "sqlite":
        request.applymarker(pytest.mark.sqlite)
        path = tmp_path / "stem.db"
        stem = Stem(
            SqliteBroker(path, clock=clock, poll_interval=0.05),
            SqliteResultBackend(path, clock=clock),
            lock_store=SqliteLockStore(path, clock=clock),
            revoke_store=SqliteRevokeStore(path, clock=clock),
            clock=clock,
        )
    else:
        stem = Stem.from_url(request.getfixturevalue("redis_url"), clock=clock)
    yield stem
    await stem.aclose()


async def outcome(drive: Drive, handle: CanvasHandle[Any]) -> Any:
    """Drive the clock until the canvas's result is final, then read it (or raise)."""

    async def final() -> bool:
        status = await handle.status()
        return status is not None and status.state.is_final

    await drive(final)
    return await handle.result(timeout=0)


async def quiet(app: Stem, drive: Drive) -> None:
    """Drive the clock a while, until nothing is queued or running: whatever was to be
    sent has been sent and run."""
    clock = app.clock
    assert isinstance(clock, FakeClock)
    until = clock.now() + 5

    async def idle() -> bool:
        stats = await app.broker.queue_stats("default")
        return clock.now() >= until and stats.pending == stats.inflight == stats.delayed == 0

    await drive(idle)


def states(statuses: dict[str, TaskStatus], ids: list[str]) -> list[TaskState | None]:
    return [statuses[i].state if i in statuses else None for i in ids]


# -- groups, chains, chords -------------------------------------------------------------


async def test_a_groups_results_come_in_the_groups_order(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    @app.task(name="slow_echo")
    async def slow_echo(n: int) -> int:
        await clock.sleep(10 - n)  # later members finish first
        return n

    finished: list[int] = []

    @app.hooks.on("on_success")
    def note(ctx: Any, value: Any) -> None:
        finished.append(value)

    async with app.worker(concurrency=10):
        handle = await group(*(slow_echo.call(n) for n in range(10))).apply(app)
        results = await outcome(drive, handle)
    assert results == list(range(10))
    assert finished[0] == 9 and finished[-1] == 0  # they did finish the other way round
    assert handle.group_id == handle.id
    assert len(handle.task_ids) == 10
    assert await handle.results(timeout=0) == list(range(10))


async def test_a_chain_gives_each_result_to_the_next_link_first(app: Stem, drive: Drive) -> None:
    seen: list[tuple[Any, ...]] = []

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        seen.append(("add", a, b))
        return a + b

    @app.task(name="double")
    async def double(x: int) -> int:
        seen.append(("double", x))
        return 2 * x

    async with app.worker(concurrency=4):
        handle = await app.apply(chain(add.call(1, 2), double, add.partial(10)))
        assert await outcome(drive, handle) == 16
    assert seen == [("add", 1, 2), ("double", 3), ("add", 6, 10)]
    statuses = await app.backend.get_statuses(handle.task_ids)
    assert states(statuses, handle.task_ids) == [TaskState.SUCCEEDED] * 3
    assert handle.id == handle.task_ids[-1]


async def test_a_chords_callback_gets_the_branch_results_in_order_once(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    calls: list[list[int]] = []

    @app.task(name="square")
    async def square(n: int) -> int:
        await clock.sleep(n % 3)
        return n * n

    @app.task(name="total")
    async def total(values: list[int], offset: int) -> int:
        calls.append(values)
        return sum(values) + offset

    async with app.worker(concurrency=8):
        handle = await app.apply(
            chord([square.call(n) for n in range(8)], total.partial(offset=1000))
        )
        assert await outcome(drive, handle) == 1000 + sum(n * n for n in range(8))
        await quiet(app, drive)  # nothing else comes
    assert calls == [[n * n for n in range(8)]]


async def test_nesting_a_group_in_a_chain_a_chord_of_chains_and_groups_of_groups(
    app: Stem, drive: Drive
) -> None:
    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="double")
    async def double(x: int) -> int:
        return 2 * x

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        return sum(values)

    async with app.worker(concurrency=8):
        # A group as a chain link: each member gets the previous result; the next link
        # gets the group's list
        in_chain = await app.apply(chain(add.call(1, 1), group(double, add.partial(5)), total))
        # A chord whose branches are chains; the callback gets each chain's last result
        of_chains = await app.apply(
            chord([chain(add.call(1, 1), double), chain(add.call(2, 2), double, double)], total)
        )
        # Groups in a group, and a chain ending in a group
        nested = await group(group(add.call(1, 1), add.call(2, 2)), add.call(3, 3)).apply(app)
        ending = await app.apply(chain(add.call(2, 3), group(double, double)))
        # A chord as a later link of a chain (its branches get the previous result)
        chord_link = await app.apply(chain(add.call(1, 2), chord(group(double, double), total)))
        assert await outcome(drive, in_chain) == 2 * 2 + (2 + 5)
        assert await outcome(drive, of_chains) == 4 + 16
        assert await outcome(drive, nested) == [[2, 4], 6]
        assert await outcome(drive, ending) == [10, 10]
        assert await outcome(drive, chord_link) == 12


class Point(msgspec.Struct):
    x: int
    y: int


async def test_results_are_decoded_to_the_tasks_annotations(app: Stem, drive: Drive) -> None:
    @app.task(name="point")
    async def point(x: int) -> Point:
        return Point(x, -x)

    @app.task(name="xs")
    async def xs(points: list[Point]) -> list[int]:
        return [p.x for p in points]

    async with app.worker(concurrency=4):
        grouped = await group(point.call(1), point.call(2)).apply(app)
        chorded = await app.apply(chord([point.call(3), point.call(4)], xs))
        assert await outcome(drive, grouped) == [Point(1, -1), Point(2, -2)]
        assert await outcome(drive, chorded) == [3, 4]


async def test_eager_mode_runs_a_canvas_inline(tmp_path: Path) -> None:
    app = Stem(MemoryBroker(), eager=True)

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        return sum(values)

    handle = await app.apply(chord([chain(add.call(1, 2), add.partial(1)), add.call(3, 4)], total))
    assert await handle.result(timeout=0) == 11
    await app.aclose()


# -- failures ----------------------------------------------------------------------------


async def test_a_failing_branch_fails_the_chord_and_runs_only_the_error_callback(
    app: Stem, drive: Drive
) -> None:
    ran: list[str] = []
    failures: list[CanvasFailure] = []

    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    @app.task(name="flaky", max_retries=2, retry_backoff=1)
    async def flaky(n: int) -> int:
        ran.append("flaky")
        raise ValueError(f"no {n}")

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        ran.append("total")
        return sum(values)

    @app.task(name="alert")
    async def alert(failure: CanvasFailure, channel: str) -> str:
        failures.append(failure)
        return channel

    async with app.worker(concurrency=4):
        handle = await app.apply(
            chord(
                group(ok.call(1), flaky.call(2), ok.call(3), group_id="g-fail"),
                total,
                on_error=alert.partial("ops"),
            )
        )
        with pytest.raises(CanvasFailedError) as caught:
            await outcome(drive, handle)
        flaky_id = handle.task_ids[1]
        await drive(lambda: len(failures) == 1)
        await quiet(app, drive)
    # The chord failed with the branch's error, after the branch's retries
    assert (caught.value.task_id, caught.value.task) == (flaky_id, "flaky")
    assert caught.value.error.type == "ValueError" and caught.value.error.message == "no 2"
    assert ran == ["flaky"] * 3
    # The error callback ran once, with the failure; the callback never ran
    assert failures == [
        CanvasFailure(
            task_id=flaky_id, task="flaky", error=TaskError(type="ValueError", message="no 2")
        )
    ]
    callback = await app.get_status(handle.id)
    assert callback is not None and callback.state is TaskState.FAILED
    assert callback.error is not None and callback.error.type == "ValueError"
    assert callback.meta["stem.not_run"] is True
    assert callback.meta["stem.cause"]["id"] == flaky_id
    # The group's own status says so too
    grouped = await app.get_status("g-fail")
    assert grouped is not None and grouped.state is TaskState.FAILED
    assert grouped.meta["stem.cause"]["id"] == flaky_id


async def test_a_failing_chord_callback_runs_the_error_callback(app: Stem, drive: Drive) -> None:
    failures: list[CanvasFailure] = []

    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    @app.task(name="picky", max_retries=0)
    async def picky(values: list[int]) -> int:
        raise LookupError("not these")

    @app.task(name="alert")
    async def alert(failure: CanvasFailure) -> None:
        failures.append(failure)

    async with app.worker(concurrency=4):
        handle = await app.apply(chord([ok.call(1), ok.call(2)], picky, on_error=alert))
        with pytest.raises(CanvasFailedError, match="LookupError: not these"):
            await outcome(drive, handle)
        await drive(lambda: len(failures) == 1)
    assert failures[0].task_id == handle.id and failures[0].task == "picky"


async def test_a_failing_link_stops_the_chain_and_marks_the_links_not_run(
    app: Stem, drive: Drive
) -> None:
    ran: list[str] = []

    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        ran.append("add")
        return a + b

    @app.task(name="breaks", max_retries=0)
    async def breaks(x: int) -> int:
        ran.append("breaks")
        raise RuntimeError(f"broke on {x}")

    @app.task(name="double")
    async def double(x: int) -> int:
        ran.append("double")
        return 2 * x

    async with app.worker(concurrency=4):
        handle = await app.apply(
            chain(add.call(1, 2), breaks, double, group(double, double), double)
        )
        with pytest.raises(CanvasFailedError) as caught:
            await outcome(drive, handle)
    first, broken, *rest = handle.task_ids
    assert caught.value.task_id == broken and caught.value.error.message == "broke on 3"
    assert ran == ["add", "breaks"]
    statuses = await app.backend.get_statuses(handle.task_ids)
    assert states(statuses, [first, broken]) == [TaskState.SUCCEEDED, TaskState.FAILED]
    # Every link after it (the group's members too) says it did not run, and why
    assert states(statuses, rest) == [TaskState.FAILED] * len(rest)
    for task_id in rest:
        error = statuses[task_id].error
        assert error is not None and error.type == "RuntimeError"
        assert error.message == f"not run: breaks[{broken}] failed before it: broke on 3"
        assert statuses[task_id].meta["stem.not_run"] is True


async def test_a_failing_chain_in_a_chord_fails_the_chord_with_the_first_error(
    app: Stem, drive: Drive
) -> None:
    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    @app.task(name="breaks", max_retries=0)
    async def breaks(x: int) -> int:
        raise KeyError(x)

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        return sum(values)

    async with app.worker(concurrency=4):
        handle = await app.apply(
            chord([ok.call(1), chain(ok.call(2), breaks, ok.partial())], total)
        )
        with pytest.raises(CanvasFailedError) as caught:
            await outcome(drive, handle)
    assert caught.value.task == "breaks" and caught.value.error.type == "KeyError"


async def test_revoking_a_group_revokes_its_members_and_fails_its_chord(
    app: Stem, drive: Drive
) -> None:
    ran: list[int] = []
    failures: list[CanvasFailure] = []

    @app.task(name="job")
    async def job(n: int) -> int:
        ran.append(n)
        return n

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        return sum(values)

    @app.task(name="alert")
    async def alert(failure: CanvasFailure) -> None:
        failures.append(failure)

    handle = await app.apply(
        chord(
            group(job.call(1), chain(job.call(2), job.partial()), group_id="g-revoked"),
            total,
            on_error=alert,
        )
    )
    revoked = await app.revoke_group("g-revoked")
    assert sorted(revoked) == sorted(handle.task_ids[:-1])  # the members, inside the chain too
    async with app.worker(concurrency=4, revoke_interval=1):
        with pytest.raises(CanvasFailedError) as caught:
            await outcome(drive, handle)
        await drive(lambda: len(failures) == 1)
    assert ran == []
    assert caught.value.error.type == "Revoked"
    assert await app.revoke_group("no-such-group") == []


async def test_a_handle_revokes_its_canvas(app: Stem, drive: Drive) -> None:
    @app.task(name="job")
    async def job(n: int) -> int:
        return n

    handle = await group(job.call(1), job.call(2)).apply(app)
    await handle.revoke()
    async with app.worker(concurrency=4, revoke_interval=1):
        with pytest.raises(CanvasFailedError, match="Revoked"):
            await outcome(drive, handle)
    statuses = await app.backend.get_statuses(handle.task_ids)
    assert states(statuses, handle.task_ids) == [TaskState.REVOKED] * 2


# -- expiry, starting afresh, the claim's record --------------------------------------------


async def test_a_group_expires_with_the_result_ttl_and_refuses_late_results(
    app: Stem, clock: FakeClock, drive: Drive, caplog: pytest.LogCaptureFixture
) -> None:
    gate = asyncio.Event()
    calls: list[list[int]] = []

    @app.task(name="fast", result_ttl=10)
    async def fast(n: int) -> int:
        return n

    @app.task(name="late", result_ttl=10)
    async def late(n: int) -> int:
        await gate.wait()
        return n

    @app.task(name="total", result_ttl=10)
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    async with app.worker(concurrency=4):
        # A group that completes in time: its own result lasts its TTL
        quick = await group(fast.call(1), fast.call(2), group_id="g-quick").apply(app)
        assert await outcome(drive, quick) == [1, 2]
        # and one whose last member finishes after the TTL passed with nothing finishing
        handle = await app.apply(chord(group(fast.call(1), late.call(2), group_id="g-old"), total))
        fast_id, late_id = handle.task_ids[:2]

        async def fast_done() -> bool:
            status = await app.get_status(fast_id)
            return status is not None and status.state is TaskState.SUCCEEDED

        await drive(fast_done)
        clock.advance(11)
        assert await app.get_status("g-quick") is None  # expired with its TTL
        with caplog.at_level(logging.WARNING, logger="stem.canvas"):
            gate.set()

            async def late_done() -> bool:
                status = await app.get_status(late_id)
                return status is not None and status.state is TaskState.SUCCEEDED

            await drive(late_done)
            await drive(lambda: "group g-old expired" in caplog.text)
        await quiet(app, drive)
    assert calls == []
    assert await app.get_status("g-old") is None
    with pytest.raises(TaskTimeoutError):
        await handle.result(timeout=0)


async def test_applying_a_group_again_starts_it_afresh(app: Stem, drive: Drive) -> None:
    calls: list[list[int]] = []

    @app.task(name="job")
    async def job(n: int) -> int:
        return n

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    async with app.worker(concurrency=4):
        first = await app.apply(chord(group(job.call(1), job.call(2), group_id="nightly"), total))
        assert await outcome(drive, first) == 3
        second = await app.apply(
            chord(group(job.call(10), job.call(20), job.call(30), group_id="nightly"), total)
        )
        assert await outcome(drive, second) == 60
    assert calls == [[1, 2], [10, 20, 30]]
    state = await app.backend.get_group("nightly")
    assert state is not None and state.size == 3 and set(state.results) == set(second.task_ids[:3])


async def test_the_chord_claim_records_the_callback_and_when_it_was_sent(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    @app.task(name="job")
    async def job(n: int) -> int:
        return n

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        return sum(values)

    start = clock.now()
    async with app.worker(concurrency=4):
        handle = await app.apply(chord(group(job.call(1), job.call(2), group_id="g-rec"), total))
        assert await outcome(drive, handle) == 3
    grouped = await app.get_status("g-rec")
    assert grouped is not None and grouped.state is TaskState.SUCCEEDED
    state = await app.backend.get_group("g-rec")
    assert state is not None
    assert state.chord_meta == {"callback": handle.id}
    assert state.chord_claimed_at is not None
    assert start <= state.chord_claimed_at <= clock.now()
    assert state.chord_claimed_by in handle.task_ids[:2]


# -- exactly once -------------------------------------------------------------------------


async def test_many_branches_finishing_at_once_on_two_workers_call_back_once(
    app: Stem, drive: Drive
) -> None:
    gate = asyncio.Event()
    calls: list[list[int]] = []

    @app.task(name="held")
    async def held(n: int) -> int:
        await gate.wait()
        return n

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    size = 40
    async with app.worker(concurrency=size), app.worker(concurrency=size):
        handle = await app.apply(chord([held.call(n) for n in range(size)], total))

        async def all_started() -> bool:
            found = await app.backend.get_statuses(handle.task_ids[:size])
            return all(s.state is TaskState.STARTED for s in found.values()) and len(found) == size

        await drive(all_started)
        gate.set()  # every branch finishes in the same moment
        assert await outcome(drive, handle) == sum(range(size))
        await quiet(app, drive)
    assert calls == [list(range(size))]


Crash = Callable[[], Awaitable[None]]


@pytest.mark.parametrize("where", ["before-the-step", "after-the-claim", "after-the-dispatch"])
async def test_a_crash_in_the_last_branchs_step_still_calls_back_once(
    app: Stem, drive: Drive, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The step after the last branch's result fails at each point (as a killed worker
    would stop there): the message comes back, the worker finds the stored result, and
    finishes the step; the branch does not run again and the callback runs once."""
    gate = asyncio.Event()
    runs: list[str] = []
    calls: list[list[int]] = []

    @app.task(name="job")
    async def job(n: int) -> int:
        runs.append(f"job{n}")
        if n == 2:
            await gate.wait()
        return n

    @app.task(name="total")
    async def total(values: list[int]) -> int:
        calls.append(values)
        return sum(values)

    canvas = app._canvas
    crashed: list[str] = []

    def crash_once() -> None:
        if not crashed:
            crashed.append(where)
            raise RuntimeError(f"worker stopped {where}")

    real_after, real_dispatch = canvas.after_final, canvas.dispatch

    async def after_final(envelope: Any, status: TaskStatus, *, recovering: bool = False) -> None:
        if where == "before-the-step" and envelope.args == [2]:
            crash_once()
        await real_after(envelope, status, recovering=recovering)

    async def dispatch(items: Any, *, recovering: bool) -> None:
        if where == "after-the-claim":
            crash_once()
        await real_dispatch(items, recovering=recovering)
        if where == "after-the-dispatch":
            crash_once()

    async with app.worker(concurrency=4):
        handle = await app.apply(chord([job.call(1), job.call(2)], total))
        await drive(lambda: runs == ["job1", "job2"] or runs == ["job2", "job1"])
        monkeypatch.setattr(canvas, "after_final", after_final)
        monkeypatch.setattr(canvas, "dispatch", dispatch)
        gate.set()
        assert await outcome(drive, handle) == 3
        await quiet(app, drive)
    assert crashed == [where]
    assert sorted(runs) == ["job1", "job2"]  # the branch did not run again
    assert calls == [[1, 2]]


# -- what a canvas refuses ------------------------------------------------------------------


async def test_malformed_canvases_are_refused_with_what_to_write(app: Stem) -> None:
    @app.task(name="add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="once", unique=True)
    async def once(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError, match=r"task\.partial"):
        chain(add.call(1, 2), add.call(3, 4))  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="at least one member"):
        group()
    with pytest.raises(ConfigurationError, match="mixes complete calls"):
        group(add.call(1, 2), add)  # type: ignore[call-overload]
    with pytest.raises(ConfigurationError, match="waits for a previous result"):
        await app.apply(chain(add.partial(1), add.partial(2)))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unique"):
        await group(once.call(1)).apply(app)
    with pytest.raises(TypeError, match="arguments do not fit"):
        add.partial(1, 2)
    assert await app.backend.list_statuses() == []  # nothing was sent
