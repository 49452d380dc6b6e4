"""The worker, on the in-memory adapter, driven by events and the FakeClock."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from stem import FakeClock, SoftTimeLimitExceeded, Stem, TaskContext, TaskState
from stem._messages import Message
from stem.worker import Worker

Drive = Any


async def dead_letters(app: Stem, queue: str = "default") -> dict[str, str]:
    return {d.message.id: d.reason for d in await app.broker.list_dead_letters(queue)}


async def state_of(app: Stem, task_id: str) -> TaskState | None:
    status = await app.get_status(task_id)
    return status.state if status else None


# -- retries and dead letters ----------------------------------------------------------------


async def test_retry_with_backoff_then_dead_letter_with_traceback(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    attempts: list[tuple[int, float]] = []

    @app.task(name="flaky", max_retries=2, retry_backoff=10)
    async def flaky(ctx: TaskContext) -> None:
        attempts.append((ctx.attempt, clock.now()))
        raise RuntimeError("service down")

    async with app.worker(concurrency=1):
        ref = await flaky.enqueue()
        await drive(lambda: len(attempts) == 3)
        result = await app.wait_for_task(ref, timeout=60)
    assert [a for a, _ in attempts] == [0, 1, 2]
    assert attempts[1][1] - attempts[0][1] >= 10 and attempts[2][1] - attempts[1][1] >= 10
    assert result.failed and result.status is not None and result.status.attempt == 2
    (dead,) = await app.broker.list_dead_letters("default")
    assert dead.reason == "max-retries" and dead.message.id == ref
    assert "RuntimeError: service down" in (dead.error or "")
    assert "raise RuntimeError" in (dead.traceback or "")


async def test_ctx_retry_with_countdown(app: Stem, clock: FakeClock, drive: Drive) -> None:
    starts: list[float] = []

    @app.task(name="poll", max_retries=5)
    async def poll(ctx: TaskContext) -> str:
        starts.append(clock.now())
        if ctx.attempt < 2:
            ctx.retry(countdown=30)
        return "ready"

    async with app.worker():
        ref = await poll.enqueue()
        await drive(lambda: len(starts) == 3, step=1)
        result = await app.wait_for_task(ref, timeout=10)
    assert result.value == "ready"
    assert starts[1] - starts[0] >= 30 and starts[2] - starts[1] >= 30


async def test_exceptions_outside_retry_for_fail_at_once(app: Stem) -> None:
    @app.task(name="strict", max_retries=5, retry_for=ConnectionError)
    async def strict() -> None:
        raise ValueError("bad data")

    async with app.worker():
        result = await app.wait_for_task(await strict.enqueue(), timeout=10)
    assert result.failed and result.status is not None and result.status.attempt == 0
    assert (await dead_letters(app)) == {result.id: "failed"}


async def test_bad_input_goes_to_dead_letters_and_worker_goes_on(app: Stem) -> None:
    @app.task(name="typed")
    async def typed(count: int) -> int:
        return count

    producer = Stem(app.broker, app.backend, clock=app.clock)  # does not know the handlers
    await app.broker.publish(Message(id="garbage", queue="default", body=b"\xff not a message"))
    unknown = await producer.enqueue("nobody.home", [1])
    too_many = await producer.enqueue("typed", [1, 2, 3])
    wrong_type = await producer.enqueue("typed", ["not a number"])
    good = await producer.enqueue("typed", [7])
    async with app.worker(concurrency=1):
        assert (await app.wait_for_task(good, timeout=10)).value == 7
    assert await dead_letters(app) == {
        "garbage": "malformed",
        unknown: "unknown-task",
        too_many: "bad-arguments",
        wrong_type: "bad-arguments",
    }
    failed = await app.wait_for_task(wrong_type, timeout=1)
    assert failed.error is not None and "argument 'count'" in failed.error.message


async def test_unserializable_result_fails_the_task_clearly(app: Stem) -> None:
    @app.task(name="leaky")
    async def leaky() -> Any:
        return threading.Lock()

    async with app.worker():
        result = await app.wait_for_task(await leaky.enqueue(), timeout=10)
    assert result.failed and result.error is not None
    assert "cannot be stored as a result" in result.error.message
    assert (await dead_letters(app))[result.id] == "unserializable-result"


async def test_arguments_are_converted_to_annotations(app: Stem) -> None:
    seen: list[Any] = []

    @app.task(name="typed")
    async def typed(when: datetime, who: UUID) -> None:
        seen.append((type(when), type(who)))

    async with app.worker():
        await app.wait_for_task(
            await typed.enqueue(datetime.now().astimezone(), uuid4()), timeout=10
        )
    assert seen == [(datetime, UUID)]


# -- time limits -------------------------------------------------------------------------------


async def test_soft_limit_is_caught_by_an_async_handler(app: Stem, drive: Drive) -> None:
    @app.task(name="slow", soft_time_limit=5)
    async def slow() -> str:
        try:
            await asyncio.Event().wait()
        except SoftTimeLimitExceeded:
            return "cleaned up"
        return "never"

    async with app.worker():
        ref = await slow.enqueue()
        await drive(
            lambda: (
                app.backend._statuses.get(ref) is not None
                and app.backend._statuses[ref].state.is_final
            )
        )  # type: ignore[attr-defined]
        assert (await app.wait_for_task(ref, timeout=1)).value == "cleaned up"


async def test_hard_limit_stops_an_async_handler(app: Stem, drive: Drive) -> None:
    finished = False

    @app.task(name="stuck", time_limit=5, max_retries=3)
    async def stuck() -> None:
        nonlocal finished
        await asyncio.Event().wait()
        finished = True

    async with app.worker() as worker:
        ref = await stuck.enqueue()
        await drive(lambda: worker.counters["failed"] == 1)
    result = await app.wait_for_task(ref, timeout=1)
    assert result.failed and result.error is not None and "hard time limit" in result.error.message
    assert result.status is not None and result.status.attempt == 0  # not retried
    assert not finished
    assert (await dead_letters(app))[ref] == "time-limit"


async def test_soft_limit_interrupts_a_thread_handler(real_app: Stem) -> None:
    @real_app.task(name="busy", soft_time_limit=0.2)
    def busy() -> str:
        try:
            for _ in range(1000):
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "stopped early"
        return "ran to the end"

    async with real_app.worker():
        assert (
            await real_app.wait_for_task(await busy.enqueue(), timeout=10)
        ).value == "stopped early"


# -- the process pool ----------------------------------------------------------------------------


@pytest.fixture
def pool_app() -> Any:
    import importlib
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    try:
        yield importlib.import_module("_pool_tasks")
    finally:
        sys.path.remove(os.path.dirname(__file__))


@pytest.mark.processes
async def test_process_pool_runs_tasks_in_children(pool_app: Any) -> None:
    app: Stem = pool_app.app
    async with app.worker(concurrency=2, process_pool_size=2):
        refs = [await pool_app.square.enqueue(i) for i in range(4)]
        results = [await app.wait_for_task(r, timeout=30) for r in refs]
    assert [r.value["value"] for r in results] == [0, 1, 4, 9]
    import os

    assert os.getpid() not in {r.value["pid"] for r in results}


@pytest.mark.processes
async def test_hard_limit_kills_only_that_child_and_the_pool_goes_on(pool_app: Any) -> None:
    app: Stem = pool_app.app
    async with app.worker(concurrency=2, process_pool_size=2) as worker:
        warm = await app.wait_for_task(await pool_app.square.enqueue(2), timeout=30)
        spin = await pool_app.spin.enqueue()
        polite = await pool_app.polite.enqueue()
        spun = await app.wait_for_task(spin, timeout=30)
        after = await app.wait_for_task(await pool_app.square.enqueue(3), timeout=30)
        politely = await app.wait_for_task(polite, timeout=30)
        replaced = worker.processes.replaced
    assert warm.succeeded and after.value["value"] == 9
    assert (
        spun.failed and spun.error is not None and "child process was killed" in spun.error.message
    )
    assert politely.value == "cleaned up proc.polite"
    assert replaced == 1


@pytest.mark.processes
async def test_a_child_that_dies_is_redelivered_then_quarantined_as_poison(pool_app: Any) -> None:
    app: Stem = pool_app.app
    async with app.worker(concurrency=1, process_pool_size=1, max_deliveries=2) as worker:
        ref = await pool_app.crash.enqueue()
        result = await app.wait_for_task(ref, timeout=30)
        replaced = worker.processes.replaced
    assert result.failed and result.error is not None and result.error.type == "PoisonMessage"
    dead = await app.broker.get_dead_letter("default", ref)
    assert dead is not None and dead.reason == "poison" and dead.deliveries == 3
    assert replaced == 2


# -- poison, leases, liveness ---------------------------------------------------------------------


async def test_poison_message_is_quarantined(app: Stem, clock: FakeClock) -> None:
    ran = 0

    @app.task(name="t")
    async def t() -> None:
        nonlocal ran
        ran += 1

    ref = await t.enqueue()
    for _ in range(2):  # two workers died holding it
        assert await app.broker.reserve(["default"], 1, lease=10)
        clock.advance(11)
    async with app.worker(max_deliveries=2):
        result = await app.wait_for_task(ref, timeout=10)
    assert result.failed and ran == 0
    assert (await dead_letters(app)) == {ref: "poison"}


async def test_lease_is_renewed_while_a_long_task_runs(app: Stem, drive: Drive) -> None:
    release = asyncio.Event()
    runs = 0

    @app.task(name="long", visibility_timeout=30)
    async def long() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return "done"

    async with app.worker(concurrency=4) as worker:
        ref = await long.enqueue()
        start = app.clock.now()
        await drive(lambda: app.clock.now() - start > 200, step=1)
        assert (await app.broker.queue_stats("default")).inflight == 1
        assert runs == 1 and worker.inflight == 1
        release.set()
        assert (await app.wait_for_task(ref, timeout=10)).value == "done"


async def test_heartbeat_proves_consumption(app: Stem, clock: FakeClock, drive: Drive) -> None:
    async with app.worker(heartbeat_interval=5, concurrency=3, queues=["a", "b"]) as worker:
        await drive(lambda: worker.last_consumed_at is not None)
        (beat,) = await app.backend.list_heartbeats()
        assert (beat.worker_id, beat.queues, beat.concurrency) == (worker.id, ["a", "b"], 3)
        assert beat.last_consumed_at is not None and worker.healthy()

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("broker went away")

        app.broker.reserve = broken  # type: ignore[method-assign]
        await drive(lambda: not worker.healthy(), step=1)
        await drive(lambda: clock.now() - beat.sent_at > 6, step=1)
        (stale,) = await app.backend.list_heartbeats()
        assert stale.last_consumed_at == beat.last_consumed_at <= stale.sent_at - 5


# -- revocation ----------------------------------------------------------------------------------


async def test_revoked_before_start_never_runs(app: Stem) -> None:
    ran = False

    @app.task(name="t")
    async def t() -> None:
        nonlocal ran
        ran = True

    ref = await t.enqueue()
    await app.revoke(ref)
    async with app.worker():
        result = await app.wait_for_task(ref, timeout=10)
    assert result.state is TaskState.REVOKED and not ran


async def test_revoke_with_terminate_stops_a_running_task(app: Stem, drive: Drive) -> None:
    started, finished = asyncio.Event(), False

    @app.task(name="t")
    async def t() -> None:
        nonlocal finished
        started.set()
        await asyncio.Event().wait()
        finished = True

    async with app.worker(revoke_interval=2) as worker:
        ref = await t.enqueue()
        await started.wait()
        await app.revoke(ref, terminate=True, reason="user cancelled")
        await drive(lambda: worker.counters["revoked"] == 1)
    assert await state_of(app, ref) is TaskState.REVOKED
    assert not finished and (await app.broker.queue_stats("default")).inflight == 0


async def test_expired_task_is_not_run(app: Stem, clock: FakeClock) -> None:
    @app.task(name="t", expires=60)
    async def t() -> None: ...

    ref = await t.enqueue()
    clock.advance(61)
    async with app.worker():
        assert (await app.wait_for_task(ref, timeout=10)).state is TaskState.REVOKED


# -- concurrency, prefetch, shutdown -----------------------------------------------------------------


async def test_concurrency_is_a_hard_cap_and_short_tasks_pass_a_long_one(
    app: Stem, until: Any
) -> None:
    release = asyncio.Event()
    running = peak = 0
    short_done = 0

    @app.task(name="long")
    async def long() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await release.wait()
        running -= 1

    @app.task(name="short")
    async def short() -> None:
        nonlocal short_done
        short_done += 1

    async with app.worker(concurrency=3) as worker:
        for _ in range(2):
            await long.enqueue()
        for _ in range(5):
            await short.enqueue()
        await until(lambda: short_done == 5)  # two slots are held; the third serves them all
        for _ in range(6):
            await long.enqueue()
        # the worker's own count also waits for the last short task's ack to be written
        await until(lambda: running == 3 and worker.inflight == 3)
        stats = await app.broker.queue_stats("default")
        assert (stats.inflight, stats.pending) == (3, 5)
        release.set()
        await until(lambda: stats_done(app))
    assert peak == 3


def stats_done(app: Stem) -> bool:
    q = app.broker._queues["default"]  # type: ignore[attr-defined]
    return not q.ready and not q.leased


async def test_graceful_shutdown_finishes_running_and_returns_prefetched(
    app: Stem, until: Any
) -> None:
    release = asyncio.Event()
    started = 0

    @app.task(name="t")
    async def t(n: int) -> int:
        nonlocal started
        started += 1
        await release.wait()
        return n

    worker = app.worker(concurrency=2, prefetch=2, grace_period=60)
    await worker.start()
    refs = [await t.enqueue(i) for i in range(4)]
    await until(lambda: started == 2 and worker.inflight == 4)
    stopping = asyncio.ensure_future(worker.stop())
    await until(lambda: worker.inflight == 2)
    stats = await app.broker.queue_stats("default")
    assert (stats.pending, stats.inflight) == (2, 2)  # prefetched ones went back at once
    release.set()
    await stopping
    states = [await state_of(app, r) for r in refs]
    assert states[:2] == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]
    assert states[2:] == [TaskState.QUEUED, TaskState.QUEUED]  # given back, not started
    assert (await app.broker.queue_stats("default")).pending == 2


async def test_grace_period_over_gives_running_tasks_back(app: Stem, drive: Drive) -> None:
    started = asyncio.Event()

    @app.task(name="t")
    async def t() -> None:
        started.set()
        await asyncio.Event().wait()

    worker = app.worker(grace_period=10)
    await worker.start()
    ref = await t.enqueue()
    await started.wait()
    stopping = asyncio.ensure_future(worker.stop())
    await drive(stopping.done, step=1)
    assert await state_of(app, ref) is TaskState.STARTED
    stats = await app.broker.queue_stats("default")
    assert (stats.pending, stats.inflight) == (1, 0)


async def test_second_stop_cuts_the_grace_period(app: Stem, until: Any) -> None:
    started = asyncio.Event()

    @app.task(name="t")
    async def t() -> None:
        started.set()
        await asyncio.Event().wait()

    worker = app.worker(grace_period=3600)
    await worker.start()
    await t.enqueue()
    await started.wait()
    first = asyncio.ensure_future(worker.stop())
    await asyncio.sleep(0)
    await worker.stop(grace_period=0)
    await first
    assert (await app.broker.queue_stats("default")).pending == 1


# -- rate limits, autoscaling, routing, progress, hooks -------------------------------------------------


async def test_rate_limit_holds_the_rate_without_dropping(
    app: Stem, clock: FakeClock, drive: Drive
) -> None:
    starts: list[float] = []

    @app.task(name="limited", rate_limit="2/s")
    async def limited(n: int) -> None:
        starts.append(clock.now())

    async with app.worker(concurrency=10):
        await app.enqueue_many(limited.call(i) for i in range(12))
        await drive(lambda: len(starts) == 12, step=0.05)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert min(gaps) >= 0.5 - 1e-6  # never more than 2 starts in any second
    assert starts[-1] - starts[0] < 12 * 0.5 + 1  # and not much slower than the limit


async def test_autoscaling_up_with_backlog_and_down_when_idle(app: Stem, drive: Drive) -> None:
    release = asyncio.Event()

    @app.task(name="t")
    async def t() -> None:
        await release.wait()

    async with app.worker(concurrency=(1, 4), autoscale_interval=1) as worker:
        await app.enqueue_many(t.call() for _ in range(8))
        await drive(lambda: worker.concurrency == 4 and worker.inflight == 4)
        release.set()
        await drive(lambda: worker.concurrency == 1, step=1)
        assert worker.counters["succeeded"] == 8


async def test_worker_reads_several_queues_in_order(app: Stem) -> None:
    order: list[str] = []

    @app.task(name="t", queue="low")
    async def t(tag: str) -> None:
        order.append(tag)

    refs = [
        await t.enqueue("low-1"),
        await t.options(queue="high").enqueue("high-1"),
        await t.enqueue("low-2"),
        await t.options(queue="high").enqueue("high-2"),
    ]
    async with app.worker(queues=["high", "low"], concurrency=1):
        for ref in refs:
            await app.wait_for_task(ref, timeout=10)
    assert order == ["high-1", "high-2", "low-1", "low-2"]


async def test_progress_is_stored_with_the_status(app: Stem) -> None:
    reported, release = asyncio.Event(), asyncio.Event()

    @app.task(name="t")
    async def t(ctx: TaskContext) -> None:
        await ctx.progress(0.4, {"rows": 400})
        reported.set()
        await release.wait()

    async with app.worker():
        ref = await t.enqueue()
        await reported.wait()
        status = await app.get_status(ref)
        assert status is not None and (status.progress, status.progress_data) == (
            0.4,
            {"rows": 400},
        )
        release.set()
        await app.wait_for_task(ref, timeout=10)


async def test_hooks_run_in_order_and_a_failing_hook_is_harmless(app: Stem) -> None:
    events: list[str] = []
    for name in (
        "before_enqueue",
        "after_enqueue",
        "on_consume",
        "before_execute",
        "after_execute",
        "on_success",
        "on_worker_start",
        "on_worker_stop",
    ):
        app.hooks.on(name)(lambda name=name, **kw: events.append(name))

    @app.hooks.on("on_success")
    async def broken(**kwargs: Any) -> None:
        raise RuntimeError("hook bug")

    @app.hooks.add_middleware
    async def around(ctx: TaskContext, call_next: Any) -> Any:
        events.append("middleware:before")
        value = await call_next()
        events.append("middleware:after")
        return value * 2

    @app.task(name="t")
    async def t() -> int:
        events.append("handler")
        return 21

    async with app.worker():
        ref = await t.enqueue()
        assert (await app.wait_for_task(ref, timeout=10)).value == 42
    assert events == [
        "on_worker_start",
        "before_enqueue",
        "after_enqueue",
        "on_consume",
        "before_execute",
        "middleware:before",
        "handler",
        "middleware:after",
        "after_execute",
        "on_success",
        "on_worker_stop",
    ]


def test_worker_options_are_checked(app: Stem) -> None:
    from stem import ConfigurationError

    with pytest.raises(ConfigurationError):
        Worker(app, concurrency=0)
    with pytest.raises(ConfigurationError):
        Worker(app, concurrency=(4, 2))
    with pytest.raises(ConfigurationError):
        Worker(app, pool="fork")  # type: ignore[arg-type]
    # "async" would silently do nothing: async handlers always run on the loop
    with pytest.raises(ConfigurationError, match="event loop"):
        Worker(app, pool="async")


async def test_hard_limit_fails_a_thread_handler(real_app: Stem) -> None:
    stop = threading.Event()

    @real_app.task(name="stubborn", time_limit=0.3)
    def stubborn() -> str:
        stop.wait(30)  # a blocking C call: only the worker's hard limit frees the slot
        return "too late"

    async with real_app.worker():
        result = await real_app.wait_for_task(await stubborn.enqueue(), timeout=10)
    stop.set()
    assert (
        result.failed
        and result.error is not None
        and result.error.type.endswith("TimeLimitExceeded")
    )


async def test_an_unknown_payload_encoder_is_malformed_not_poison(app: Stem) -> None:
    @app.task(name="t")
    async def t(x: int) -> int:
        return x

    producer = Stem(app.broker, app.backend, clock=app.clock)
    task_id = await producer.enqueue("t", [1])
    (delivery,) = await app.broker.reserve(["default"], 1, 1)
    await app.broker.nack(delivery)  # put it back with a body naming an encoder nobody has
    body = delivery.message.body.replace(b'"task":"t"', b'"task":"t","args_encoder":"vault"')
    await app.broker.purge("default")
    await app.broker.publish(Message(id=task_id, queue="default", body=body))
    async with app.worker():
        result = await app.wait_for_task(task_id, timeout=10)
    assert result.failed and result.error is not None and "vault" in result.error.message
    assert (await dead_letters(app)) == {task_id: "malformed"}


async def test_a_failing_wait_does_not_end_the_consumer(app: Stem, drive: Drive) -> None:
    calls = 0
    original = app.broker.wait_for_messages

    async def flaky(queues: Any, timeout: float) -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("notification channel dropped")
        await original(queues, timeout)

    app.broker.wait_for_messages = flaky  # type: ignore[method-assign]

    @app.task(name="t")
    async def t() -> str:
        return "ok"

    async with app.worker():
        await drive(lambda: calls > 2)
        assert (await app.wait_for_task(await t.enqueue(), timeout=10)).value == "ok"
