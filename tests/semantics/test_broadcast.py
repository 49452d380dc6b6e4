"""Broadcast queues: each worker consuming one runs every message published while it
was subscribed, once; on memory and SQLite (Redis: tests/processes/test_broadcast.py)."""

from __future__ import annotations

from collections import Counter

import pytest

from stem import ConfigurationError, FakeClock, Stem, TaskContext, TaskState
from stem.contracts import BrokerCapabilities, subscriber_queue
from stem.memory import MemoryBroker

from .conftest import Drive

NEWS = "news"


@pytest.fixture
def news_app(app: Stem) -> Stem:
    app.broadcast_queues = frozenset({NEWS})
    return app


async def test_every_subscribed_worker_runs_a_broadcast_once(news_app: Stem, drive: Drive) -> None:
    app = news_app
    runs: Counter[str] = Counter()

    @app.task(name="note", queue=NEWS)
    async def note(text: str) -> None:
        runs[text] += 1

    @app.task(name="plain")
    async def plain(text: str) -> None:
        runs[text] += 1

    w1 = app.worker(queues=[NEWS, "default"], worker_id="w1")
    w2 = app.worker(queues=[NEWS, "default"], worker_id="w2")
    async with w1, w2:
        ref = await note.enqueue("hello")
        await plain.enqueue("once")
        await drive(lambda: w1.counters["succeeded"] + w2.counters["succeeded"] == 3)
        # Each ran its own copy; nothing is left anywhere
        assert runs == {"hello": 2, "once": 1}
        assert min(w1.counters["succeeded"], w2.counters["succeeded"]) >= 1
        for worker in ("w1", "w2"):
            stats = await app.broker.queue_stats(subscriber_queue(NEWS, worker))
            assert (stats.pending, stats.inflight, stats.dead) == (0, 0, 0)
        status = await app.get_status(ref)
        assert status is not None and status.state is TaskState.SUCCEEDED
        assert status.queue == NEWS
    assert runs == {"hello": 2, "once": 1}


async def test_a_retried_copy_comes_back_to_its_own_worker(news_app: Stem, drive: Drive) -> None:
    app = news_app
    attempts: list[int] = []

    @app.task(name="flaky", queue=NEWS, max_retries=2)
    def flaky(ctx: TaskContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 0:
            raise ctx.retry(countdown=1)

    w1 = app.worker(queues=[NEWS], worker_id="w1")
    w2 = app.worker(queues=[NEWS], worker_id="w2")
    async with w1, w2:
        await flaky.enqueue()
        await drive(lambda: w1.counters["succeeded"] + w2.counters["succeeded"] == 2)
        # Had a retry gone to the broadcast queue itself, no worker would read it; had it
        # gone to the other worker, one would have run twice the other's share
        for worker in (w1, w2):
            assert (worker.counters["retried"], worker.counters["succeeded"]) == (1, 1)
    assert sorted(attempts) == [0, 0, 1, 1]


async def test_a_broadcast_no_worker_hears_fails_with_the_reason(
    news_app: Stem, drive: Drive
) -> None:
    app = news_app

    @app.task(name="note", queue=NEWS)
    async def note() -> None:
        raise AssertionError("nobody should run it")

    ref = await note.enqueue()
    status = await app.get_status(ref)
    assert status is not None and status.state is TaskState.FAILED
    assert status.error is not None and status.error.type == "NoSubscribers"
    assert NEWS in status.error.message
    # And a worker that subscribes afterwards does not get it
    runs = 0

    @app.task(name="later", queue=NEWS)
    async def later() -> None:
        nonlocal runs
        runs += 1

    async with app.worker(queues=[NEWS], worker_id="w1") as worker:
        await later.enqueue()
        await drive(lambda: worker.counters["processed"] == 1)
        assert runs == 1


async def test_a_worker_back_under_its_id_finds_its_copies(
    news_app: Stem, clock: FakeClock, drive: Drive
) -> None:
    app = news_app
    runs: list[str] = []

    @app.task(name="note", queue=NEWS)
    async def note(text: str) -> None:
        runs.append(text)

    async with app.worker(queues=[NEWS], worker_id="w1", heartbeat_interval=10):
        pass
    # Published while w1 is down, within its subscription's time to live
    await note.enqueue("while away")
    assert await app.broker.pending_count(subscriber_queue(NEWS, "w1")) == 1
    async with app.worker(queues=[NEWS], worker_id="w1", heartbeat_interval=10):
        await drive(lambda: runs == ["while away"])


async def test_an_ended_subscription_is_reaped_with_its_copies(
    news_app: Stem, clock: FakeClock, drive: Drive
) -> None:
    app = news_app
    runs: Counter[str] = Counter()

    @app.task(name="note", queue=NEWS)
    async def note(text: str) -> None:
        runs[text] += 1

    async with app.worker(queues=[NEWS], worker_id="gone", heartbeat_interval=1):
        pass
    async with app.worker(queues=[NEWS], worker_id="stays", heartbeat_interval=1):
        await note.enqueue("x")
        await drive(lambda: runs["x"] == 1)
        gone = subscriber_queue(NEWS, "gone")
        assert await app.broker.pending_count(gone) == 1

        async def reaped() -> bool:
            subs = await app.broker.subscriptions(NEWS)
            return [s.subscriber for s in subs] == ["stays"]

        # The subscription ends 3 s after its last renewal and is reaped 3 s later
        await drive(reaped, max_seconds=30)
        assert await app.broker.pending_count(gone) == 0
        # The live one was renewed all along
        [stays] = await app.broker.subscriptions(NEWS)
        assert stays.live
    assert runs == {"x": 1}


def test_a_broker_without_broadcast_is_refused() -> None:
    class Plain(MemoryBroker):
        capabilities = BrokerCapabilities(shared=False, broadcast=False)

    with pytest.raises(ConfigurationError, match="no broadcast queues"):
        Stem(Plain(), broadcast_queues=[NEWS])
    with pytest.raises(ConfigurationError, match="queue"):
        Stem(MemoryBroker(), broadcast_queues=["bad name"])
