"""The Redis schedule store: beat entries in one hash, and an index of due times."""

from __future__ import annotations

import builtins

import msgspec

from stem import Clock, DecodeError
from stem.contracts import ScheduleEntry, ScheduleStore

from ._client import RedisStore
from ._url import RedisOptions

__all__ = ["RedisScheduleStore"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ScheduleEntry)


def _text(value: float | None) -> str:
    """A time as text that reads back as the same float ('' for None)."""
    return "" if value is None else repr(float(value))


class RedisScheduleStore(RedisStore, ScheduleStore):
    """Beat entries under one hash tag, ``{P:schedule}``, so every script stays atomic on
    a cluster too: ``{P:schedule}:entries`` (a hash of id to entry) and
    ``{P:schedule}:due`` (the ids of enabled entries by ``next_run_at``).

    An entry's value is its run fields (enabled, next run, last run, drift, total runs,
    each followed by a NUL) then the rest as JSON. Recording a run rewrites only the
    run fields, in a script, so two beats that record runs at once lose neither.

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: kept for symmetry: due times are given by the caller.
        share_connection: False to take a client of its own instead of sharing the
            pool of every store of this server in this event loop.
    """

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        # No clock mode: the caller passes ``now`` to due(), and nothing here compares times.
        options = self._open(
            url, clock=clock, server_clock=False, share_connection=share_connection
        )
        base = f"{{{options.prefix}:schedule}}"
        self._keys = [f"{base}:entries", f"{base}:due"]

    def _decode(self, value: bytes) -> ScheduleEntry:
        parts = value.split(b"\0", 5)
        try:
            if len(parts) != 6:
                raise msgspec.DecodeError("no run fields before the JSON")
            entry = _decoder.decode(parts[5])
            enabled, next_run, last_run, drift, total = parts[:5]
            return msgspec.structs.replace(
                entry,
                enabled=enabled == b"1",
                next_run_at=float(next_run) if next_run else None,
                last_run_at=float(last_run) if last_run else None,
                last_drift=float(drift) if drift else None,
                total_runs=int(total),
            )
        except (msgspec.DecodeError, ValueError) as exc:
            raise DecodeError(
                f"a schedule entry stored in Redis at {self.options.masked_url} does not "
                f"decode: {exc}; give this app a prefix of its own (?prefix=NAME in the URL)"
            ) from exc

    async def upsert(self, entry: ScheduleEntry) -> None:
        definition = msgspec.structs.replace(
            entry, enabled=True, next_run_at=None, last_run_at=None, last_drift=None, total_runs=0
        )
        header = [
            "1" if entry.enabled else "0",
            _text(entry.next_run_at),
            _text(entry.last_run_at),
            _text(entry.last_drift),
            str(int(entry.total_runs)),
        ]
        value = "\0".join(header).encode() + b"\0" + _encoder.encode(definition)
        await self._client().script(
            "schedule_upsert",
            self._keys,
            [entry.id, value, header[0], header[1]],
        )

    async def get(self, entry_id: str) -> ScheduleEntry | None:
        value = await self._client().command("HGET", self._keys[0], entry_id)
        return None if value is None else self._decode(value)

    async def remove(self, entry_id: str) -> bool:
        return bool(await self._client().script("schedule_remove", self._keys, [entry_id]))

    async def due(self, now: float, *, limit: int = 100) -> builtins.list[ScheduleEntry]:
        values = await self._client().script(
            "schedule_due", self._keys, [_text(now), max(int(limit), 0)]
        )
        return [self._decode(value) for value in values]

    async def mark_executed(
        self, entry_id: str, *, ran_at: float, next_run_at: float | None, drift: float
    ) -> None:
        await self._client().script(
            "schedule_mark",
            self._keys,
            [entry_id, _text(ran_at), _text(next_run_at), _text(drift)],
        )

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(self) -> builtins.list[ScheduleEntry]:
        """Every entry, by id."""
        flat = await self._client().command("HGETALL", self._keys[0])
        values = flat.values() if isinstance(flat, dict) else flat[1::2]
        return sorted((self._decode(value) for value in values), key=lambda e: e.id)
