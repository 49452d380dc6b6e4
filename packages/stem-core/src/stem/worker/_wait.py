"""Waiting for the first of several things: a sleep, a wake-up, the worker stopping."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["first"]


async def first(*awaitables: Any) -> None:
    """Wait until the first of several awaitables is done; cancel the rest."""
    pending = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in pending:
            fut.cancel()
