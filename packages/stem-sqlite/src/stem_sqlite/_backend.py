"""The SQLite result backend: statuses, groups, chords and heartbeats in the same file."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from typing import Any

import msgspec

from stem import Clock
from stem.contracts import GroupState, ResultBackend, TaskState, TaskStatus, WorkerHeartbeat

from ._connection import Client, FileStore
from ._support import SWEEP_BATCH, Sweeper, decode, fetchall, sweep_expired, to_json
from ._url import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_SYNCHRONOUS,
    DEFAULT_WAKE_INTERVAL,
    SqliteOptions,
    check_seconds,
    check_synchronous,
    resolve_path,
)
from ._wake import Baselines, Pacer, wait_for_change

__all__ = ["SqliteResultBackend"]

_status_decoder = msgspec.json.Decoder(TaskStatus)
_heartbeat_decoder = msgspec.json.Decoder(WorkerHeartbeat)
_meta_decoder = msgspec.json.Decoder(dict[str, Any])

#: Status writes of at most this many rows are small writes (see Database.write_small).
SMALL_STATUSES = 8


class SqliteResultBackend(FileStore, ResultBackend):
    """Task statuses, groups, chord claims and worker heartbeats in a SQLite file.

    Args:
        path: the database file (created, with its directory, on first use).
        clock: every time stored or compared is read from it.
        busy_timeout: how long a write waits for another process's lock before failing.
        wake_interval: longest gap between two checks of a watched status for changes
            made by other processes (changes made in this process wake watchers at once).
        synchronous: ``"normal"`` or ``"full"``, as for :class:`SqliteBroker`.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
        synchronous: str = DEFAULT_SYNCHRONOUS,
        share_connection: bool = True,
    ) -> None:
        super().__init__(clock=clock)
        self._client = Client(
            SqliteOptions(
                path=resolve_path(path),
                busy_timeout=check_seconds("busy_timeout", busy_timeout),
                wake_interval=check_seconds("wake_interval", wake_interval, allow_zero=False),
                synchronous=check_synchronous(synchronous),
            ),
            share=share_connection,
        )
        self._baselines: Baselines[str, int | None] = Baselines()
        self._sweep_statuses = Sweeper(self.clock)
        self._sweep_heartbeats = Sweeper(self.clock)
        self._sweep_groups = Sweeper(self.clock)

    def _status(self, data: str, expires_at: float | None) -> TaskStatus:
        status: TaskStatus = decode(_status_decoder, data, "a task status", self.path)
        status.expires_at = expires_at  # the column is the truth: expire() changes only it
        return status

    # -- statuses -------------------------------------------------------------------------

    async def set_status(self, status: TaskStatus, *, ttl: float | None = None) -> None:
        await self.set_statuses([(status, ttl)])

    async def set_statuses(self, statuses: Sequence[tuple[TaskStatus, float | None]]) -> None:
        """Store several statuses in one transaction (the worker's batched flush)."""
        if not statuses:
            return
        rows, now = self.status_rows(statuses)
        db = await self._db()
        write = db.write_small if len(rows) <= SMALL_STATUSES else db.write
        swept = await write(store_statuses, rows, now, self._sweep_statuses.due())
        self._sweep_statuses.swept(swept)
        db.signals.statuses_changed([row[0] for row in rows])

    def status_rows(
        self, statuses: Sequence[tuple[TaskStatus, float | None]]
    ) -> tuple[list[tuple[Any, ...]], float]:
        """The rows that store ``statuses`` (for :func:`store_statuses`), and when they were made."""
        now = self.clock.now()
        rows = []
        for status, ttl in statuses:
            # Like the in-memory backend, fill in the caller's status: when it was
            # updated (unless given) and when it expires.
            status.updated_at = status.updated_at or now
            status.expires_at = now + ttl if ttl is not None else None
            rows.append(
                (
                    status.id,
                    str(status.state),
                    status.task,
                    status.updated_at,
                    status.expires_at,
                    to_json(status),
                )
            )
        return rows, now

    async def get_status(self, task_id: str) -> TaskStatus | None:
        db = await self._db()
        row = await db.peek(_read_status, task_id, self.clock.now())
        # Remember the version read, so a watch that waits next cannot miss a change
        # committed between this read and the start of its wait.
        self._baselines.remember(task_id, None if row is None else row[2])
        return None if row is None else self._status(row[0], row[1])

    async def get_statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        db = await self._db()
        rows = await db.run(
            fetchall,
            "SELECT id, data, expires_at FROM stem_task_statuses"
            " WHERE id IN (SELECT value FROM json_each(?1))"
            " AND (expires_at IS NULL OR expires_at > ?2)"
            " UNION ALL SELECT id, status, NULL FROM stem_messages AS m"
            " WHERE id IN (SELECT value FROM json_each(?1)) AND status IS NOT NULL"
            " AND NOT EXISTS (SELECT 1 FROM stem_task_statuses AS s WHERE s.id = m.id)",
            (to_json(list(task_ids)), self.clock.now()),
        )
        found = {tid: self._status(data, expires_at) for tid, data, expires_at in rows}
        return {tid: found[tid] for tid in task_ids if tid in found}

    async def list_statuses(
        self, *, state: TaskState | None = None, task: str | None = None, limit: int = 100
    ) -> list[TaskStatus]:
        db = await self._db()
        sql, params = _listing(None if state is None else str(state), task)
        rows = await db.run(fetchall, sql, {**params, "now": self.clock.now(), "limit": limit})
        return [self._status(data, expires_at) for data, expires_at in rows]

    async def expire(self, task_id: str, ttl: float) -> bool:
        now = self.clock.now()
        db = await self._db()
        return await db.write(_expire_status, task_id, now + ttl, now)

    async def wait_for_change(self, task_id: str, timeout: float) -> None:
        """Return soon after the status of ``task_id`` changes (in any process), or at ``timeout``.

        Changes made in this process wake the waiter at once; those of other processes
        are seen within ``wake_interval`` by reading the row's version counter.
        """
        deadline = self.clock.monotonic() + timeout
        db = await self._db()
        notifier = db.signals.status(task_id)
        known, baseline = self._baselines.take(task_id)

        async def probe() -> int | None:
            return await db.peek(_status_version, task_id, self.clock.now())

        current = await probe()
        if known and current != baseline:
            return  # changed since the caller last read it
        if not known:
            # Not called right after this task's own get_status (watch() driven from
            # several tasks, or a direct call): a change made just before may be missed,
            # so wait no longer than the base class's poll interval before reading again.
            deadline = min(deadline, self.clock.monotonic() + self.poll_interval)

        async def changed() -> bool:
            return await probe() != current

        await wait_for_change(
            clock=self.clock,
            deadline=deadline,
            notifier=notifier,
            changed=changed,
            pacer=Pacer(self._client.options.wake_interval),  # soon: a result is awaited
        )

    # -- groups and chords ----------------------------------------------------------------

    async def init_group(
        self,
        group_id: str,
        size: int,
        *,
        meta: dict[str, object] | None = None,
        ttl: float | None = None,
    ) -> None:
        db = await self._db()
        swept = await db.write(
            _init_group,
            group_id,
            size,
            to_json(dict(meta or {})),
            ttl,
            self.clock.now(),
            self._sweep_groups.due(),
        )
        self._sweep_groups.swept(swept)

    async def add_group_result(self, group_id: str, status: TaskStatus) -> GroupState | None:
        db = await self._db()
        found = await db.write(
            _add_group_result, group_id, status.id, to_json(status), self.clock.now()
        )
        return None if found is None else self._group(group_id, *found)

    async def get_group(self, group_id: str) -> GroupState | None:
        db = await self._db()
        found = await db.read(_read_group, group_id, self.clock.now())
        return None if found is None else self._group(group_id, *found)

    def _group(
        self,
        group_id: str,
        size: int,
        meta: str,
        claimed_by: str | None,
        claimed_at: float | None,
        chord_meta: str | None,
        results: list[tuple[str, str]],
    ) -> GroupState:
        return GroupState(
            id=group_id,
            size=size,
            results={
                tid: decode(_status_decoder, data, "a group result", self.path)
                for tid, data in results
            },
            meta=decode(_meta_decoder, meta, "group meta", self.path),
            chord_claimed_by=claimed_by,
            chord_claimed_at=claimed_at,
            chord_meta=(
                {}
                if chord_meta is None
                else decode(_meta_decoder, chord_meta, "chord meta", self.path)
            ),
        )

    async def claim_chord(
        self, group_id: str, owner: str, *, meta: dict[str, object] | None = None
    ) -> bool:
        db = await self._db()
        return await db.write(
            _claim_chord, group_id, owner, to_json(dict(meta or {})), self.clock.now()
        )

    # -- worker heartbeats ----------------------------------------------------------------

    async def set_heartbeat(self, heartbeat: WorkerHeartbeat, *, ttl: float) -> None:
        now = self.clock.now()
        db = await self._db()
        swept = await db.write(
            _store_heartbeat,
            heartbeat.worker_id,
            now + ttl,
            to_json(heartbeat),
            now,
            self._sweep_heartbeats.due(),
        )
        self._sweep_heartbeats.swept(swept)

    async def get_heartbeat(self, worker_id: str) -> WorkerHeartbeat | None:
        db = await self._db()
        rows = await db.peek(
            fetchall,
            "SELECT data FROM stem_heartbeats WHERE worker_id = ? AND expires_at > ?",
            (worker_id, self.clock.now()),
        )
        return decode(_heartbeat_decoder, rows[0][0], "a heartbeat", self.path) if rows else None

    async def list_heartbeats(self) -> list[WorkerHeartbeat]:
        db = await self._db()
        rows = await db.run(
            fetchall,
            "SELECT data FROM stem_heartbeats WHERE expires_at > ? ORDER BY rowid",
            (self.clock.now(),),
        )
        return [decode(_heartbeat_decoder, data, "a heartbeat", self.path) for (data,) in rows]

    async def aclose(self) -> None:
        await self._client.aclose()


