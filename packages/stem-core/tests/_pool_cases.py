"""Handlers for test_pools.py: each case as a plain function and as a coroutine.

The process pool's child imports this module by name, so every plain handler lives at
module level. Each async twin does the same thing, awaiting where the plain one blocks.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from stem import Reject, SoftTimeLimitExceeded, TaskContext


class BadStr(Exception):
    """An exception that cannot be printed."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ of BadStr fails")


class BadReprAndStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ fails")


class Opaque:
    """A result no encoder knows."""


def double(x: int) -> int:
    return x * 2


def nan_result() -> dict[str, float]:
    return {"ratio": math.nan}


def half(x: float) -> float:
    return x / 2


def infinite_result() -> float:
    return math.inf


def opaque_result() -> Any:
    return Opaque()


def surrogate_result() -> str:
    return "ok \ud800"


def self_referencing_result() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def bad_str() -> None:
    raise BadStr()


def bad_repr_and_str() -> None:
    raise BadReprAndStr()


def system_exit() -> None:
    raise SystemExit(2)  # what argparse does on bad input


def keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def soft_limit() -> str:
    try:
        for _ in range(3000):
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "ran to the end"


def hard_limit() -> str:
    for _ in range(3000):
        time.sleep(0.01)
    return "ran to the end"


def retry(ctx: TaskContext) -> None:
    ctx.retry(countdown=0)


def reject() -> None:
    raise Reject("not-for-us")


async def a_double(x: int) -> int:
    return double(x)


async def a_nan_result() -> dict[str, float]:
    return nan_result()


async def a_half(x: float) -> float:
    return half(x)


async def a_infinite_result() -> float:
    return infinite_result()


async def a_opaque_result() -> Any:
    return opaque_result()


async def a_surrogate_result() -> str:
    return surrogate_result()


async def a_self_referencing_result() -> list[Any]:
    return self_referencing_result()


async def a_bad_str() -> None:
    bad_str()


async def a_bad_repr_and_str() -> None:
    bad_repr_and_str()


async def a_system_exit() -> None:
    system_exit()


async def a_keyboard_interrupt() -> None:
    keyboard_interrupt()


async def a_soft_limit() -> str:
    try:
        await asyncio.sleep(30)
    except SoftTimeLimitExceeded:
        return "cleaned up"
    return "ran to the end"


async def a_hard_limit() -> str:
    await asyncio.sleep(30)
    return "ran to the end"


async def a_retry(ctx: TaskContext) -> None:
    ctx.retry(countdown=0)


async def a_reject() -> None:
    reject()
