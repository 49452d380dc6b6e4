"""Locks, revocations and beat schedules, each a table in the same file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgspec

from stem import Clock
from stem.contracts import (
    LockStore,
    RevokeEntry,
    RevokeStore,
    ScheduleConflictError,
    ScheduleEntry,
    ScheduleStore,
)

from ._connection import Client, FileStore
from ._support import Sweeper, changed, decode, fetchall, sweep_expired, to_json
from ._url import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_NAMESPACE,
    DEFAULT_SYNCHRONOUS,
    SqliteOptions,
    check_namespace,
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
    """Beat entries of one namespace; ``due`` reads an index of enabled entries by next
    run time and claims what it hands out.

    Each method is one transaction. An entry is JSON in ``data``, its ``version`` and
    claim are columns (see migrations/0007_schedule_claims.sql). Claims are given and
    judged on ``clock``: the beats sharing a file share a machine, and its clock.

    Args:
        path: the database file (created, with its directory, on first use).
        clock: claims are given and judged on it; due times are given by the caller.
        namespace: apps sharing the file each see only the entries of their namespace.
        busy_timeout: how long a write waits for another process's lock before failing.
        synchronous: ``"normal"`` or ``"full"``, as for :class:`~stem_sqlite.SqliteBroker`.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.

    Raises:
        ConfigurationError: ``namespace`` is empty or not a string.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self.namespace = check_namespace(namespace)
        self._client = _client(path, busy_timeout, synchronous, share_connection)

    def _entry(self, row: Sequence[Any]) -> ScheduleEntry:
        """An entry from a row of :data:`_COLUMNS`."""
        version, claimed_by, claimed_until, data = row
        entry: ScheduleEntry = decode(_schedule_decoder, data, "a schedule entry", self.path)
        return msgspec.structs.replace(
            entry, version=version, claimed_by=claimed_by, claimed_until=claimed_until
        )

    async def upsert(self, entry: ScheduleEntry) -> ScheduleEntry:
        data = _definition(entry)  # an entry that cannot be encoded fails before any write
        db = await self._db()
        return self._entry(await db.write(_upsert, self.namespace, entry, data))

    async def get(self, entry_id: str) -> ScheduleEntry | None:
        db = await self._db()
        rows = await db.peek(
            fetchall,
            f"SELECT {_COLUMNS} FROM stem_schedules WHERE namespace = ? AND id = ?",
            (self.namespace, entry_id),
        )
        return self._entry(rows[0]) if rows else None

    async def remove(self, entry_id: str) -> bool:
        db = await self._db()
        sql = "DELETE FROM stem_schedules WHERE namespace = ? AND id = ?"
        return await db.write(changed, sql, (self.namespace, entry_id)) == 1

    async def due(
        self, now: float, *, owner: str, claim_ttl: float, limit: int = 100
    ) -> list[ScheduleEntry]:
        if limit <= 0:
            return []  # (SQLite reads a negative LIMIT as no limit at all)
        held = self.clock.now()
        db = await self._db()
        rows = await db.write(_claim_due, self.namespace, now, held, owner, held + claim_ttl, limit)
        return [self._entry(row) for row in rows]

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
        firing = _Firing(owner, due_at, ran_at, next_run_at, drift, error)
        db = await self._db()
        return await db.write(
            _mark_executed, self.namespace, entry_id, firing, self.clock.now(), self.path
        )

    async def release(self, entry_id: str, owner: str) -> bool:
        db = await self._db()
        sql = (
            "UPDATE stem_schedules SET claimed_by = NULL, claimed_until = NULL"
            " WHERE namespace = ? AND id = ? AND claimed_by = ?"
        )
        return await db.write(changed, sql, (self.namespace, entry_id, owner)) == 1

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(self) -> list[ScheduleEntry]:
        db = await self._db()
        rows = await db.run(
            fetchall,
            f"SELECT {_COLUMNS} FROM stem_schedules WHERE namespace = ? ORDER BY seq",
            (self.namespace,),
        )
        return [self._entry(row) for row in rows]

    async def aclose(self) -> None:
        await self._client.aclose()