# -- transactions (run on the connection's thread) --------------------------------------


# Upserted: a worker's first status of a task inserts its row (the `queued` status of
# an enqueue rides in the message row, see migration 0004), later ones update it. In a
# batch, of two statuses of one task, the later stays. A row stored again over an
# expired one keeps its seq: it only breaks ties of updated_at in listings.
_STORE_STATUS = (
    "INSERT INTO stem_task_statuses (id, state, task, updated_at, expires_at, data, version)"
    " VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
    " task = excluded.task, updated_at = excluded.updated_at,"
    " expires_at = excluded.expires_at, data = excluded.data, version = version + 1"
)


def store_statuses(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], now: float, sweep: bool
) -> int:
    """Store status rows (see status_rows); returns how many expired statuses a ``sweep``
    deleted."""
    conn.executemany(_STORE_STATUS, rows)
    if sweep:
        return sweep_expired(conn, "stem_task_statuses", "rowid", now)
    return 0


# A status rides in its message row until the task's own row exists, which wins even
# when expired (it is newer: an enqueue deletes the row of a reused id).
_QUEUED_STATUS = (
    "SELECT status FROM stem_messages AS m WHERE id = ?1 AND status IS NOT NULL"
    " AND NOT EXISTS (SELECT 1 FROM stem_task_statuses WHERE id = ?1)"
    " ORDER BY seq DESC LIMIT 1"
)


