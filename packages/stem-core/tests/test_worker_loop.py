"""The worker's own loops and settlement: lease renewal, batch isolation, counters, logs."""

from __future__ import annotations

import asyncio
import collections
import logging
import re
from typing import Any

import pytest

from stem import AdapterError, FakeClock, Stem, TaskContext, TaskState
from stem._messages import Delivery, Message, TaskStatus
from stem.worker import Worker

Drive = Any


async def dead_letters(app: Stem, queue: str = "default") -> dict[str, str]:
    return {d.message.id: d.reason for d in await app.broker.list_dead_letters(queue)}


# -- lease renewal (issue 7, item 2) ------------------------------------------------------------


async def test_a_lease_shorter_than_the_workers_is_renewed_on_time(app: Stem, drive: Drive) -> None:
    runs = 0

    @app.task(name="slow", visibility_timeout=1)
    async def slow() -> str:
        nonlocal runs
        runs += 1
        await app.clock.sleep(3)
        return "done"

    # The worker's own lease is 60 s. grace_period=0: a failing run does not hang at exit.
    async with app.worker(concurrency=4, grace_period=0) as worker:
        refs = [await slow.enqueue() for _ in range(3)]
        await drive(lambda: worker.counters["processed"] >= 3, step=0.1)
    assert runs == 3
    for ref in refs:
        result = await app.wait_for_task(ref, timeout=1)
        assert result.value == "done"
    assert await dead_letters(app) == {}


async def test_a_lease_extended_by_the_handler_wakes_the_renewal(app: Stem, drive: Drive) -> None:
    runs = 0

    @app.task(name="slow", visibility_timeout=1)
    async def slow(ctx: TaskContext) -> str:
        nonlocal runs
        runs += 1
        await ctx.extend_lease(2)  # asks for more, then keeps running past both leases
        await app.clock.sleep(5)
        return "done"

    async with app.worker(grace_period=0) as worker:
        ref = await slow.enqueue()
        await drive(lambda: worker.counters["processed"] >= 1, step=0.1)
    assert runs == 1 and (await app.wait_for_task(ref, timeout=1)).value == "done"


