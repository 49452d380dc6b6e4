"""Small helpers shared by the stores: JSON columns, row access, sweeping expired rows."""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from stem import Clock, DecodeError

__all__ = [
    "SWEEP_BATCH",
    "SWEEP_EVERY",
    "Sweeper",
    "changed",
    "decode",
    "fetchall",
    "sweep_expired",
    "to_json",
]

#: Expired rows are deleted at most this often (clock seconds) per store, in passing...
SWEEP_EVERY = 60.0
#: ...at most this many per sweep, to keep the write transaction short; a sweep that
#: deletes a full batch makes the next write sweep again, so sweeping keeps up with
#: any rate of expiry (a worker settling 20,000 tasks a second sweeps on each settle).
SWEEP_BATCH = 500


def _plain(value: object) -> object:
    # msgspec refuses subclasses of str (such as stem.TaskRef, a task id that remembers
    # its result type); they are stored as the plain strings they are.
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in SQLite")


_encoder = msgspec.json.Encoder(enc_hook=_plain)


def to_json(value: object) -> str:
    """JSON text for a TEXT column (TEXT, not BLOB, so json_extract() and the shell can read it)."""
    return _encoder.encode(value).decode()


def decode(decoder: msgspec.json.Decoder[Any], data: str, what: str, path: str) -> Any:
    """Decode a JSON column; a row that does not decode is a :class:`stem.DecodeError`."""
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise DecodeError(f"{what} stored in {path} does not decode: {exc}") from exc


def fetchall(conn: sqlite3.Connection, sql: str, params: Any) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def changed(conn: sqlite3.Connection, sql: str, params: Any) -> int:
    """Run one statement; how many rows it changed."""
    return conn.execute(sql, params).rowcount


def sweep_expired(conn: sqlite3.Connection, table: str, key: str, now: float) -> int:
    """Delete a batch (at most :data:`SWEEP_BATCH`) of rows whose ``expires_at`` passed;
    returns how many.

    ``table`` and ``key`` are our own names, never user input.
    """
    return conn.execute(
        f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table}"
        " WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?)",
        (now, SWEEP_BATCH),
    ).rowcount


class Sweeper:
    """Says when a store should delete its expired rows: now and then, not on every write,
    but on every write while the last sweep found a full batch (it is behind)."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last: float | None = None
        self._behind = False

    def due(self) -> bool:
        now = self._clock.monotonic()
        if not self._behind and self._last is not None and now - self._last < SWEEP_EVERY:
            return False
        self._last = now
        return True

    def swept(self, count: int) -> None:
        """What the sweep that :meth:`due` asked for deleted (0 if none ran)."""
        self._behind = count >= SWEEP_BATCH
