"""Message bodies: what enqueue refuses, and what a worker does with a body it cannot decode."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from stem import DecodeError, FakeClock, SerializationError, Stem
from stem._codec import MAX_NESTING, decode_envelope, encode_envelope
from stem._messages import Envelope, Message
from stem.memory import MemoryBroker, MemoryResultBackend


def nested(depth: int) -> Any:
    """A value ``depth`` lists deep."""
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


DEEP_JSON = b"[" * 3000 + b"]" * 3000

UNDECODABLE = {
    "not a message": b"\xff not a message",
    "empty": b"",
    "not UTF-8 inside JSON": b'{"id":"\xff\xfe","task":"t"}',
    "nested 3000 deep": b'{"id":"deep","task":"t","args":[' + DEEP_JSON + b"]}",
    "wrong field type": b'{"id":5,"task":"t"}',
    "arguments not a list": b'{"id":"x","task":"t","args":{"a":1}}',
    "truncated MessagePack": b"\x93\x01",
}


@pytest.mark.parametrize("body", list(UNDECODABLE.values()), ids=list(UNDECODABLE))
def test_any_body_that_does_not_decode_is_a_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError, match="not a Stem envelope"):
        decode_envelope(body)


class Exploding:
    """A payload encoder whose decode fails (a wrong key, say)."""

    id = "exploding"

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, stored: Any) -> Any:
        raise ValueError("the key does not fit")


class Shapeless:
    """A payload encoder that decodes the arguments to something other than a list."""

    id = "shapeless"

    def encode(self, value: Any) -> Any:
        return value

    def decode(self, stored: Any) -> Any:
        return "not a list"


async def test_every_undecodable_message_is_malformed_on_its_first_delivery(
    clock: FakeClock,
) -> None:
    app = Stem(
        MemoryBroker(clock=clock),
        MemoryResultBackend(clock=clock),
        clock=clock,
        encoders=[Exploding(), Shapeless()],
    )

    @app.task(name="t")
    async def t(x: int) -> int:
        return x

    @app.task(name="secret", args_encoder="exploding")
    async def secret(x: int) -> int:
        return x

    @app.task(name="odd", args_encoder="shapeless")
    async def odd(x: int) -> int:
        return x

    for name, body in UNDECODABLE.items():
        await app.broker.publish(Message(id=name, queue="default", body=body))
    undecodable_args = [await secret.enqueue(1), await odd.enqueue(1)]
    good = await t.enqueue(7)
    async with app.worker(concurrency=1):
        assert (await app.wait_for_task(good, timeout=10)).value == 7
        for task_id in undecodable_args:
            await app.wait_for_task(task_id, timeout=10)
    dead = {d.message.id: d for d in await app.broker.list_dead_letters("default")}
    assert set(dead) == {*UNDECODABLE, *undecodable_args}
    assert {d.reason for d in dead.values()} == {"malformed"}
    assert {d.deliveries for d in dead.values()} == {1}
    await app.aclose()


async def test_the_poison_count_is_checked_before_decoding(
    app: Stem, clock: FakeClock, until: Any
) -> None:
    reasons: list[str] = []
    app.hooks.on("on_dead_letter")(lambda reason, **_: reasons.append(reason))
    await app.broker.publish(Message(id="garbage", queue="default", body=b"\xff"))
    for _ in range(2):  # two workers died holding it
        assert await app.broker.reserve(["default"], 1, lease=10)
        clock.advance(11)
    async with app.worker(max_deliveries=2):
        await until(lambda: reasons)
    (dead,) = await app.broker.list_dead_letters("default")
    assert (dead.reason, dead.deliveries) == ("poison", 3)


# -- what enqueue refuses ------------------------------------------------------------------------


@pytest.fixture
def echo(app: Stem) -> Any:
    @app.task(name="echo")
    async def echo(value: Any = None, ratio: Any = None) -> Any:
        return value

    return echo


@pytest.mark.parametrize(
    ("call", "named"),
    [
        ({"args": (math.nan,)}, "positional argument 0"),
        ({"kwargs": {"ratio": math.inf}}, "argument 'ratio'"),
        ({"args": ({"a": [1.0, -math.inf]},)}, "positional argument 0"),
        ({"args": (nested(MAX_NESTING + 1),)}, "positional argument 0"),
        ({"kwargs": {"ratio": nested(MAX_NESTING + 1)}}, "argument 'ratio'"),
        ({"meta": {"score": math.nan}}, "meta 'score'"),
    ],
    ids=["NaN", "infinity", "-infinity inside", "too deep", "too deep by name", "NaN in meta"],
)
@pytest.mark.parametrize("wire_format", ["json", "msgpack"])
async def test_enqueue_refuses_what_would_not_arrive_exactly(
    app: Stem, echo: Any, call: dict[str, Any], named: str, wire_format: Any
) -> None:
    app.wire_format = wire_format
    with pytest.raises(SerializationError, match=named):
        await app.enqueue(
            "echo", call.get("args", ()), call.get("kwargs"), meta=call.get("meta", {})
        )
    assert (await app.broker.queue_stats("default")).pending == 0


@pytest.fixture
def recursion_limit() -> Iterator[None]:
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


async def test_a_raised_recursion_limit_does_not_let_deep_arguments_through(
    app: Stem, echo: Any, recursion_limit: None
) -> None:
    with pytest.raises(SerializationError, match=r"argument 0 .* nests more than 100 levels"):
        await echo.enqueue(nested(3000))


async def test_deep_arguments_are_refused_at_the_default_recursion_limit(
    app: Stem, echo: Any
) -> None:
    with pytest.raises(SerializationError, match="nests more than 100 levels"):
        await echo.enqueue(nested(3000))


async def test_what_enqueue_accepts_arrives_exactly(app: Stem, echo: Any) -> None:
    values = [nested(MAX_NESTING), 2**100, -(2**90), None, [None, 1.5, "[[[{{{"]]
    async with app.worker():
        for value in values:
            assert (await app.wait_for_task(await echo.enqueue(value), timeout=10)).value == value


def test_big_ints_are_refused_by_msgpack_bodies_with_the_argument_named() -> None:
    envelope = Envelope(id="x", task="t", args=[2**100])
    assert decode_envelope(encode_envelope(envelope, "json")).args == [2**100]
    with pytest.raises(SerializationError, match="positional argument 0"):
        encode_envelope(envelope, "msgpack")
