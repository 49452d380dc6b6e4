"""Locks, revocations and beat schedules, each a table in the same file."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import msgspec

from stem import Clock
from stem.contracts import LockStore, RevokeEntry, RevokeStore, ScheduleEntry, ScheduleStore

from ._connection import Client, FileStore
from ._support import Sweeper, changed, decode, fetchall, sweep_expired, to_json
from ._url import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_SYNCHRONOUS,
    SqliteOptions,
    check_seconds,
    check_synchronous,
    resolve_path,
)

__all__ = ["SqliteLockStore", "SqliteRevokeStore", "SqliteScheduleStore"]

_revoke_decoder = msgspec.json.Decoder(RevokeEntry)
_schedule_decoder = msgspec.json.Decoder(ScheduleEntry)


def _client(
    path: str | os.PathLike[str], busy_timeout: float, synchronous: str, share: bool
) -> Client:
    return Client(
        SqliteOptions(
            path=resolve_path(path),
            busy_timeout=check_seconds("busy_timeout", busy_timeout),
            synchronous=check_synchronous(synchronous),
        ),
        share=share,
    )


class SqliteLockStore(FileStore, LockStore):
    """Named leases with an owner and an expiry; each call is one atomic statement.

    Args:
        path: the database file (created, with its directory, on first use).
        clock: expiry is read from it, never from SQLite.
        busy_timeout: how long a write waits for another process's lock before failing.
        synchronous: ``"normal"`` or ``"full"``, as for :class:`~stem_sqlite.SqliteBroker`.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self._client = _client(path, busy_timeout, synchronous, share_connection)
        self._sweeper = Sweeper(self.clock)

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        now = self.clock.now()
        db = await self._db()
        params = {"key": key, "owner": owner, "until": now + ttl, "now": now}
        if self._sweeper.due():  # unique-task keys pile up; clear the expired ones now and then
            won, swept = await db.write(_acquire_and_sweep, ACQUIRE_LOCK, params, now)
            self._sweeper.swept(swept)
            return won
        return await db.write(changed, ACQUIRE_LOCK, params) == 1

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        now = self.clock.now()
        db = await self._db()
        return (
            await db.write(
                changed,
                "UPDATE stem_locks SET expires_at = ?"
                " WHERE key = ? AND owner = ? AND expires_at > ?",
                (now + ttl, key, owner, now),
            )
            == 1
        )

    async def release(self, key: str, owner: str) -> bool:
        db = await self._db()
        return (
            await db.write(
                changed,
                "DELETE FROM stem_locks WHERE key = ? AND owner = ? AND expires_at > ?",
                (key, owner, self.clock.now()),
            )
            == 1
        )

    async def owner_of(self, key: str) -> str | None:
        db = await self._db()
        rows = await db.peek(
            fetchall,
            "SELECT owner FROM stem_locks WHERE key = ? AND expires_at > ?",
            (key, self.clock.now()),
        )
        return str(rows[0][0]) if rows else None

    async def aclose(self) -> None:
        await self._client.aclose()


#: Insert, or take over a lock that expired or that ``owner`` already holds; the conflict
#: clause's WHERE makes it one atomic test-and-set, and rowcount says who won.
ACQUIRE_LOCK = (
    "INSERT INTO stem_locks (key, owner, expires_at) VALUES (:key, :owner, :until)"
    " ON CONFLICT (key) DO UPDATE"
    " SET owner = excluded.owner, expires_at = excluded.expires_at"
    " WHERE stem_locks.expires_at <= :now OR stem_locks.owner = excluded.owner"
)


def _acquire_and_sweep(
    conn: sqlite3.Connection, sql: str, params: dict[str, Any], now: float
) -> tuple[bool, int]:
    won = conn.execute(sql, params).rowcount == 1
    return won, sweep_expired(conn, "stem_locks", "key", now)


