"""The LockStore and RevokeStore contracts."""

from __future__ import annotations

import abc
import builtins

from .._clock import Clock, SystemClock
from .._messages import RevokeEntry

__all__ = ["LockStore", "RevokeStore"]


class LockStore(abc.ABC):
    """Named leases with an owner and a time to live.

    * ``acquire`` succeeds only if the key is free or expired (or already held by
      the same owner, which refreshes it).
    * Only the owner may ``renew`` or ``release``; a stranger's call returns False.
    * An expired lock is free: ``owner_of`` returns None and anyone may acquire it.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    @abc.abstractmethod
    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        """Take ``key`` for ``owner`` for ``ttl`` seconds if it is free."""

    @abc.abstractmethod
    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        """Extend ``owner``'s lock to ``ttl`` seconds from now; False if not the owner."""

    @abc.abstractmethod
    async def release(self, key: str, owner: str) -> bool:
        """Free ``key`` if ``owner`` holds it."""

    @abc.abstractmethod
    async def owner_of(self, key: str) -> str | None:
        """Who holds ``key`` now, or None."""

    async def aclose(self) -> None:
        """Release connections."""


class RevokeStore(abc.ABC):
    """Persisted revocations, so a revoked task stays revoked across worker restarts.

    * ``revoke`` gives the entry a ``seq`` larger than that of every revocation
      committed before it (revoking a task again gives it a new, larger one), so
      ``list(since=n)`` returns everything recorded after the reader saw ``n``,
      whatever the clocks of the processes that revoked.
    * An entry whose ``expires_at`` has passed is gone: ``get`` and ``list`` leave it
      out, and the store may delete it.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()

    @abc.abstractmethod
    async def revoke(self, entry: RevokeEntry) -> RevokeEntry:
        """Record a revocation (replacing an earlier one for the same task id).

        Returns the entry as stored, with its ``seq``.
        """

    @abc.abstractmethod
    async def get(self, task_id: str) -> RevokeEntry | None:
        """The live revocation of ``task_id``, or None."""

    async def is_revoked(self, task_id: str) -> bool:
        return await self.get(task_id) is not None

    @abc.abstractmethod
    async def list(self, *, since: int | None = None) -> builtins.list[RevokeEntry]:
        """Live revocations in ``seq`` order; with ``since``, only those whose seq is larger."""

    async def aclose(self) -> None:
        """Release connections."""
