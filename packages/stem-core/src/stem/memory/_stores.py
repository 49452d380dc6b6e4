"""In-memory lock and revoke stores."""

from __future__ import annotations

import itertools

import msgspec

from .._clock import Clock
from .._messages import RevokeEntry
from ..contracts import LockStore, RevokeStore

__all__ = ["MemoryLockStore", "MemoryRevokeStore"]


class MemoryLockStore(LockStore):
    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._locks: dict[str, tuple[str, float]] = {}

    def _holder(self, key: str) -> str | None:
        held = self._locks.get(key)
        if held is None or held[1] <= self.clock.now():
            self._locks.pop(key, None)
            return None
        return held[0]

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        holder = self._holder(key)
        if holder is not None and holder != owner:
            return False
        self._locks[key] = (owner, self.clock.now() + ttl)
        return True

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        if self._holder(key) != owner:
            return False
        self._locks[key] = (owner, self.clock.now() + ttl)
        return True

    async def release(self, key: str, owner: str) -> bool:
        if self._holder(key) != owner:
            return False
        del self._locks[key]
        return True

    async def owner_of(self, key: str) -> str | None:
        return self._holder(key)


class MemoryRevokeStore(RevokeStore):
    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._entries: dict[str, RevokeEntry] = {}  # in seq order: a new revoke goes last
        self._seq = itertools.count(1)

    def _live(self) -> list[RevokeEntry]:
        now = self.clock.now()
        for tid in [
            t for t, e in self._entries.items() if e.expires_at is not None and e.expires_at <= now
        ]:
            del self._entries[tid]
        return list(self._entries.values())

    async def revoke(self, entry: RevokeEntry) -> RevokeEntry:
        stored = msgspec.structs.replace(entry, seq=next(self._seq))
        self._entries.pop(entry.task_id, None)
        self._entries[entry.task_id] = stored
        return stored

    async def get(self, task_id: str) -> RevokeEntry | None:
        self._live()
        return self._entries.get(task_id)

    async def list(self, *, since: int | None = None) -> list[RevokeEntry]:
        return [e for e in self._live() if since is None or e.seq > since]