def task_exists(conn: sqlite3.Connection, task_id: str, now: float) -> bool:
    """Whether ``task_id`` has a live status, stored or riding in its message."""
    return (
        conn.execute(
            "SELECT 1 FROM stem_task_statuses"
            " WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
            (task_id, now),
        ).fetchone()
        is not None
        or conn.execute(_QUEUED_STATUS, (task_id,)).fetchone() is not None
    )


def _listing(state: str | None, task: str | None) -> tuple[str, dict[str, Any]]:
    """The query listing statuses newest first, shaped so that it walks an index.

    ``stem_task_statuses_state`` is ``(state, updated_at)`` and ``stem_task_statuses_task``
    is ``(task, state, updated_at)``: a state (and a task) is one index range read newest
    first up to the limit; without a state, the newest ``limit`` of each state's range
    are merged. There is no index on ``updated_at`` alone: every status write would
    pay for it, for a listing the ranges serve as well. `queued` statuses riding in
    their messages are read newest first in publish order (seq), where they are sorted.
    """
    alive = "(expires_at IS NULL OR expires_at > :now)"
    where = "state = :state" + (" AND task = :task" if task is not None else "")
    params: dict[str, Any] = {"task": task}
    arms = []
    for index, each in enumerate(TaskState):
        if state is not None and str(each) != state:
            continue
        name = f"s{index}"
        params[name] = str(each)
        arms.append(
            "SELECT * FROM (SELECT data, expires_at, updated_at, seq FROM stem_task_statuses"
            f" WHERE {where.replace(':state', ':' + name)} AND {alive}"
            " ORDER BY updated_at DESC, seq LIMIT :limit)"
        )
    if state in (None, str(TaskState.QUEUED)):
        of_task = " AND json_extract(status, '$.task') = :task" if task is not None else ""
        arms.append(
            "SELECT * FROM (SELECT status, NULL, json_extract(status, '$.updated_at'), seq"
            f" FROM stem_messages AS m WHERE status IS NOT NULL{of_task}"
            " AND NOT EXISTS (SELECT 1 FROM stem_task_statuses AS s WHERE s.id = m.id)"
            " ORDER BY seq DESC LIMIT :limit)"
        )
    sql = (
        "SELECT data, expires_at FROM (" + " UNION ALL ".join(arms) + ")"
        " ORDER BY updated_at DESC, seq LIMIT :limit"
    )
    return sql, params


