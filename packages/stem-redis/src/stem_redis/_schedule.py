"""The Redis schedule store: a hash per beat entry, an index of due times, one of claims."""

from __future__ import annotations

import builtins
from typing import Any

import msgspec

from stem import Clock, DecodeError, ScheduleConflictError
from stem.contracts import ScheduleEntry, ScheduleStore

from ._client import Arg, RedisStore
from ._url import RedisOptions

__all__ = ["RedisScheduleStore"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ScheduleEntry)


def _text(value: float | None) -> str:
    """A time as text that reads back as the same float ('' for None)."""
    return "" if value is None else repr(float(value))


def _as_dict(found: Any) -> dict[bytes, bytes]:
    """A hash as HGETALL gave it: a dict from the client, a flat list from a script."""
    if isinstance(found, dict):
        return found
    return dict(zip(found[0::2], found[1::2], strict=True))


def _fields(entry: ScheduleEntry) -> list[Arg]:
    """The entry as the flat field, value list of its hash (see lua/_schedule.lua), without
    the ``seq`` and ``ver`` the script sets."""
    body = msgspec.structs.replace(
        entry,
        enabled=True,
        next_run_at=None,
        last_run_at=None,
        last_drift=None,
        total_runs=0,
        last_error=None,
        version=0,
        claimed_by=None,
        claimed_until=None,
    )
    fields: dict[str, Arg | None] = {
        "body": _encoder.encode(body),
        "enabled": "1" if entry.enabled else "0",
        "runs": str(int(entry.total_runs)),
        "next": None if entry.next_run_at is None else _text(entry.next_run_at),
        "last": None if entry.last_run_at is None else _text(entry.last_run_at),
        "drift": None if entry.last_drift is None else _text(entry.last_drift),
        "error": entry.last_error,
        # Only a new entry takes these; an existing one keeps its own claim
        "owner": entry.claimed_by,
        "until": None if entry.claimed_until is None else _text(entry.claimed_until),
    }
    flat: list[Arg] = []
    for name, value in fields.items():
        if value is not None:
            flat += [name, value]
    return flat


class RedisScheduleStore(RedisStore, ScheduleStore):
    """Beat entries under one hash tag, ``{P:schedule}``, so every script stays atomic on
    a cluster too; ``P``, the URL's ``prefix``, is the namespace.

    ``{P:schedule}:entry:ID`` is a hash per entry: its JSON without the fields that
    change, and those fields (enabled, times, runs, error, version, claim) each a field
    of its own, so no script parses JSON. ``{P:schedule}:due`` holds the enabled,
    unclaimed entries by next run time, ``{P:schedule}:claims`` the claimed ones by claim
    end, ``{P:schedule}:ids`` every id in the order first stored (``{P:schedule}:seq``
    numbers them). Every method is one script or one command.

    Claims are given and judged on the scripts' clock: the Redis server's (``TIME``) with
    ``server_clock``, so a beat whose clock is skewed neither takes a live claim nor
    keeps one that ended; else the app's clock. Due times are the caller's.

    Args:
        url: a ``redis://`` URL (or its parsed options); its ``prefix`` names the keys.
        clock: the clock read when ``server_clock`` is False.
        server_clock: whether claims follow the Redis server's clock; None (the default)
            means True when no ``clock`` is given (production) and False when one is (a
            FakeClock in tests).
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
        self._base = f"{{{options.prefix}:schedule}}"

    def _now_arg(self) -> str:
        """The ``now`` a script is sent: '' reads the server's clock (see lua/_args.lua)."""
        return "" if self.server_clock else _text(self.clock.now())

    async def _script(self, name: str, args: list[Arg]) -> Any:
        return await self._client().script(name, [self._base], args)

    def _decode(self, found: Any) -> ScheduleEntry:
        """An entry from its hash's fields."""
        fields = _as_dict(found)

        def time(name: bytes) -> float | None:
            value = fields.get(name)
            return None if value is None else float(value)

        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return None if value is None else value.decode()

        try:
            entry = _decoder.decode(fields[b"body"])
            return msgspec.structs.replace(
                entry,
                enabled=fields[b"enabled"] == b"1",
                next_run_at=time(b"next"),
                last_run_at=time(b"last"),
                last_drift=time(b"drift"),
                total_runs=int(fields[b"runs"]),
                last_error=text(b"error"),
                version=int(fields[b"ver"]),
                claimed_by=text(b"owner"),
                claimed_until=time(b"until"),
            )
        except (KeyError, ValueError, msgspec.DecodeError) as exc:
            raise DecodeError(
                f"a schedule entry stored in Redis at {self.options.masked_url} does not "
                f"decode ({exc!r}); give this app a prefix of its own (?prefix=NAME in the URL)"
            ) from exc

    async def upsert(self, entry: ScheduleEntry) -> ScheduleEntry:
        fields = _fields(entry)  # an entry that cannot be encoded fails before any write
        stored, found = await self._script(
            "schedule_upsert", [entry.id, str(int(entry.version)), *fields]
        )
        if not int(stored):
            have = "no such entry" if int(found) < 0 else f"version {int(found)}"
            raise ScheduleConflictError(
                f"beat entry {entry.id!r} was written with version {entry.version}, but the "
                f"store has {have}: read it again and apply the change to what is stored"
            )
        return self._decode(found)

    async def get(self, entry_id: str) -> ScheduleEntry | None:
        found = await self._client().command("HGETALL", f"{self._base}:entry:{entry_id}")
        return self._decode(found) if found else None

    async def remove(self, entry_id: str) -> bool:
        return bool(await self._script("schedule_remove", [entry_id]))

    async def due(
        self, now: float, *, owner: str, claim_ttl: float, limit: int = 100
    ) -> builtins.list[ScheduleEntry]:
        args: list[Arg] = [_text(now), self._now_arg(), owner, _text(claim_ttl), int(limit)]
        return [self._decode(found) for found in await self._script("schedule_due", args)]

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
        args: list[Arg] = [
            self._now_arg(),
            entry_id,
            owner,
            _text(due_at),
            _text(ran_at),
            _text(next_run_at),
            _text(drift),
            "0" if error is None else "1",
            error or "",
        ]
        return bool(await self._script("schedule_mark", args))

    async def release(self, entry_id: str, owner: str) -> bool:
        return bool(await self._script("schedule_release", [entry_id, owner]))

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(self) -> builtins.list[ScheduleEntry]:
        """Every entry, in the order they were first stored."""
        return [self._decode(found) for found in await self._script("schedule_list", [])]