#: The columns an entry is read from, in the order SqliteScheduleStore._entry takes them.
_COLUMNS = "version, claimed_by, claimed_until, data"


def _definition(entry: ScheduleEntry) -> str:
    """The JSON kept in ``data``: the entry without its version and claim (columns)."""
    return to_json(msgspec.structs.replace(entry, version=0, claimed_by=None, claimed_until=None))


def _upsert(
    conn: sqlite3.Connection, namespace: str, entry: ScheduleEntry, data: str
) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT version FROM stem_schedules WHERE namespace = ? AND id = ?", (namespace, entry.id)
    ).fetchone()
    if (row[0] if row else 0) != entry.version:
        have = f"version {row[0]}" if row else "no such entry"
        raise ScheduleConflictError(
            f"beat entry {entry.id!r} was written with version {entry.version}, but the "
            f"store has {have}: read it again and apply the change to what is stored"
        )
    if row:  # a claim belongs to the beat that holds it, not the writer: it is kept
        stored = conn.execute(
            "UPDATE stem_schedules SET enabled = ?, next_run_at = ?, version = ?, data = ?"
            f" WHERE namespace = ? AND id = ? RETURNING {_COLUMNS}",
            (int(entry.enabled), entry.next_run_at, entry.version + 1, data, namespace, entry.id),
        ).fetchone()
    else:
        stored = conn.execute(
            "INSERT INTO stem_schedules (namespace, id, enabled, next_run_at, version,"
            f" claimed_by, claimed_until, data) VALUES (?, ?, ?, ?, 1, ?, ?, ?) RETURNING {_COLUMNS}",
            (
                namespace,
                entry.id,
                int(entry.enabled),
                entry.next_run_at,
                entry.claimed_by,
                entry.claimed_until,
                data,
            ),
        ).fetchone()
    return tuple(stored)


def _claim_due(
    conn: sqlite3.Connection,
    namespace: str,
    now: float,
    held: float,
    owner: str,
    until: float,
    limit: int,
) -> list[tuple[Any, ...]]:
    # The partial index on (namespace, next_run_at) gives the enabled entries oldest
    # first, ties by seq (the rowid each index entry ends with); the scan steps over
    # entries under a live claim.
    rows = conn.execute(
        "SELECT seq, version, data FROM stem_schedules WHERE namespace = ? AND enabled = 1"
        " AND next_run_at <= ? AND (claimed_until IS NULL OR claimed_until <= ?)"
        " ORDER BY next_run_at, seq LIMIT ?",
        (namespace, now, held, limit),
    ).fetchall()
    conn.executemany(
        "UPDATE stem_schedules SET claimed_by = ?, claimed_until = ? WHERE seq = ?",
        [(owner, until, seq) for seq, _, _ in rows],
    )
    return [(version, owner, until, data) for _, version, data in rows]


class _Firing(NamedTuple):
    """What ``mark_executed`` records, and whose claim on which firing it needs."""

    owner: str
    due_at: float
    ran_at: float
    next_run_at: float | None
    drift: float
    error: str | None


def _mark_executed(
    conn: sqlite3.Connection,
    namespace: str,
    entry_id: str,
    firing: _Firing,
    now: float,
    path: str,
) -> bool:
    row = conn.execute(
        "SELECT seq, data FROM stem_schedules WHERE namespace = ? AND id = ?"
        " AND claimed_by = ? AND claimed_until > ? AND next_run_at = ?",
        (namespace, entry_id, firing.owner, now, firing.due_at),
    ).fetchone()
    if row is None:
        return False  # the claim ran out, the entry changed or went: nothing to record
    seq, data = row
    entry: ScheduleEntry = decode(_schedule_decoder, data, "a schedule entry", path)
    entry.last_run_at, entry.next_run_at = firing.ran_at, firing.next_run_at
    entry.last_drift, entry.last_error = firing.drift, firing.error
    if firing.error is None:
        entry.total_runs += 1
    conn.execute(
        "UPDATE stem_schedules SET next_run_at = ?, version = version + 1, claimed_by = NULL,"
        " claimed_until = NULL, data = ? WHERE seq = ?",
        (firing.next_run_at, to_json(entry), seq),
    )
    return True
