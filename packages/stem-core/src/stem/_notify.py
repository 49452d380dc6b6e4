"""A wake-up signal usable from any event loop, with a clock-aware timeout."""

from __future__ import annotations

import asyncio

from ._clock import Clock

__all__ = ["Notifier"]


class Notifier:
    """Waiters block until :meth:`notify` or until ``timeout`` passes on the given clock."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        for fut in self._waiters:
            if not fut.done():
                fut.get_loop().call_soon_threadsafe(_resolve, fut)
        self._waiters.clear()

    async def wait(self, clock: Clock, timeout: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        sleeper = asyncio.ensure_future(clock.sleep(max(0.0, timeout)))
        try:
            await asyncio.wait({fut, sleeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            self._waiters.discard(fut)
            if not fut.done():
                fut.cancel()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