async def test_a_lost_lease_is_logged_and_not_renewed_again(
    app: Stem, drive: Drive, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    calls: collections.Counter[str] = collections.Counter()  # renewals per delivery
    original = app.broker.extend_lease

    async def lose(delivery: Delivery, seconds: float) -> bool:
        calls[delivery.receipt] += 1
        return False  # another worker took the message

    app.broker.extend_lease = lose  # type: ignore[method-assign]

    @app.task(name="t", visibility_timeout=3)
    async def t() -> None:
        await release.wait()

    caplog.set_level(logging.WARNING, "stem.worker")
    async with app.worker() as worker:
        await t.enqueue()
        # The lease really runs out (every renewal fails), so the message comes back
        # every 3 s; each delivery's lease is tried once, then given up, not retried
        # at every wake of the renewal loop.
        start = app.clock.now()
        await drive(lambda: app.clock.now() - start > 20, step=0.5)
        assert len(calls) >= 3
        assert set(calls.values()) == {1}
        assert "lost the lease" in caplog.text
        release.set()
        await drive(lambda: worker.inflight == 0)
    app.broker.extend_lease = original  # type: ignore[method-assign]


async def test_poison_never_contradicts_a_stored_final_status(app: Stem, clock: FakeClock) -> None:
    ran = 0

    @app.task(name="t")
    async def t() -> str:
        nonlocal ran
        ran += 1
        return "second"

    ref = await t.enqueue()
    # A worker ran it and stored its result, but its ack was lost (its lease ran out
    # first); the message was then delivered again and again.
    await app.backend.set_status(
        TaskStatus(id=ref, state=TaskState.SUCCEEDED, task="t", value="first")
    )
    for _ in range(2):
        assert await app.broker.reserve(["default"], 1, lease=10)
        clock.advance(11)
    async with app.worker(max_deliveries=2) as worker:
        for _ in range(1000):
            if worker.counters["processed"] == 1:
                break
            await asyncio.sleep(0)
    assert ran == 0 and worker.counters["skipped"] == 1
    result = await app.wait_for_task(ref, timeout=1)
    assert result.succeeded and result.value == "first"
    assert await dead_letters(app) == {}
    assert (await app.broker.queue_stats("default")).pending == 0


# -- settlement batches (issue 7, item 6) ------------------------------------------------------


async def test_one_unstorable_result_fails_alone(app: Stem, drive: Drive) -> None:
    runs: dict[int, int] = {}

    @app.task(name="t")
    async def t(n: int) -> str:
        runs[n] = runs.get(n, 0) + 1
        return "\ud800" if n == 7 else f"ok {n}"  # a lone surrogate: no backend can store it

    async with app.worker(concurrency=20) as worker:
        refs = await app.enqueue_many([t.call(n) for n in range(20)])
        await drive(lambda: worker.counters["processed"] == 20)
    assert runs == {n: 1 for n in range(20)}
    for n, ref in enumerate(refs):
        result = await app.wait_for_task(ref, timeout=1)
        if n == 7:
            assert result.failed and result.error is not None
            assert "cannot be stored" in result.error.message
        else:
            assert result.value == f"ok {n}"
    assert await dead_letters(app) == {refs[7]: "unserializable-result"}
    assert worker.counters["failed"] == 1 and worker.counters["succeeded"] == 19


async def test_an_unstorable_error_message_still_records_the_failure(app: Stem) -> None:
    @app.task(name="t", max_retries=0)
    async def t() -> None:
        raise ValueError("bad byte \udcff in the input")

    async with app.worker():
        result = await app.wait_for_task(await t.enqueue(), timeout=10)
    assert result.failed and result.error is not None
    assert "bad byte \\udcff in the input" in result.error.message
    assert await dead_letters(app) == {result.id: "failed"}


def _status(task_id: str, state: TaskState = TaskState.SUCCEEDED) -> tuple[TaskStatus, None]:
    return TaskStatus(id=task_id, state=state, task="t", value=task_id), None


async def test_a_failing_batch_write_is_split_to_find_the_bad_entry(app: Stem) -> None:
    writes: list[list[str]] = []
    original = app.broker.settle

    async def settle(deliveries: Any, statuses: Any, backend: Any) -> None:
        ids = [s.id for s, _ in statuses]
        writes.append(ids)
        if "bad" in ids:
            raise AdapterError("the database refused one row")
        await original(deliveries, statuses, backend)

    app.broker.settle = settle  # type: ignore[method-assign]
    worker = Worker(app)
    loop = asyncio.get_running_loop()
    ids = [f"t{n}" for n in range(7)] + ["bad"]
    futures = {i: loop.create_future() for i in ids}
    worker._settlement.pending = [(_status(i), None, futures[i]) for i in ids]
    await worker._settlement.flush()
    assert isinstance(futures["bad"].exception(), AdapterError)
    assert all(futures[i].result() is None for i in ids if i != "bad")
    stored = await app.backend.get_statuses(ids)
    assert sorted(stored) == sorted(i for i in ids if i != "bad")
    assert len(writes) <= 1 + 2 * 3  # halving: two writes per level of an 8-entry batch


async def test_a_batch_that_fails_everywhere_is_not_split_to_pieces(app: Stem) -> None:
    writes = 0

    async def settle(*args: Any) -> None:
        nonlocal writes
        writes += 1
        raise AdapterError("disk full")

    app.broker.settle = settle  # type: ignore[method-assign]
    worker = Worker(app)
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(16)]
    worker._settlement.pending = [(_status(f"t{n}"), None, f) for n, f in enumerate(futures)]
    await worker._settlement.flush()
    assert all(isinstance(f.exception(), AdapterError) for f in futures)
    assert writes == 3  # the batch, then both halves: the failure is not one entry's


# -- counters (issue 7: "processed 1 ... dead 2") ----------------------------------------------


