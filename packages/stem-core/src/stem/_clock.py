"""Clocks: everything in Stem that reads time takes one, so tests can use :class:`FakeClock`."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What Stem needs from a clock: wall time, a monotonic reading and a sleep."""

    def now(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when told to, for deterministic tests.

    ``sleep`` waits until :meth:`advance` moves the clock past the sleeper's deadline,
    so retries, delays, leases and schedules can be tested without real waiting.

    Example:
        clock = FakeClock(start=1_700_000_000)
        clock.advance(30)   # wakes every sleeper due within the 30 seconds
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many tasks are waiting on this clock right now."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())

    def advance(self, seconds: float) -> None:
        """Move the clock forward and wake every sleeper whose deadline has come."""
        if seconds < 0:
            raise ValueError("a FakeClock only moves forward")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def set(self, timestamp: float) -> None:
        """Move the clock to ``timestamp`` (never backwards)."""
        self.advance(max(0.0, timestamp - self._now))
