"""The Redis lock store and revoke store."""

from __future__ import annotations

import builtins

import msgspec

from stem import Clock
from stem.contracts import LockStore, RevokeEntry, RevokeStore

from ._backend import keep_ms
from ._client import Arg, RedisStore
from ._url import RedisOptions

__all__ = ["RedisLockStore", "RedisRevokeStore"]

_entry_decoder = msgspec.json.Decoder(RevokeEntry)
_encoder = msgspec.json.Encoder()


class RedisLockStore(RedisStore, LockStore):
    """Named locks with an owner and an end: ``P:lock:KEY``, a hash of owner and end.

    Acquire, renew and release are scripts, so only the live owner renews or releases.
    The script sets the end from its clock and the ``ttl`` sent, and judges it by the
    same clock: the Redis server's (``TIME``) with ``server_clock``, so a lock taken by
    a client whose clock is skewed still expires on time; else the app's clock. Redis's
    own expiry (set a while later) only frees the memory of locks nobody released.

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: the clock read when ``server_clock`` is False.
        server_clock: whether lock ends follow the Redis server's clock; None (the
            default) means True when no ``clock`` is given (production) and False when
            one is (a FakeClock in tests).
        share_connection: False to take a client of its own instead of sharing the
            pool of every store of this server in this event loop.
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        server_clock: bool | None = None,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self._open(url, clock=clock, server_clock=server_clock, share_connection=share_connection)

    def _key(self, key: str) -> str:
        return f"{self.options.prefix}:lock:{key}"

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        args = [owner, self._now(), ttl, keep_ms(ttl)]
        return bool(await self._client().script("lock_acquire", [self._key(key)], args))

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        args = [owner, self._now(), ttl, keep_ms(ttl)]
        return bool(await self._client().script("lock_renew", [self._key(key)], args))

    async def release(self, key: str, owner: str) -> bool:
        args = [owner, self._now()]
        return bool(await self._client().script("lock_release", [self._key(key)], args))

    async def owner_of(self, key: str) -> str | None:
        owner = await self._client().script("lock_owner", [self._key(key)], [self._now()])
        return None if owner is None else str(owner.decode())


class RedisRevokeStore(RedisStore, RevokeStore):
    """Revocations under one hash tag, ``{P:revokes}``: the entries, their order (a
    sequence from ``INCR`` in the same script as the write) and their expiry.

    With ``server_clock`` an entry's ``expires_at`` is sent as the time it has left by
    this store's clock, and the script sets its end on the Redis server's clock, which
    also judges when it is gone: revokers and workers need not agree on the time. The
    entry keeps the ``expires_at`` it was given (the revoker's clock).

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: the clock read when ``server_clock`` is False, and the one an entry's
            ``expires_at`` is measured against to send the time it has left.
        server_clock: whether expiry follows the Redis server's clock; None (the
            default) means True when no ``clock`` is given (production) and False when
            one is (a FakeClock in tests).
        share_connection: False to take a client of its own instead of sharing the
            pool of every store of this server in this event loop.
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        server_clock: bool | None = None,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        options = self._open(
            url, clock=clock, server_clock=server_clock, share_connection=share_connection
        )
        base = f"{{{options.prefix}:revokes}}"
        self._keys = [base, f"{base}:seq", f"{base}:expiry", f"{base}:next"]

    def _entries(self, found: builtins.list[bytes | None]) -> builtins.list[RevokeEntry]:
        """The live entries of a revoke_list reply: now, then (id, seq, entry, end)s."""
        now = float(found[0] or 0)
        out = []
        for i in range(1, len(found), 4):
            data, ends = found[i + 2], found[i + 3]
            if data is None or (ends is not None and float(ends) <= now):
                continue  # gone, or expired and not swept yet
            entry = _entry_decoder.decode(data)
            out.append(msgspec.structs.replace(entry, seq=int(float(found[i + 1] or 0))))
        return out

    async def revoke(self, entry: RevokeEntry) -> RevokeEntry:
        stored = msgspec.structs.replace(entry, seq=0)
        expires: Arg = ""
        left: Arg = ""
        if entry.expires_at is not None:
            if self.server_clock:
                left = repr(entry.expires_at - self.clock.now())
            else:
                expires = repr(entry.expires_at)
        seq = await self._client().script(
            "revoke",
            self._keys,
            [entry.task_id, _encoder.encode(stored), self._now(), expires, left],
        )
        return msgspec.structs.replace(entry, seq=int(seq))

    async def get(self, task_id: str) -> RevokeEntry | None:
        found = await self._client().script(
            "revoke_list", self._keys, [self._now(), "-inf", task_id]
        )
        entries = self._entries(found)
        return entries[0] if entries else None

    async def list(self, *, since: int | None = None) -> builtins.list[RevokeEntry]:
        found = await self._client().script(
            "revoke_list", self._keys, [self._now(), "-inf" if since is None else since]
        )
        return self._entries(found)
