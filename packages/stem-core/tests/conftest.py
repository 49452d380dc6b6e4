from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from stem import FakeClock, Stem
from stem.memory import MemoryBroker, MemoryResultBackend


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def app(clock: FakeClock) -> AsyncIterator[Stem]:
    stem = Stem(MemoryBroker(clock=clock), MemoryResultBackend(clock=clock), clock=clock)
    yield stem
    await stem.aclose()


@pytest.fixture
async def real_app() -> AsyncIterator[Stem]:
    """An app on the real clock, for tests of threads and processes."""
    stem = Stem(MemoryBroker(poll_interval=0.05), MemoryResultBackend())
    yield stem
    await stem.aclose()


Until = Callable[[Callable[[], bool]], Awaitable[None]]


@pytest.fixture
def until() -> Until:
    """Yield to the loop until a predicate holds; fail after 5 real seconds.

    Used only to let background tasks reach a state that no event announces (a
    FakeClock sleeper being registered, a process reaching a line); each turn is a
    short loop yield, not a guess at how long something takes.
    """

    async def wait(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - see the docstring
                await asyncio.sleep(0.001)

    return wait


Drive = Callable[..., Awaitable[None]]


@pytest.fixture
def drive(clock: FakeClock) -> Drive:
    """Advance the FakeClock in steps, letting the loop run between them, until a predicate holds."""

    async def run(
        predicate: Callable[[], bool], *, step: float = 0.25, max_seconds: float = 600.0
    ) -> None:
        moved = 0.0
        for _ in range(20):  # first let whatever needs no time happen
            if predicate():
                return
            await asyncio.sleep(0)
        while not predicate():
            if moved > max_seconds:
                raise AssertionError(f"still not true after {max_seconds} fake seconds")
            clock.advance(step)
            moved += step
            for _ in range(5):
                await asyncio.sleep(0)

    return run
