"""Which firings a due entry makes now: its catch-up policy after downtime, and jitter."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Literal, TypeAlias

from ._specs import Spec

__all__ = ["CATCH_UP", "DEFAULT_EACH_LIMIT", "CatchUp", "Plan", "jittered", "nominal", "plan"]

CatchUp: TypeAlias = Literal["once", "each", "skip"]
CATCH_UP: tuple[CatchUp, ...] = ("once", "each", "skip")

#: With ``catch_up="each"`` and no ``catch_up_limit``: at most this many missed firings.
DEFAULT_EACH_LIMIT = 100


@dataclass(frozen=True, slots=True)
class Plan:
    """The firings to enqueue (their nominal times, oldest first), how many missed
    firings were left out, and the next nominal time (None: the entry is done)."""

    firings: list[float]
    skipped: int
    next_at: float | None


def jittered(at: float | None, jitter: float | None) -> float | None:
    """``at`` moved later by a random part of ``jitter`` (never by all of it, so the
    nominal time can be found again from the due time)."""
    if at is None or not jitter:
        return at
    return at + random.random() * jitter


def nominal(spec: Spec, due_at: float, jitter: float | None) -> float:
    """The firing a due time stands for: the due time less the jitter added to it.

    The latest firing at or before the due time, if it is within ``jitter`` of it;
    else the due time itself (a spec changed since the due time was computed).
    """
    found = spec.last_at_or_before(due_at)
    if found is not None and due_at - found <= (jitter or 0.0):
        return found
    return due_at


def plan(
    spec: Spec,
    *,
    due_at: float,
    now: float,
    catch_up: str,
    limit: int,
    jitter: float | None,
    grace: float,
) -> Plan:
    """The firings of an entry due at ``due_at``, found due at ``now``.

    Every firing from the due one up to ``now`` is due. ``once`` enqueues one, the
    latest; ``each`` enqueues each, the latest ``limit`` of them; ``skip`` enqueues
    the latest only if it is at most ``grace`` seconds late, else none. Then the
    entry moves on to its first firing after ``now``.
    """
    first = nominal(spec, due_at, jitter)
    latest = spec.last_at_or_before(now)
    if latest is None or latest < first:
        latest = first
    if catch_up == "each":
        keep = max(limit, 1) if limit > 0 else DEFAULT_EACH_LIMIT
        recent: deque[float] = deque([latest])
        t = latest
        while len(recent) < keep:
            before = spec.last_at_or_before(_just_before(t))
            if before is None or before < first:
                break
            recent.appendleft(before)
            t = before
        skipped = 0
        if recent[0] > first:  # some were left out: count them, cheaply and boundedly
            skipped = _count_between(spec, first, recent[0])
        firings = list(recent)
    elif catch_up == "skip":
        firings = [latest] if now - latest <= grace else []
        skipped = _count_between(spec, first, latest) + (0 if firings else 1)
    else:  # once
        firings = [latest]
        skipped = _count_between(spec, first, latest)
    return Plan(firings=firings, skipped=skipped, next_at=spec.next_after(now))


def _just_before(t: float) -> float:
    """The largest float below ``t``: the spec's firings strictly before ``t`` are at
    or before it."""
    return math.nextafter(t, -math.inf)


def _count_between(spec: Spec, first: float, last: float, cap: int = 1000) -> int:
    """How many firings lie in ``[first, last)``, for the log (counted up to ``cap``)."""
    count = 0
    t: float | None = first
    while t is not None and t < last and count < cap:
        count += 1
        t = spec.next_after(t)
    return count