def _read_status(
    conn: sqlite3.Connection, task_id: str, now: float
) -> tuple[str, float | None, int | None] | None:
    row = conn.execute(
        "SELECT data, expires_at, version FROM stem_task_statuses"
        " WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
        (task_id, now),
    ).fetchone()
    if row is not None:
        return row[0], row[1], row[2]
    queued = conn.execute(_QUEUED_STATUS, (task_id,)).fetchone()
    # No version: a watcher's probe reads None until the task's own row appears.
    return None if queued is None else (queued[0], None, None)


def _status_version(conn: sqlite3.Connection, task_id: str, now: float) -> int | None:
    # The same rows get_status sees: an expired status reads as absent here too, or a
    # watcher of an expired task would wake at every check.
    row = conn.execute(
        "SELECT version FROM stem_task_statuses"
        " WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
        (task_id, now),
    ).fetchone()
    return None if row is None else int(row[0])


def _expire_status(conn: sqlite3.Connection, task_id: str, expires_at: float, now: float) -> bool:
    cursor = conn.execute(
        "UPDATE stem_task_statuses SET expires_at = ?"
        " WHERE id = ? AND (expires_at IS NULL OR expires_at > ?)",
        (expires_at, task_id, now),
    )
    if cursor.rowcount == 1:
        return True
    # A status riding in its message gets a row of its own, which carries the expiry.
    cursor = conn.execute(
        "INSERT INTO stem_task_statuses (id, state, task, updated_at, expires_at, data, version)"
        " SELECT ?1, json_extract(status, '$.state'), coalesce(json_extract(status, '$.task'), ''),"
        " coalesce(json_extract(status, '$.updated_at'), 0), ?2, status, 1"
        " FROM (" + _QUEUED_STATUS + ")",
        (task_id, expires_at),
    )
    return cursor.rowcount == 1


# A group is live while its expires_at (NULL: never) is after now; each write to it
# moves expires_at to now + ttl.
_LIVE_GROUP = "id = ? AND (expires_at IS NULL OR expires_at > ?)"
_TOUCH_GROUP = "UPDATE stem_groups SET expires_at = ? + ttl WHERE id = ? AND ttl IS NOT NULL"


