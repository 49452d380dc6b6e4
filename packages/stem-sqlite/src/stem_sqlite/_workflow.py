"""The SQLite workflow store: runs, checkpoints, watchers and kept events in the same file.

Each method is one transaction. A write reads the run's row, changes the decoded
:class:`~stem.contracts.WorkflowRun` as the in-memory reference store does, and writes it
back with the columns the queries read (status, wake time, lease), all under
``BEGIN IMMEDIATE``: two processes claiming one run, or an event racing a deadline,
are serialised by SQLite's write lock, and the loser sees the winner's row.

Every write to a run bumps its ``version`` column and wakes the callers of
:meth:`SqliteWorkflowStore.wait_for_change` through the file's wake-up signals (at
once in this process, by datagram in others), who also read the version now and then.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
from typing import Any

import msgspec

from stem import Clock, DuplicateRunError, LeaseLostError, TaskError
from stem.contracts import Resume, RunStatus, StepCheckpoint, Watcher, WorkflowRun, WorkflowStore

from ._connection import Client, Database, FileStore
from ._support import decode, fetchall, to_json
from ._url import (
    SqliteOptions,
    check_seconds,
    check_synchronous,
    parse_url,
    resolve_path,
)
from ._wake import Baselines, Pacer, wait_for_change

__all__ = ["SqliteWorkflowStore"]

_run_decoder = msgspec.json.Decoder(WorkflowRun)
_step_decoder = msgspec.json.Decoder(StepCheckpoint)
_payload_decoder = msgspec.json.Decoder()

#: Runs that are not final, as written in the partial index ``stem_workflow_runs_wake``
#: (a query must repeat it word for word for SQLite to use that index).
_LIVE = "wake_at IS NOT NULL AND status IN ('pending', 'running', 'suspended')"

#: The runs whose wake time came and that no live lease holds, earliest first (ties in
#: creation order): one range of the partial index, read up to the limit.
DUE_RUNS = (
    f"SELECT data FROM stem_workflow_runs WHERE {_LIVE} AND wake_at <= :now"
    " AND NOT (status = 'running' AND lease_expires_at IS NOT NULL"
    " AND lease_expires_at > :now)"
    " ORDER BY wake_at, created_at, seq LIMIT :limit"
)
#: The first entry of the same index.
NEXT_WAKE = f"SELECT min(wake_at) FROM stem_workflow_runs WHERE {_LIVE}"


def listing(by_workflow: bool, by_status: bool, by_parent: bool) -> str:
    """The query listing runs oldest first, filtered by what is given.

    Fixed fragments only: every value is a bound parameter, and ids are compared whole
    (never with LIKE or GLOB), so any id lists. By workflow (and status), it reads a range
    of ``stem_workflow_runs_listing``; by parent, one of ``stem_workflow_runs_parent``.
    """
    where = []
    if by_workflow:
        where.append("workflow = :workflow")
    if by_status:
        where.append("status = :status")
    if by_parent:
        where.append("parent_id = :parent_id")
    return (
        "SELECT data FROM stem_workflow_runs"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY created_at, id LIMIT :limit OFFSET :offset"
    )


#: Wake-up keys for runs, among the task ids of the file's status signals. A task that
#: happens to have the same name only causes a spurious wake-up, which waiters allow.
_WAKE_PREFIX = "stem.workflow-run:"


def _wake_key(run_id: str) -> str:
    return _WAKE_PREFIX + run_id


class SqliteWorkflowStore(FileStore, WorkflowStore):
    """Workflow runs in a SQLite file, shared by the processes of one machine.

    Args:
        path: the database file (created, with its directory, on first use), or a
            ``sqlite://`` URL naming it, whose options apply unless given here.
        clock: every time stored or compared is read from it.
        poll_interval: longest wait of :meth:`wait_for_change` without a fresh read, for a
            caller that did not just read the run.
        busy_timeout: how long a write waits for another process's lock before failing.
        wake_interval: longest gap between two checks of a watched run for changes made by
            other processes (changes made in this process wake watchers at once).
        synchronous: ``"normal"`` or ``"full"``, as for :class:`~stem_sqlite.SqliteBroker`.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.

    The constructor does not touch the file; it is opened, created and migrated on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        poll_interval: float | None = None,
        busy_timeout: float | None = None,
        wake_interval: float | None = None,
        synchronous: str | None = None,
        share_connection: bool = True,
    ) -> None:
        text = os.fspath(path)
        base = (
            parse_url(text)
            if text.lower().startswith("sqlite:")
            else SqliteOptions(path=resolve_path(text))
        )
        poll = base.poll_interval if poll_interval is None else poll_interval
        super().__init__(
            clock=clock, poll_interval=check_seconds("poll_interval", poll, allow_zero=False)
        )
        self._client = Client(
            SqliteOptions(
                path=base.path,
                poll_interval=self.poll_interval,
                busy_timeout=check_seconds(
                    "busy_timeout", base.busy_timeout if busy_timeout is None else busy_timeout
                ),
                wake_interval=check_seconds(
                    "wake_interval",
                    base.wake_interval if wake_interval is None else wake_interval,
                    allow_zero=False,
                ),
                synchronous=check_synchronous(
                    base.synchronous if synchronous is None else synchronous
                ),
            ),
            share=share_connection,
        )
        self._baselines: Baselines[str, int | None] = Baselines()

    def _run(self, data: str) -> WorkflowRun:
        run: WorkflowRun = decode(_run_decoder, data, "a workflow run", self.path)
        return run

    @staticmethod
    def _changed(db: Database, run_ids: builtins.list[str]) -> None:
        if run_ids:
            db.signals.statuses_changed([_wake_key(run_id) for run_id in run_ids])

    # -- runs ------------------------------------------------------------------------------

    async def create_run(self, run: WorkflowRun) -> None:
        data = to_json(run)  # a run that cannot be stored fails before anything is written
        db = await self._db()
        await db.write_small(_create_run, run, data)
        self._changed(db, [run.id])

    async def get_run(self, run_id: str) -> WorkflowRun | None:
        db = await self._db()
        rows = await db.peek(
            fetchall, "SELECT data, version FROM stem_workflow_runs WHERE id = ?", (run_id,)
        )
        # Remember the version read, so that a wait_for_change that follows cannot miss a
        # change committed between this read and the start of its wait.
        self._baselines.remember(run_id, int(rows[0][1]) if rows else None)
        return self._run(rows[0][0]) if rows else None

    async def list_runs(
        self,
        *,
        workflow: str | None = None,
        status: RunStatus | None = None,
        parent_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[WorkflowRun]:
        sql = listing(workflow is not None, status is not None, parent_id is not None)
        params = {
            "workflow": workflow,
            "status": None if status is None else str(status),
            "parent_id": parent_id,
            "limit": max(limit, 0),  # a negative LIMIT is no limit to SQLite
            "offset": max(offset, 0),
        }
        db = await self._db()
        rows = await db.run(fetchall, sql, params)
        return [self._run(data) for (data,) in rows]

    # -- leases ----------------------------------------------------------------------------

    async def claim_run(self, run_id: str, owner: str, ttl: float) -> WorkflowRun | None:
        db = await self._db()
        run = await db.write_small(_claim_run, run_id, owner, ttl, self.clock.now(), self.path)
        if run is not None:
            self._changed(db, [run_id])
        return run

    async def renew_run(self, run_id: str, fence: int, ttl: float) -> bool:
        db = await self._db()
        # No wake-up: waiters wait for a status, which a renewal does not change.
        return await db.write_small(_renew_run, run_id, fence, ttl, self.clock.now(), self.path)

    async def release_run(self, run_id: str, fence: int) -> bool:
        db = await self._db()
        released = await db.write_small(_release_run, run_id, fence, self.clock.now(), self.path)
        if released:
            self._changed(db, [run_id])
        return released

    # -- progress --------------------------------------------------------------------------

    async def save_step(self, run_id: str, fence: int, checkpoint: StepCheckpoint) -> None:
        db = await self._db()
        # No wake-up: waiters wait for a status, which a checkpoint does not change.
        await db.write_small(_save_step, run_id, fence, checkpoint, self.clock.now(), self.path)

    async def list_steps(self, run_id: str) -> builtins.list[StepCheckpoint]:
        db = await self._db()
        rows = await db.run(
            fetchall,
            "SELECT data FROM stem_workflow_steps WHERE run_id = ?"
            " ORDER BY position, completed_at, seq",
            (run_id,),
        )
        return [decode(_step_decoder, data, "a step checkpoint", self.path) for (data,) in rows]

    async def suspend(
        self,
        run_id: str,
        fence: int,
        *,
        wake_at: float | None,
        resume_at: float | None = None,
        topic: str | None = None,
        deadline: float | None = None,
    ) -> Resume | None:
        db = await self._db()
        taken = await db.write_small(
            _suspend,
            run_id,
            fence,
            wake_at,
            resume_at,
            topic,
            deadline,
            self.clock.now(),
            self.path,
        )
        if taken is None:
            self._changed(db, [run_id])
        return taken

    async def finish_run(
        self,
        run_id: str,
        fence: int,
        status: RunStatus,
        *,
        result: Any = None,
        error: TaskError | None = None,
    ) -> None:
        if status not in (RunStatus.COMPLETED, RunStatus.FAILED):
            raise ValueError(f"finish_run takes completed or failed, not {status}")
        db = await self._db()
        await db.write_small(
            _finish_run, run_id, fence, status, result, error, self.clock.now(), self.path
        )
        self._changed(db, [run_id])

    # -- events ----------------------------------------------------------------------------

    async def emit(self, topic: str, payload: Any) -> builtins.list[str]:
        data = to_json(payload)  # a payload that cannot be stored fails first
        db = await self._db()
        resolved = await db.write(_emit, topic, data, self.clock.now(), self.path)
        self._changed(db, resolved)
        return resolved

    async def send_event(self, run_id: str, topic: str, payload: Any) -> bool:
        data = to_json(payload)
        db = await self._db()
        known, resolved = await db.write_small(
            _send_event, run_id, topic, data, self.clock.now(), self.path
        )
        if resolved:
            self._changed(db, [run_id])
        return known

    async def list_watchers(self, topic: str | None = None) -> builtins.list[Watcher]:
        db = await self._db()
        columns = "SELECT run_id, topic, deadline, created_at FROM stem_workflow_watchers"
        if topic is None:
            rows = await db.run(fetchall, columns + " ORDER BY created_at, run_id", ())
        else:
            rows = await db.run(
                fetchall, columns + " WHERE topic = ? ORDER BY created_at, run_id", (topic,)
            )
        return [
            Watcher(run_id=run_id, topic=on, deadline=deadline, created_at=created_at)
            for run_id, on, deadline, created_at in rows
        ]

    # -- dispatch --------------------------------------------------------------------------

    async def due_runs(
        self, *, limit: int = 100, redispatch_after: float = 30.0
    ) -> builtins.list[str]:
        db = await self._db()
        handed = await db.write(
            _due_runs, max(limit, 0), redispatch_after, self.clock.now(), self.path
        )
        self._changed(db, handed)
        return handed

    async def next_wake(self) -> float | None:
        db = await self._db()
        rows = await db.peek(fetchall, NEXT_WAKE, ())
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Return soon after the run changes (in any process), or at ``timeout``.

        Changes made in this process wake the waiter at once; those of other processes
        by datagram, or are seen within ``wake_interval`` by reading the row's version.
        """
        deadline = self.clock.monotonic() + timeout
        db = await self._db()
        notifier = db.signals.status(_wake_key(run_id))
        known, baseline = self._baselines.take(run_id)

        async def probe() -> int | None:
            rows = await db.peek(
                fetchall, "SELECT version FROM stem_workflow_runs WHERE id = ?", (run_id,)
            )
            return int(rows[0][0]) if rows else None

        current = await probe()
        if known and current != baseline:
            return  # changed since the caller last read it
        if not known:
            # Not right after this task's own get_run: a change made just before may be
            # missed, so wait no longer than a poll interval before reading again.
            deadline = min(deadline, self.clock.monotonic() + self.poll_interval)

        async def changed() -> bool:
            return await probe() != current

        await wait_for_change(
            clock=self.clock,
            deadline=deadline,
            notifier=notifier,
            changed=changed,
            pacer=Pacer(self._client.options.wake_interval),
        )

    # -- operators -------------------------------------------------------------------------

    async def cancel_run(self, run_id: str, reason: str) -> bool:
        db = await self._db()
        cancelled = await db.write(_cancel_run, run_id, reason, self.clock.now(), self.path)
        if cancelled:
            self._changed(db, [run_id])
        return cancelled

    async def rewind(self, run_id: str, step: str) -> bool:
        db = await self._db()
        rewound = await db.write(_rewind, run_id, step, self.clock.now(), self.path)
        if rewound:
            self._changed(db, [run_id])
        return rewound

    async def aclose(self) -> None:
        await self._client.aclose()


# -- transactions (each runs inside one write transaction; it may be run twice, see
# Database.write, so it changes nothing but the database) -----------------------------------


def _load(conn: sqlite3.Connection, run_id: str, path: str) -> WorkflowRun | None:
    row = conn.execute("SELECT data FROM stem_workflow_runs WHERE id = ?", (run_id,)).fetchone()
    if row is None:
        return None
    run: WorkflowRun = decode(_run_decoder, row[0], "a workflow run", path)
    return run


def _store(conn: sqlite3.Connection, run: WorkflowRun) -> None:
    """Write a changed run back (its id, workflow, created_at and parent never change)."""
    conn.execute(
        "UPDATE stem_workflow_runs SET status = ?, wake_at = ?, lease_expires_at = ?,"
        " version = version + 1, data = ? WHERE id = ?",
        (str(run.status), run.wake_at, run.lease_expires_at, to_json(run), run.id),
    )


def _fenced(conn: sqlite3.Connection, run_id: str, fence: int, path: str) -> WorkflowRun:
    run = _load(conn, run_id, path)
    if run is None or run.status is not RunStatus.RUNNING or run.fence != fence:
        raise LeaseLostError(f"workflow run {run_id!r} is no longer held at fence {fence}")
    return run


def _leased(run: WorkflowRun, now: float) -> bool:
    return (
        run.status is RunStatus.RUNNING
        and run.lease_expires_at is not None
        and run.lease_expires_at > now
    )


def _drop_watcher(conn: sqlite3.Connection, run_id: str) -> None:
    conn.execute("DELETE FROM stem_workflow_watchers WHERE run_id = ?", (run_id,))


def _resolve(conn: sqlite3.Connection, run: WorkflowRun, resume: Resume, now: float) -> None:
    """A waiting run gets its event: pending, due now, its watcher gone."""
    _drop_watcher(conn, run.id)
    run.status = RunStatus.PENDING
    run.resume = resume
    run.wait_topic = run.wait_deadline = run.suspended_at = None
    run.wake_at = now
    run.updated_at = now
    _store(conn, run)


def _wake(conn: sqlite3.Connection, run: WorkflowRun) -> None:
    """A suspended run whose wake time came: pending, saying why it woke."""
    if run.wait_topic is not None:
        _drop_watcher(conn, run.id)
        run.resume = Resume(kind="timeout", topic=run.wait_topic)
    else:
        run.resume = Resume(kind="wake")
    run.status = RunStatus.PENDING
    run.wait_topic = run.wait_deadline = run.resume_at = None  # suspended_at stays


def _end(conn: sqlite3.Connection, run: WorkflowRun, now: float) -> None:
    """A run becomes final: no lease, wake time, wait or kept events."""
    run.lease_owner = run.lease_expires_at = run.wake_at = None
    run.wait_topic = run.wait_deadline = run.resume_at = run.resume = None
    run.finished_at = run.updated_at = now
    _drop_watcher(conn, run.id)
    conn.execute("DELETE FROM stem_workflow_mail WHERE run_id = ?", (run.id,))
    _store(conn, run)


def _create_run(conn: sqlite3.Connection, run: WorkflowRun, data: str) -> None:
    inserted = conn.execute(
        "INSERT INTO stem_workflow_runs"
        " (id, workflow, status, created_at, wake_at, lease_expires_at, parent_id, version, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, 1, ?) ON CONFLICT (id) DO NOTHING",
        (
            run.id,
            run.workflow,
            str(run.status),
            run.created_at,
            run.wake_at,
            run.lease_expires_at,
            run.parent_id,
            data,
        ),
    ).rowcount
    if inserted != 1:
        raise DuplicateRunError(f"a workflow run with id {run.id!r} exists already")


def _claim_run(
    conn: sqlite3.Connection, run_id: str, owner: str, ttl: float, now: float, path: str
) -> WorkflowRun | None:
    run = _load(conn, run_id, path)
    if run is None or run.status.is_final or _leased(run, now):
        return None
    if run.status is RunStatus.SUSPENDED:
        if run.wake_at is None or run.wake_at > now:
            return None
        _wake(conn, run)
    run.status = RunStatus.RUNNING
    run.lease_owner, run.lease_expires_at = owner, now + ttl
    run.fence += 1
    run.wake_at = now + ttl
    run.updated_at = now
    _store(conn, run)
    return run


def _renew_run(
    conn: sqlite3.Connection, run_id: str, fence: int, ttl: float, now: float, path: str
) -> bool:
    try:
        run = _fenced(conn, run_id, fence, path)
    except LeaseLostError:
        return False
    run.lease_expires_at = run.wake_at = now + ttl
    _store(conn, run)
    return True


def _release_run(conn: sqlite3.Connection, run_id: str, fence: int, now: float, path: str) -> bool:
    try:
        run = _fenced(conn, run_id, fence, path)
    except LeaseLostError:
        return False
    run.status = RunStatus.PENDING
    run.lease_owner = run.lease_expires_at = None
    run.wake_at = run.updated_at = now
    _store(conn, run)
    return True


def _save_step(
    conn: sqlite3.Connection,
    run_id: str,
    fence: int,
    checkpoint: StepCheckpoint,
    now: float,
    path: str,
) -> None:
    run = _fenced(conn, run_id, fence, path)
    data = to_json(checkpoint)  # after the fence check, as the reference store does
    conn.execute(
        "INSERT INTO stem_workflow_steps (run_id, name, position, completed_at, data)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, name) DO UPDATE"
        " SET position = excluded.position, completed_at = excluded.completed_at,"
        " data = excluded.data",
        (run_id, checkpoint.name, checkpoint.position, checkpoint.completed_at, data),
    )
    run.cursor = max(run.cursor, checkpoint.position + 1)  # out-of-order saves never go back
    run.resume = None
    run.updated_at = now
    _store(conn, run)


def _suspend(
    conn: sqlite3.Connection,
    run_id: str,
    fence: int,
    wake_at: float | None,
    resume_at: float | None,
    topic: str | None,
    deadline: float | None,
    now: float,
    path: str,
) -> Resume | None:
    run = _fenced(conn, run_id, fence, path)
    if topic is not None:
        kept = conn.execute(
            "SELECT seq, payload FROM stem_workflow_mail WHERE run_id = ? AND topic = ?"
            " ORDER BY seq LIMIT 1",
            (run_id, topic),
        ).fetchone()
        if kept is not None:
            conn.execute("DELETE FROM stem_workflow_mail WHERE seq = ?", (kept[0],))
            payload = decode(_payload_decoder, kept[1], "a kept event", path)
            # Kept as the run's resume until its next checkpoint: a crash loses nothing.
            run.resume = Resume(kind="event", topic=topic, payload=payload)
            run.updated_at = now
            _store(conn, run)
            return run.resume
        conn.execute(
            "INSERT INTO stem_workflow_watchers (run_id, topic, deadline, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET topic = excluded.topic,"
            " deadline = excluded.deadline, created_at = excluded.created_at",
            (run_id, topic, deadline, now),
        )
    run.status = RunStatus.SUSPENDED
    run.wake_at, run.resume_at = wake_at, resume_at
    run.wait_topic, run.wait_deadline = topic, deadline
    run.lease_owner = run.lease_expires_at = None
    run.suspended_at = run.updated_at = now
    _store(conn, run)
    return None


def _finish_run(
    conn: sqlite3.Connection,
    run_id: str,
    fence: int,
    status: RunStatus,
    result: Any,
    error: TaskError | None,
    now: float,
    path: str,
) -> None:
    run = _fenced(conn, run_id, fence, path)
    run.status, run.result, run.error = status, result, error
    _end(conn, run, now)  # a result that cannot be stored fails here, and rolls back


def _emit(conn: sqlite3.Connection, topic: str, data: str, now: float, path: str) -> list[str]:
    payload = msgspec.Raw(data.encode())  # stored as given, in each run
    resolved = []
    watchers = conn.execute(
        "SELECT run_id FROM stem_workflow_watchers WHERE topic = ? ORDER BY created_at, seq",
        (topic,),
    ).fetchall()
    for (run_id,) in watchers:
        run = _load(conn, run_id, path)
        if run is None:
            continue
        _resolve(conn, run, Resume(kind="event", topic=topic, payload=payload), now)
        resolved.append(run_id)
    return resolved


def _send_event(
    conn: sqlite3.Connection, run_id: str, topic: str, data: str, now: float, path: str
) -> tuple[bool, bool]:
    """(whether the run takes events, whether this one resolved its wait)."""
    run = _load(conn, run_id, path)
    if run is None or run.status.is_final:
        return False, False
    if run.status is RunStatus.SUSPENDED and run.wait_topic == topic:
        resume = Resume(kind="event", topic=topic, payload=msgspec.Raw(data.encode()))
        _resolve(conn, run, resume, now)
        return True, True
    conn.execute(
        "INSERT INTO stem_workflow_mail (run_id, topic, payload) VALUES (?, ?, ?)",
        (run_id, topic, data),
    )
    return True, False


def _due_runs(
    conn: sqlite3.Connection, limit: int, redispatch_after: float, now: float, path: str
) -> list[str]:
    rows = conn.execute(DUE_RUNS, {"now": now, "limit": limit}).fetchall()
    handed = []
    for (data,) in rows:
        run: WorkflowRun = decode(_run_decoder, data, "a workflow run", path)
        if run.status is RunStatus.SUSPENDED:
            _wake(conn, run)
        run.wake_at = now + redispatch_after
        _store(conn, run)
        handed.append(run.id)
    return handed


def _cancel_run(conn: sqlite3.Connection, run_id: str, reason: str, now: float, path: str) -> bool:
    run = _load(conn, run_id, path)
    if run is None or run.status.is_final:
        return False
    run.status = RunStatus.CANCELLED
    run.error = TaskError(type="Cancelled", message=reason)
    run.fence += 1
    _end(conn, run, now)
    return True


def _rewind(conn: sqlite3.Connection, run_id: str, step: str, now: float, path: str) -> bool:
    run = _load(conn, run_id, path)
    if run is None:
        return False
    # The step's checkpoint, or its versions (``step#0``...): they share one position.
    positions = [
        position
        for name, position in conn.execute(
            "SELECT name, position FROM stem_workflow_steps WHERE run_id = ?", (run_id,)
        )
        if name == step or name.rpartition("#")[0] == step
    ]
    if not positions:
        return False
    position = min(positions)
    conn.execute(
        "DELETE FROM stem_workflow_steps WHERE run_id = ? AND (name = ? OR position > ?)",
        (run_id, step, position),
    )
    _drop_watcher(conn, run_id)
    run.status = RunStatus.PENDING
    run.cursor = position
    run.fence += 1
    run.result = run.error = run.resume = None
    run.lease_owner = run.lease_expires_at = None
    run.wait_topic = run.wait_deadline = run.resume_at = None
    run.suspended_at = run.finished_at = None
    run.wake_at = run.updated_at = now
    _store(conn, run)
    return True
