"""The producer side: defining tasks, enqueueing, results, uniqueness, sync path, eager mode."""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

import stem
from stem import (
    ConfigurationError,
    FakeClock,
    SerializationError,
    Stem,
    TaskContext,
    TaskState,
    UnknownSchemeError,
)
from stem._codec import decode_envelope
from stem.memory import MemoryBroker
from stem.testing import FakeStem, eager_app


async def reserve_one(app: Stem) -> stem.Envelope:
    (delivery,) = await app.broker.reserve(["default"], 1, 30)
    return decode_envelope(delivery.message.body)


# -- definition ----------------------------------------------------------------------------


def test_task_name_defaults_to_module_and_qualname(app: Stem) -> None:
    @app.task
    async def send() -> None: ...

    assert send.name == f"{__name__}.test_task_name_defaults_to_module_and_qualname.<locals>.send"


def test_context_parameter_is_detected(app: Stem) -> None:
    @app.task(name="a")
    async def with_ctx(ctx: TaskContext, x: int) -> int:
        return x

    @app.task(name="b")
    async def without(x: int) -> int:
        return x

    assert with_ctx.takes_context and not without.takes_context
    assert list(with_ctx.signature.parameters) == ["x"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"rate_limit": "ten per second"}, "rate limit"),
        ({"priority": 10}, "priority"),
        ({"queue": "has space"}, "queue"),
        ({"soft_time_limit": 10, "time_limit": 5}, "soft_time_limit"),
        ({"visibility_timeout": -3}, "visibility_timeout"),
        ({"pool": "fork"}, "pool"),
        ({"result_encoder": "nope"}, "payload encoder"),
    ],
)
def test_invalid_options_fail_at_definition(
    app: Stem, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        app.task(name="t", **options)(lambda: None)


def test_rate_limit_forms() -> None:
    assert stem.RateLimit.parse("10/s").interval == pytest.approx(0.1)
    assert stem.RateLimit.parse("100/m").interval == pytest.approx(0.6)
    assert stem.RateLimit.parse("1000/h").interval == pytest.approx(3.6)
    assert stem.RateLimit.parse("5/10s").interval == pytest.approx(2.0)


def test_same_name_for_another_function_is_refused(app: Stem) -> None:
    app.task(name="dup")(lambda: 1)
    with pytest.raises(ConfigurationError, match="already registered"):
        app.task(name="dup")(lambda: 2)


def test_async_pool_for_plain_function_is_refused(app: Stem) -> None:
    with pytest.raises(ConfigurationError, match="plain function"):
        app.task(name="p", pool="async")(lambda: 1)


# -- URLs ----------------------------------------------------------------------------------


def test_unknown_scheme_lists_known_and_suggests() -> None:
    with pytest.raises(UnknownSchemeError, match=r"Known schemes: .*memory.*Did you mean redis://"):
        Stem.from_url("redsi://localhost")


def test_missing_adapter_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    from stem import _registry

    monkeypatch.setattr(
        _registry, "_entry_point_schemes", lambda: {"memory": "stem.memory:adapter"}
    )
    monkeypatch.setattr(_registry, "_registered", {})  # as if sqlite was never loaded
    with pytest.raises(UnknownSchemeError, match="pip install stem-sqlite"):
        Stem.from_url("sqlite:///stem.db")


@pytest.mark.parametrize("url", ["localhost:6379", "not a url", "", "memory:"])
def test_malformed_urls(url: str) -> None:
    with pytest.raises(ConfigurationError, match="URL"):
        Stem.from_url(url or "memory")


def test_named_memory_urls_share_stores() -> None:
    producer = Stem.from_url("memory://shared-test")
    worker = Stem.from_url("memory://shared-test")
    assert producer.broker is worker.broker and producer.backend is worker.backend
    assert Stem.from_url("memory://").broker is not Stem.from_url("memory://").broker


def test_env_url_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEM_URL", "memory://from-env")
    assert Stem.from_url().broker is Stem.from_url("memory://from-env").broker


# -- enqueueing ----------------------------------------------------------------------------


async def test_enqueue_publishes_an_envelope(app: Stem) -> None:
    @app.task(name="orders.charge", queue="default", max_retries=4, priority=3)
    async def charge(ctx: TaskContext, order_id: str, amount: int = 1) -> dict[str, int]:
        return {"amount": amount}

    ref = await charge.enqueue("42", amount=7)
    envelope = await reserve_one(app)
    assert envelope.id == ref
    assert (envelope.task, envelope.args, envelope.kwargs) == (
        "orders.charge",
        ["42"],
        {"amount": 7},
    )
    assert (envelope.max_retries, envelope.priority, envelope.attempt) == (4, 3, 0)


async def test_unserializable_argument_is_named_and_nothing_published(app: Stem) -> None:
    @app.task(name="t")
    async def t(a: Any, payload: Any) -> None: ...

    with pytest.raises(TypeError, match="argument 'payload'") as info:
        await t.enqueue(1, payload=threading.Lock())
    assert isinstance(info.value, SerializationError)
    assert (await app.broker.queue_stats("default")).pending == 0


async def test_arguments_that_do_not_fit_raise_at_enqueue(app: Stem) -> None:
    @app.task(name="t")
    async def t(a: int) -> None: ...

    with pytest.raises(TypeError, match="do not fit"):
        await t.enqueue(1, 2)  # type: ignore[call-arg]


async def test_options_override_per_enqueue(app: Stem, clock: FakeClock) -> None:
    @app.task(name="t")
    async def t(x: int) -> None: ...

    await t.options(
        queue="other", priority=9, delay=timedelta(seconds=30), headers={"x-tenant": "a"}
    ).enqueue(1)
    assert await app.broker.reserve(["other"], 1, 10) == []
    clock.advance(30)
    (delivery,) = await app.broker.reserve(["other"], 1, 10)
    envelope = decode_envelope(delivery.message.body)
    assert (envelope.queue, envelope.priority, envelope.headers) == ("other", 9, {"x-tenant": "a"})
    assert envelope.eta == pytest.approx(clock.now())


async def test_eta_must_be_timezone_aware(app: Stem) -> None:
    with pytest.raises(ConfigurationError, match="timezone-aware"):
        await app.enqueue("t", eta=datetime(2030, 1, 1))
    await app.enqueue("t", eta=datetime(2030, 1, 1, tzinfo=UTC))


async def test_unknown_enqueue_option(app: Stem) -> None:
    with pytest.raises(ConfigurationError, match="unknown enqueue option"):
        await app.enqueue("t", colour="red")


async def test_enqueue_by_name_without_the_handler(app: Stem) -> None:
    task_id = await app.enqueue("billing.charge", kwargs={"order_id": "7"}, priority=2)
    envelope = await reserve_one(app)
    assert (envelope.id, envelope.task, envelope.kwargs, envelope.priority) == (
        task_id,
        "billing.charge",
        {"order_id": "7"},
        2,
    )


async def test_enqueue_many_publishes_once(app: Stem) -> None:
    calls: list[int] = []
    original = app.broker.publish_many

    async def counting(messages: Any) -> None:
        calls.append(len(messages))
        await original(messages)

    app.broker.publish_many = counting  # type: ignore[method-assign]

    @app.task(name="t")
    async def t(x: int) -> None: ...

    ids = await app.enqueue_many(t.call(i) for i in range(50))
    assert len(set(ids)) == 50 and calls == [50]


async def test_msgpack_wire_format(clock: FakeClock) -> None:
    app = Stem(MemoryBroker(clock=clock), wire_format="msgpack")
    await app.enqueue("t", [1, "two"])
    (delivery,) = await app.broker.reserve(["default"], 1, 10)
    assert delivery.message.body[:1] != b"{"
    assert decode_envelope(delivery.message.body).args == [1, "two"]


# -- unique tasks --------------------------------------------------------------------------


async def test_unique_duplicate_returns_existing_id(app: Stem) -> None:
    seen: list[str] = []
    app.hooks.on("on_duplicate")(lambda envelope, existing_id: seen.append(existing_id))

    @app.task(name="sync", unique=True)
    async def sync(account: str) -> None: ...

    first = await sync.enqueue("a")
    assert await sync.enqueue("a") == first
    assert await sync.enqueue("b") != first
    assert seen == [first]
    assert (await app.broker.queue_stats("default")).pending == 2


async def test_unique_for_expires_with_time(app: Stem, clock: FakeClock) -> None:
    @app.task(name="sync", unique_for=60)
    async def sync(account: str) -> None: ...

    first = await sync.enqueue("a")
    clock.advance(59)
    assert await sync.enqueue("a") == first
    clock.advance(2)
    assert await sync.enqueue("a") != first


async def test_unique_key_override(app: Stem) -> None:
    @app.task(name="sync", unique=True)
    async def sync(account: str) -> None: ...

    first = await sync.options(unique_key="order-42").enqueue("a")
    assert await sync.options(unique_key="order-42").enqueue("b") == first


async def test_unique_until_finished_is_released_when_done() -> None:
    app = eager_app()

    @app.task(name="sync", unique=True)
    async def sync(account: str) -> str:
        return account

    first = await app.enqueue("sync", ["a"])
    second = await app.enqueue("sync", ["a"])
    assert first != second  # the first finished (eagerly), so its lock was freed


def test_unique_key_is_canonical() -> None:
    from stem._unique import unique_key

    a = stem.Envelope(id="1", task="t", kwargs={"x": 1, "y": 2}, meta={"stem.unique": "ignored"})
    b = stem.Envelope(id="2", task="t", kwargs={"y": 2, "x": 1})
    assert unique_key(a) == unique_key(b)
    assert unique_key(a) != unique_key(stem.Envelope(id="3", task="t", kwargs={"x": 1, "y": 3}))


# -- results -------------------------------------------------------------------------------


@dataclass
class Receipt:
    order: str
    total: int


async def test_wait_for_task_decodes_to_the_return_annotation() -> None:
    app = eager_app()

    @app.task(name="charge")
    async def charge(order: str) -> Receipt:
        return Receipt(order, 12)

    ref = await charge.enqueue("42")
    result = await app.wait_for_task(ref, timeout=1)
    assert result.succeeded and result.value == Receipt("42", 12)
    untyped = await app.wait_for_task(str(ref), timeout=1, decode=dict)
    assert untyped.value == {"order": "42", "total": 12}


async def test_wait_for_task_times_out_without_raising(
    app: Stem, clock: FakeClock, until: Any
) -> None:
    waiting = asyncio.ensure_future(app.wait_for_task("missing", timeout=5))
    await until(lambda: clock.sleepers > 0)
    clock.advance(5)
    result = await waiting
    assert result.timed_out and result.status is None and result.value is None


async def test_failed_task_result_carries_the_error() -> None:
    app = eager_app()

    @app.task(name="boom", max_retries=1, retry_backoff=0)
    async def boom() -> None:
        raise ValueError("bad input")

    result = await app.wait_for_task(await boom.enqueue(), timeout=1)
    assert result.failed and result.error is not None
    assert result.error.type == "ValueError" and "bad input" in (result.error.traceback or "")
    assert result.status is not None and result.status.attempt == 1


# -- sync path, testing helpers --------------------------------------------------------------


def test_sync_producer_path() -> None:
    app = Stem(MemoryBroker(), eager=True)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    ref = add.enqueue_sync(2, 3)
    assert app.wait_for_task_sync(ref, timeout=1).value == 5
    by_name = app.enqueue_sync("add", [1, 1])
    assert app.wait_for_task_sync(by_name, timeout=1).value == 2
    app.close_sync()
    assert app._portal._loop is None


async def test_sync_path_refuses_inside_a_loop(app: Stem) -> None:
    with pytest.raises(stem.StemError, match="await"):
        app.enqueue_sync("t")


async def test_fake_stem_records_enqueues() -> None:
    fake = FakeStem()

    @fake.task(name="email.send")
    async def send(to: str) -> None: ...

    await send.options(priority=4).enqueue(to="a@example.com")
    await fake.enqueue("other", [1])
    assert [e.task for e in fake.enqueued] == ["email.send", "other"]
    assert fake.enqueued_for("email.send")[0].kwargs == {"to": "a@example.com"}
    assert fake.enqueued[0].priority == 4


async def test_eager_mode_goes_through_encoding() -> None:
    app = eager_app()
    seen: list[Any] = []

    @app.task(name="t")
    async def t(when: datetime, token: uuid.UUID) -> None:
        seen.append((when, token))

    token = uuid.uuid4()
    await t.enqueue(datetime(2030, 1, 1, tzinfo=UTC), token)
    assert seen == [(datetime(2030, 1, 1, tzinfo=UTC), token)]


def test_fake_clock_wakes_sleepers_in_order() -> None:
    async def scenario() -> list[int]:
        clock = FakeClock()
        woke: list[int] = []

        async def sleeper(n: int, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(n)

        tasks = [asyncio.ensure_future(sleeper(1, 10)), asyncio.ensure_future(sleeper(2, 5))]
        await asyncio.sleep(0)
        clock.advance(6)
        await asyncio.sleep(0)
        assert woke == [2]
        clock.advance(4)
        await asyncio.gather(*tasks)
        return woke

    assert asyncio.run(scenario()) == [2, 1]


def test_public_api_is_pinned() -> None:
    names = set(stem.__all__)
    assert {"Stem", "TaskContext", "FakeClock", "StemError", "TaskResult", "TaskRef"} <= names
    assert all(not n.startswith("_") or n == "__version__" for n in names)
    assert all(hasattr(stem, n) for n in names)
    assert all(
        issubclass(getattr(stem, n), stem.StemError)
        for n in names
        if n.endswith("Error") and n != "TaskError"
    )


def test_envelope_round_trips() -> None:
    envelope = stem.Envelope(id="1", task="t", args=[1], kwargs={"a": [1, 2]}, eta=5.0, priority=3)
    assert msgspec.json.decode(msgspec.json.encode(envelope), type=stem.Envelope) == envelope
    assert TaskState.SUCCEEDED.is_final and not TaskState.RETRIED.is_final


async def test_a_task_ref_is_plain_data_for_other_tasks() -> None:
    app = eager_app()

    @app.task(name="first")
    async def first() -> int:
        return 1

    @app.task(name="second")
    async def second(previous: str) -> str:
        return previous

    ref = await first.enqueue()
    result = await app.wait_for_task(await second.enqueue(ref), timeout=1)
    assert result.value == str(ref) and type(result.value) is str


async def test_enqueue_many_by_name(app: Stem) -> None:
    ids = await app.enqueue_many(app.call("remote.task", [n], priority=n) for n in range(3))
    envelopes = [
        decode_envelope(d.message.body) for d in await app.broker.reserve(["default"], 3, 10)
    ]
    assert [(e.id, e.task, e.args) for e in envelopes] == [
        (ids[2], "remote.task", [2]),
        (ids[1], "remote.task", [1]),
        (ids[0], "remote.task", [0]),
    ]