async def test_counters_add_up(
    app: Stem, clock: FakeClock, drive: Drive, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task(name="ok")
    async def ok() -> int:
        return 1

    @app.task(name="flaky", max_retries=1, retry_backoff=1)
    async def flaky(ctx: TaskContext) -> int:
        if ctx.attempt == 0:
            raise ConnectionError("once")
        return 2

    @app.task(name="broken", max_retries=0)
    async def broken() -> None:
        raise ValueError("never works")

    @app.task(name="skipped")
    async def skipped() -> None:
        raise AssertionError("revoked: never runs")

    producer = Stem(app.broker, app.backend, clock=clock)
    await ok.enqueue()
    await ok.enqueue()
    await flaky.enqueue()
    await broken.enqueue()
    await app.broker.publish(Message(id="garbage", queue="default", body=b"\xff"))
    await producer.enqueue("nobody.home")
    await app.revoke(await skipped.enqueue())
    caplog.set_level(logging.INFO, "stem.worker")
    async with app.worker() as worker:
        await drive(lambda: worker.counters["succeeded"] == 3 and worker.counters["dead"] == 2)
        beat = worker.heartbeat()
    counters = dict(worker.counters)
    assert counters == {
        "processed": 8,
        "succeeded": 3,
        "failed": 1,
        "retried": 1,
        "dead": 2,
        "revoked": 1,
        "skipped": 0,
    }
    outcomes = sum(v for k, v in counters.items() if k != "processed")
    assert counters["processed"] == outcomes
    assert (beat.processed, beat.succeeded, beat.failed, beat.retried) == (8, 3, 1, 1)
    assert (beat.dead, beat.revoked, beat.skipped) == (2, 1, 0)
    (stopped,) = [r.getMessage() for r in caplog.records if " stopped (" in r.getMessage()]
    logged = dict(
        (name, int(value)) for name, value in re.findall(r"(\w+) (\d+)", stopped.split("(")[1])
    )
    assert logged == counters


# -- logs ----------------------------------------------------------------------------------------


async def test_an_unknown_task_is_named_in_the_warning(
    app: Stem, caplog: pytest.LogCaptureFixture
) -> None:
    producer = Stem(app.broker, app.backend, clock=app.clock)
    task_id = await producer.enqueue("__main__.greet", ["Ada"])
    caplog.set_level(logging.WARNING, "stem.worker")
    async with app.worker():
        assert (await app.wait_for_task(task_id, timeout=10)).failed
    (line,) = [r.getMessage() for r in caplog.records if "unknown-task" in r.getMessage()]
    assert "__main__.greet" in line and task_id in line


async def test_the_start_banner_says_where_and_what(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = Stem.from_url("memory://ada:s3cret@banner-test", clock=clock)

    @app.task(name="mail.send")
    async def send() -> None: ...

    @app.task(name="mail.bounce")
    def bounce() -> None: ...

    caplog.set_level(logging.INFO, "stem.worker")
    async with app.worker(queues=["high", "default"], concurrency=(2, 8), prefetch=3):
        pass
    await app.aclose()
    (banner,) = [r for r in caplog.records if "mail.send" in r.getMessage()]
    text = banner.getMessage()
    assert banner.levelno == logging.INFO and banner.name == "stem.worker"
    assert "memory://ada:***@banner-test" in text and "s3cret" not in text
    for part in ("high, default", "2-8", "prefetch", "mail.bounce", "thread"):
        assert part in text, part


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@host:6379/0", "redis://user:***@host:6379/0"),
        (
            "postgresql://u@h/db?sslmode=require&password=hunter2",
            "postgresql://u@h/db?sslmode=require&password=***",
        ),
        ("sqlite:///var/lib/stem.db", "sqlite:///var/lib/stem.db"),
        ("http://[::1", "<a URL that does not parse>"),
    ],
)
def test_the_banner_never_shows_a_password(url: str, shown: str) -> None:
    from stem.worker._where import mask

    assert mask(url) == shown
    assert "hunter2" not in mask(url)
