"""Arguments are checked against the handler's signature and annotations at enqueue."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

import stem
from stem import ArgumentError, Stem, StemError, TaskContext, TaskState
from stem._codec import decode_envelope
from stem.testing import eager_app


async def queued(app: Stem) -> int:
    return (await app.broker.queue_stats("default")).pending


@dataclass
class Order:
    id: str
    cents: int


async def test_a_value_of_the_wrong_type_is_refused_naming_the_argument(app: Stem) -> None:
    @app.task(name="orders.charge")
    async def charge(ctx: TaskContext, order_id: str, cents: int) -> None: ...

    with pytest.raises(ArgumentError, match=r"argument 'cents' of task 'orders.charge'") as info:
        await charge.enqueue("42", cents="a lot")  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and isinstance(info.value, StemError)
    assert "Expected `int`, got `str`" in str(info.value)
    with pytest.raises(ArgumentError, match="argument 'cents'"):
        await charge.enqueue("42", "a lot")  # type: ignore[arg-type]  # the positional fast path
    with pytest.raises(ArgumentError, match="argument 'cents'"):
        await app.enqueue("orders.charge", args=["42"], kwargs={"cents": "a lot"})
    with pytest.raises(ArgumentError, match="argument 'cents'"):
        charge.call("42", cents=[1])  # type: ignore[arg-type]
    assert await queued(app) == 0


async def test_what_the_worker_accepts_the_producer_accepts(app: Stem) -> None:
    """The same lax conversion on both sides: a digit string is an int, a UUID a str."""

    @app.task(name="t")
    async def t(n: int, s: str, when: datetime, order: Order, tags: tuple[str, ...]) -> None: ...

    await t.enqueue("7", uuid.uuid4(), "2030-01-01T00:00:00Z", {"id": "a", "cents": "5"}, ["x"])  # type: ignore[arg-type]
    await t.enqueue(7, "s", datetime(2030, 1, 1, tzinfo=UTC), Order("a", 5), ("x",))
    assert await queued(app) == 2


async def test_a_nested_mistake_names_the_argument_and_the_place(app: Stem) -> None:
    @app.task(name="t")
    async def t(orders: list[Order]) -> None: ...

    with pytest.raises(ArgumentError, match=r"argument 'orders'.*\[1\]\.cents"):
        await t.enqueue([Order("a", 1), {"id": "b", "cents": "many"}])  # type: ignore[list-item]


async def test_defaults_varargs_and_unannotated_parameters(app: Stem) -> None:
    @app.task(name="t")
    async def t(a, b: int = 1, *rest: int, c: str = "x", **extra: Any) -> None:  # type: ignore[no-untyped-def]
        ...

    await t.enqueue([1], 2, "x", c="y", anything=[1])  # unannotated and *rest: unchecked
    with pytest.raises(ArgumentError, match="argument 'c'"):
        await t.enqueue(1, c=5)


async def test_a_typo_names_the_unexpected_argument_and_the_closest_name(app: Stem) -> None:
    @app.task(name="orders.charge")
    async def charge(order_id: str, cents: int) -> None: ...

    with pytest.raises(ArgumentError) as info:
        await charge.enqueue("42", cent=1)  # type: ignore[call-arg]
    message = str(info.value)
    assert "unexpected argument 'cent' (did you mean 'cents'?)" in message
    assert "missing argument 'cents'" in message
    assert "orders.charge(order_id: str, cents: int)" in message


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((1, 2, 3), {}, "takes 2 positional arguments but 3 were given"),
        (("42",), {}, "missing argument 'cents'"),
        (("42", 1), {"order_id": "x"}, "multiple values for argument 'order_id'"),
    ],
)
async def test_arguments_that_do_not_bind_say_why(
    app: Stem, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    @app.task(name="t")
    async def t(order_id: str, cents: int) -> None: ...

    with pytest.raises(ArgumentError, match="do not fit task 't'") as info:
        await t.enqueue(*args, **kwargs)
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["orders.charge", "not.registered.here"])
async def test_kwargs_that_are_not_a_mapping_say_what_is_wrong(app: Stem, name: str) -> None:
    @app.task(name="orders.charge")
    async def charge(order_id: str) -> None: ...

    with pytest.raises(ArgumentError, match=r"kwargs must be a mapping.*not a list.*args="):
        await app.enqueue(name, kwargs=["7"])  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="args must be a list or tuple"):
        await app.enqueue(name, args="7")
    with pytest.raises(ArgumentError, match="names of keyword arguments must be strings"):
        await app.enqueue(name, kwargs={1: "7"})  # type: ignore[dict-item]
    with pytest.raises(ArgumentError, match=r"kwargs must be a mapping"):
        app.call(name, kwargs=["7"])  # type: ignore[arg-type]
    assert await queued(app) == 0


async def test_enqueued_values_are_sent_as_given(app: Stem) -> None:
    """Checking converts nothing: the worker converts, as it always did."""

    @app.task(name="t")
    async def t(n: int) -> None: ...

    await t.enqueue("7")  # type: ignore[arg-type]
    (delivery,) = await app.broker.reserve(["default"], 1, 30)
    assert decode_envelope(delivery.message.body).args == ["7"]


async def test_a_task_enqueued_by_name_without_its_handler_is_not_checked(app: Stem) -> None:
    await app.enqueue("elsewhere.charge", args=["42"], kwargs={"cents": "a lot"})
    assert await queued(app) == 1


async def test_the_worker_records_bad_arguments_under_the_public_name() -> None:
    """A producer without the handler can still send bad arguments: the worker's record
    names the public class, not a private module."""
    producer = eager_app()

    @producer.task(name="t")
    async def t(n: int) -> None: ...

    producer.tasks["t"].check_arguments = lambda args, kwargs: None  # type: ignore[method-assign]
    ref = await t.enqueue("many")  # type: ignore[arg-type]
    status = await producer.get_status(ref)
    assert status is not None and status.state is TaskState.FAILED and status.error is not None
    assert status.error.type == "stem.ArgumentError"
    assert stem.ArgumentError is ArgumentError
    await producer.aclose()
