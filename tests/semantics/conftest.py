"""One app per adapter, on a FakeClock: the same promises checked on memory and on SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from stem import FakeClock, Stem
from stem.memory import (
    MemoryBroker,
    MemoryLockStore,
    MemoryResultBackend,
    MemoryRevokeStore,
)
from stem_sqlite import (
    SqliteBroker,
    SqliteLockStore,
    SqliteResultBackend,
    SqliteRevokeStore,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
async def app(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Stem]:
    request.applymarker(getattr(pytest.mark, request.param))
    if request.param == "memory":
        stem = Stem(
            MemoryBroker(clock=clock),
            MemoryResultBackend(clock=clock),
            lock_store=MemoryLockStore(clock=clock),
            revoke_store=MemoryRevokeStore(clock=clock),
            clock=clock,
        )
    else:
        path = tmp_path / "stem.db"
        stem = Stem(
            SqliteBroker(path, clock=clock, poll_interval=0.05),
            SqliteResultBackend(path, clock=clock),
            lock_store=SqliteLockStore(path, clock=clock),
            revoke_store=SqliteRevokeStore(path, clock=clock),
            clock=clock,
        )
    yield stem
    await stem.aclose()


Drive = Callable[..., Awaitable[None]]


@pytest.fixture
def drive(clock: FakeClock) -> Drive:
    """Advance the FakeClock in steps until a predicate holds, letting the loop (and
    SQLite's thread) run between steps; fails after ``max_seconds`` of fake time."""

    async def run(
        predicate: Callable[[], bool | Awaitable[bool]],
        *,
        step: float = 0.25,
        max_seconds: float = 600.0,
    ) -> None:
        moved = 0.0
        while True:
            result = predicate()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if moved > max_seconds:
                raise AssertionError(f"still not true after {max_seconds} fake seconds")
            clock.advance(step)
            moved += step
            await asyncio.sleep(0.002)

    return run
