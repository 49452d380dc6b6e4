"""The ScheduleStore contract: beat entries, who fires each due one, and their drift.

Several beat processes may share a store. Each due firing is fired once:

* ``due(now, owner=..., claim_ttl=...)`` hands out the enabled entries whose
  ``next_run_at`` has come and that no live claim holds, and claims them for
  ``owner`` until ``claim_ttl`` seconds from now (on the store's clock), so two callers
  never get the same firing; a beat that dies holding a claim loses it when it ends.
* ``mark_executed(..., owner=, due_at=)`` records the firing only for the owner of a
  live claim on that very firing (``next_run_at == due_at``); it moves ``next_run_at``
  on, records the drift, bumps ``version`` and drops the claim.
* Writes of whole entries are versioned: ``upsert`` of an entry whose ``version`` is
  not the stored one raises :class:`ScheduleConflictError` (version 0 creates).

``kind`` and ``spec`` are stored as given; what they mean (interval, cron, solar,
clocked) is the beat scheduler's business.
"""

from __future__ import annotations

import abc
import builtins
from typing import Any

import msgspec

from .._clock import Clock, SystemClock
from .._errors import ScheduleConflictError

__all__ = ["ScheduleConflictError", "ScheduleEntry", "ScheduleStore"]


class ScheduleEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One beat entry. ``spec`` describes the kind: interval, cron, solar or clocked."""

    id: str
    task: str
    kind: str
    spec: dict[str, Any]
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    #: Enqueue options of each firing (priority, headers, expires...).
    options: dict[str, Any] = {}
    enabled: bool = True
    #: Up to this many seconds added at random to each due time.
    jitter: float | None = None
    #: After downtime: "once" (one firing for all missed), "each" (each missed firing,
    #: up to ``catch_up_limit``) or "skip" (none: on to the next future time).
    catch_up: str = "once"
    catch_up_limit: int = 0
    next_run_at: float | None = None
    last_run_at: float | None = None
    last_drift: float | None = None
    total_runs: int = 0
    #: Why the last firing failed (a task that is not known, a spec found broken).
    last_error: str | None = None
    #: Moves on at every write; 0 for an entry not stored yet.
    version: int = 0
    claimed_by: str | None = None
    claimed_until: float | None = None
    meta: dict[str, Any] = {}


class ScheduleStore(abc.ABC):
    """Beat entries, claimed by one beat per due firing (see the module docstring)."""

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    @abc.abstractmethod
    async def upsert(self, entry: ScheduleEntry) -> ScheduleEntry:
        """Create (``version`` 0) or replace (the stored ``version``) an entry; returns
        it as stored, its version moved on. Its claim is kept.

        Raises:
            ScheduleConflictError: the entry exists and its version is not ``version``,
                or it does not exist and ``version`` is not 0.
        """

    @abc.abstractmethod
    async def get(self, entry_id: str) -> ScheduleEntry | None: ...

    @abc.abstractmethod
    async def list(self) -> builtins.list[ScheduleEntry]:
        """Every entry, in the order they were first stored."""

    @abc.abstractmethod
    async def remove(self, entry_id: str) -> bool: ...

    @abc.abstractmethod
    async def due(
        self, now: float, *, owner: str, claim_ttl: float, limit: int = 100
    ) -> builtins.list[ScheduleEntry]:
        """Claim and return up to ``limit`` enabled entries due at ``now`` (on the
        caller's clock) that no live claim holds, the oldest due first."""

    @abc.abstractmethod
    async def mark_executed(
        self,
        entry_id: str,
        *,
        owner: str,
        due_at: float,
        ran_at: float,
        next_run_at: float | None,
        drift: float,
        error: str | None = None,
    ) -> bool:
        """Record a firing by the owner of a live claim on it (``next_run_at`` is still
        ``due_at``): runs counted (unless ``error``), times moved on, claim dropped,
        version moved on. False, changing nothing, if the claim was lost or the entry
        changed or went."""

    @abc.abstractmethod
    async def release(self, entry_id: str, owner: str) -> bool:
        """Drop ``owner``'s claim without recording a firing (it is due again at once)."""

    async def aclose(self) -> None:
        """Release connections."""
