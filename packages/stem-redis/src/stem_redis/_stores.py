"""The Redis lock store and revoke store."""

from __future__ import annotations

import builtins

import msgspec

from stem import Clock
from stem.contracts import LockStore, RevokeEntry, RevokeStore

from ._backend import keep_ms
from ._client import ClientHandle, RedisClient
from ._url import RedisOptions, parse_url

__all__ = ["RedisLockStore", "RedisRevokeStore"]

_entry_decoder = msgspec.json.Decoder(RevokeEntry)
_encoder = msgspec.json.Encoder()


class _Store:
    _handle: ClientHandle

    @property
    def options(self) -> RedisOptions:
        return self._handle.options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.masked_url!r})"

    def _client(self) -> RedisClient:
        return self._handle.get()

    async def aclose(self) -> None:
        await self._handle.aclose()


class RedisLockStore(_Store, LockStore):
    """Named locks with an owner and an end: ``P:lock:KEY``, a hash of owner and end.

    Acquire, renew and release are scripts, so only the live owner renews or releases.
    The end is read from the app's clock; Redis's own expiry (set a while later) only
    frees the memory of locks nobody released.
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        share_connection: bool = True,
    ) -> None:
        options = url if isinstance(url, RedisOptions) else parse_url(url)
        super().__init__(clock=clock)
        self._handle = ClientHandle(options, share=share_connection)

    def _key(self, key: str) -> str:
        return f"{self.options.prefix}:lock:{key}"

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        now = self.clock.now()
        return bool(
            await self._client().script(
                "lock_acquire", [self._key(key)], [owner, now, now + ttl, keep_ms(ttl)]
            )
        )

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        now = self.clock.now()
        return bool(
            await self._client().script(
                "lock_renew", [self._key(key)], [owner, now, now + ttl, keep_ms(ttl)]
            )
        )

    async def release(self, key: str, owner: str) -> bool:
        now = self.clock.now()
        return bool(await self._client().script("lock_release", [self._key(key)], [owner, now]))

    async def owner_of(self, key: str) -> str | None:
        owner, until = await self._client().command("HMGET", self._key(key), "o", "x")
        if owner is None or until is None or float(until) <= self.clock.now():
            return None
        return str(owner.decode())


class RedisRevokeStore(_Store, RevokeStore):
    """Revocations under one hash tag, ``{P:revokes}``: the entries, their order (a
    sequence from ``INCR`` in the same script as the write) and their expiry."""

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        share_connection: bool = True,
    ) -> None:
        options = url if isinstance(url, RedisOptions) else parse_url(url)
        super().__init__(clock=clock)
        self._handle = ClientHandle(options, share=share_connection)
        base = f"{{{options.prefix}:revokes}}"
        self._keys = [base, f"{base}:seq", f"{base}:expiry", f"{base}:next"]

    def _entries(self, flat: list[bytes | None]) -> builtins.list[RevokeEntry]:
        now = self.clock.now()
        out = []
        for i in range(0, len(flat), 3):
            data = flat[i + 2]
            if data is None:
                continue
            entry = msgspec.structs.replace(
                _entry_decoder.decode(data), seq=int(float(flat[i + 1] or 0))
            )
            if entry.expires_at is None or entry.expires_at > now:
                out.append(entry)
        return out

    async def revoke(self, entry: RevokeEntry) -> RevokeEntry:
        stored = msgspec.structs.replace(entry, seq=0)
        seq = await self._client().script(
            "revoke",
            self._keys,
            [
                entry.task_id,
                _encoder.encode(stored),
                "" if entry.expires_at is None else repr(entry.expires_at),
                self.clock.now(),
            ],
        )
        return msgspec.structs.replace(entry, seq=int(seq))

    async def get(self, task_id: str) -> RevokeEntry | None:
        found = await self._client().script(
            "revoke_list", self._keys, [self.clock.now(), "-inf", task_id]
        )
        entries = self._entries(found)
        return entries[0] if entries else None

    async def list(self, *, since: int | None = None) -> builtins.list[RevokeEntry]:
        found = await self._client().script(
            "revoke_list", self._keys, [self.clock.now(), "-inf" if since is None else since]
        )
        return self._entries(found)