def _init_group(
    conn: sqlite3.Connection,
    group_id: str,
    size: int,
    meta: str,
    ttl: float | None,
    now: float,
    sweep: bool,
) -> int:
    """Create the group, or start it afresh (results and chord claim dropped); returns
    how many expired groups a ``sweep`` deleted."""
    conn.execute("DELETE FROM stem_group_results WHERE group_id = ?", (group_id,))
    conn.execute(
        "INSERT INTO stem_groups"
        " (id, size, meta, chord_claimed_by, ttl, expires_at, chord_claimed_at, chord_meta)"
        " VALUES (?1, ?2, ?3, NULL, ?4, ?5 + ?4, NULL, NULL)"
        " ON CONFLICT (id) DO UPDATE SET size = excluded.size, meta = excluded.meta,"
        " chord_claimed_by = NULL, ttl = excluded.ttl, expires_at = excluded.expires_at,"
        " chord_claimed_at = NULL, chord_meta = NULL",
        (group_id, size, meta, ttl, now),
    )
    return _sweep_groups(conn, now) if sweep else 0


def _sweep_groups(conn: sqlite3.Connection, now: float) -> int:
    """Delete a batch of expired groups with their results; returns how many groups."""
    gone = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM stem_groups WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?",
            (now, SWEEP_BATCH),
        )
    ]
    if gone:
        ids = to_json(gone)
        conn.execute(
            "DELETE FROM stem_group_results WHERE group_id IN (SELECT value FROM json_each(?))",
            (ids,),
        )
        conn.execute("DELETE FROM stem_groups WHERE id IN (SELECT value FROM json_each(?))", (ids,))
    return len(gone)


_Group = tuple[int, str, str | None, float | None, str | None, list[tuple[str, str]]]


def _read_group(conn: sqlite3.Connection, group_id: str, now: float) -> _Group | None:
    row = conn.execute(
        "SELECT size, meta, chord_claimed_by, chord_claimed_at, chord_meta FROM stem_groups"
        " WHERE " + _LIVE_GROUP,
        (group_id, now),
    ).fetchone()
    if row is None:
        return None
    results = conn.execute(
        "SELECT task_id, data FROM stem_group_results WHERE group_id = ? ORDER BY rowid",
        (group_id,),
    ).fetchall()
    return row[0], row[1], row[2], row[3], row[4], results


def _add_group_result(
    conn: sqlite3.Connection, group_id: str, task_id: str, data: str, now: float
) -> _Group | None:
    live = conn.execute("SELECT 1 FROM stem_groups WHERE " + _LIVE_GROUP, (group_id, now))
    if live.fetchone() is None:
        return None  # unknown or expired: the result is refused
    # Idempotent per task id: a redelivered member's result is recorded once, the first time.
    conn.execute(
        "INSERT OR IGNORE INTO stem_group_results (group_id, task_id, data) VALUES (?, ?, ?)",
        (group_id, task_id, data),
    )
    conn.execute(_TOUCH_GROUP, (now, group_id))
    return _read_group(conn, group_id, now)


def _claim_chord(
    conn: sqlite3.Connection, group_id: str, owner: str, meta: str, now: float
) -> bool:
    cursor = conn.execute(
        "UPDATE stem_groups SET chord_claimed_by = ?, chord_claimed_at = ?, chord_meta = ?,"
        " expires_at = CASE WHEN ttl IS NULL THEN NULL ELSE ? + ttl END"
        " WHERE chord_claimed_by IS NULL AND " + _LIVE_GROUP,
        (owner, now, meta, now, group_id, now),
    )
    return cursor.rowcount == 1


def _store_heartbeat(
    conn: sqlite3.Connection, worker_id: str, expires_at: float, data: str, now: float, sweep: bool
) -> int:
    conn.execute(
        "INSERT INTO stem_heartbeats (worker_id, expires_at, data) VALUES (?, ?, ?)"
        " ON CONFLICT (worker_id) DO UPDATE"
        " SET expires_at = excluded.expires_at, data = excluded.data",
        (worker_id, expires_at, data),
    )
    return sweep_expired(conn, "stem_heartbeats", "rowid", now) if sweep else 0