class SqliteRevokeStore(FileStore, RevokeStore):
    """Revocations that outlive worker restarts.

    Args:
        path: the database file (created, with its directory, on first use).
        clock: expiry is read from it, never from SQLite.
        busy_timeout: how long a write waits for another process's lock before failing.
        synchronous: ``"normal"`` or ``"full"``, as for :class:`~stem_sqlite.SqliteBroker`.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self._client = _client(path, busy_timeout, synchronous, share_connection)
        self._sweeper = Sweeper(self.clock)

    async def revoke(self, entry: RevokeEntry) -> RevokeEntry:
        db = await self._db()
        seq = await db.write(
            _store_revoke,
            entry.task_id,
            entry.revoked_at,
            entry.expires_at,
            to_json(entry),
            self.clock.now(),
            self._sweeper.due(),
        )
        return msgspec.structs.replace(entry, seq=seq)

    def _entry(self, seq: int, data: str) -> RevokeEntry:
        entry: RevokeEntry = decode(_revoke_decoder, data, "a revocation", self.path)
        return msgspec.structs.replace(entry, seq=seq)

    async def get(self, task_id: str) -> RevokeEntry | None:
        db = await self._db()
        rows = await db.peek(
            fetchall,
            "SELECT seq, data FROM stem_revokes"
            " WHERE task_id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (task_id, self.clock.now()),
        )
        return self._entry(*rows[0]) if rows else None

    async def list(self, *, since: int | None = None) -> list[RevokeEntry]:
        db = await self._db()
        rows = await db.run(
            fetchall,
            "SELECT seq, data FROM stem_revokes WHERE seq > :since"
            " AND (expires_at IS NULL OR expires_at > :now) ORDER BY seq",
            {"now": self.clock.now(), "since": since or 0},
        )
        return [self._entry(seq, data) for seq, data in rows]

    async def aclose(self) -> None:
        await self._client.aclose()


def _store_revoke(
    conn: sqlite3.Connection,
    task_id: str,
    revoked_at: float,
    expires_at: float | None,
    data: str,
    now: float,
    sweep: bool,
) -> int:
    # Delete then insert: a revocation made again gets a new, larger seq, so readers
    # that saw the old one see it again (its terminate flag may have changed).
    conn.execute("DELETE FROM stem_revokes WHERE task_id = ?", (task_id,))
    seq = conn.execute(
        "INSERT INTO stem_revokes (task_id, revoked_at, expires_at, data)"
        " VALUES (?, ?, ?, ?) RETURNING seq",
        (task_id, revoked_at, expires_at, data),
    ).fetchone()[0]
    if sweep:
        sweep_expired(conn, "stem_revokes", "seq", now)
    return int(seq)


class SqliteScheduleStore(FileStore, ScheduleStore):
    """Beat entries; ``due`` reads an index of enabled entries by next run time.

    Args:
        path: the database file (created, with its directory, on first use).
        clock: kept for symmetry; due times are given by the caller.
        busy_timeout: how long a write waits for another process's lock before failing.
        synchronous: ``"normal"`` or ``"full"``, as for :class:`~stem_sqlite.SqliteBroker`.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self._client = _client(path, busy_timeout, synchronous, share_connection)

    def _entry(self, data: str) -> ScheduleEntry:
        entry: ScheduleEntry = decode(_schedule_decoder, data, "a schedule entry", self.path)
        return entry

    async def upsert(self, entry: ScheduleEntry) -> None:
        db = await self._db()
        await db.write(
            changed,
            "INSERT INTO stem_schedules (id, enabled, next_run_at, data) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET enabled = excluded.enabled,"
            " next_run_at = excluded.next_run_at, data = excluded.data",
            (entry.id, int(entry.enabled), entry.next_run_at, to_json(entry)),
        )

    async def get(self, entry_id: str) -> ScheduleEntry | None:
        db = await self._db()
        rows = await db.peek(fetchall, "SELECT data FROM stem_schedules WHERE id = ?", (entry_id,))
        return self._entry(rows[0][0]) if rows else None

    async def remove(self, entry_id: str) -> bool:
        db = await self._db()
        return await db.write(changed, "DELETE FROM stem_schedules WHERE id = ?", (entry_id,)) == 1

    async def due(self, now: float, *, limit: int = 100) -> list[ScheduleEntry]:
        db = await self._db()
        rows = await db.run(
            fetchall,
            "SELECT data FROM stem_schedules WHERE enabled = 1 AND next_run_at <= ?"
            " ORDER BY next_run_at, rowid LIMIT ?",
            (now, limit),
        )
        return [self._entry(data) for (data,) in rows]

    async def mark_executed(
        self, entry_id: str, *, ran_at: float, next_run_at: float | None, drift: float
    ) -> None:
        db = await self._db()
        await db.write(_mark_executed, entry_id, ran_at, next_run_at, drift)

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(self) -> list[ScheduleEntry]:
        db = await self._db()
        rows = await db.run(fetchall, "SELECT data FROM stem_schedules ORDER BY rowid", ())
        return [self._entry(data) for (data,) in rows]

    async def aclose(self) -> None:
        await self._client.aclose()


def _mark_executed(
    conn: sqlite3.Connection, entry_id: str, ran_at: float, next_run_at: float | None, drift: float
) -> None:
    row = conn.execute("SELECT data FROM stem_schedules WHERE id = ?", (entry_id,)).fetchone()
    if row is None:
        return  # removed meanwhile: nothing to record
    entry = _schedule_decoder.decode(row[0])
    entry.last_run_at = ran_at
    entry.next_run_at = next_run_at
    entry.last_drift = drift
    entry.total_runs += 1
    conn.execute(
        "UPDATE stem_schedules SET next_run_at = ?, data = ? WHERE id = ?",
        (next_run_at, to_json(entry), entry_id),
    )
