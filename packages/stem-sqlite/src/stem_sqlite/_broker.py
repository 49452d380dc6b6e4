"""The SQLite broker: a lease column in one table, one short write transaction per batch."""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Any

from stem import Clock
from stem.contracts import (
    Broker,
    BrokerCapabilities,
    DeadLetter,
    Delivery,
    Message,
    QueueStats,
    ResultBackend,
    TaskStatus,
)

from ._backend import SqliteResultBackend, store_statuses
from ._connection import Client, FileStore
from ._support import to_json
from ._url import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_WAKE_INTERVAL,
    SqliteOptions,
    check_seconds,
    resolve_path,
)
from ._wake import wait_for_change

__all__ = ["SqliteBroker"]

# Row states. Literals in the SQL below (not parameters) so the partial indexes apply.
_READY, _DELAYED, _LEASED = 0, 1, 2

_INSERT = (
    "INSERT INTO stem_messages (queue, id, body, priority, eta, due, state)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_BUMP = (
    "INSERT INTO stem_queue_signals (queue, version) VALUES (?, 1)"
    " ON CONFLICT (queue) DO UPDATE SET version = version + 1"
)
_SIGNAL = (
    "SELECT coalesce(sum(version), 0) FROM stem_queue_signals"
    " WHERE queue IN (SELECT value FROM json_each(?))"
)
_PROMOTE_DELAYED = "UPDATE stem_messages SET state = 0 WHERE queue = ? AND state = 1 AND due <= ?"
_PROMOTE_EXPIRED = (
    "UPDATE stem_messages SET state = 0, receipt = NULL, lease_until = NULL"
    " WHERE queue = ? AND state = 2 AND lease_until <= ?"
)
# The subquery walks stem_messages_ready in hand-out order and stops at LIMIT.
# RETURNING does not promise an order, so the rows are sorted again in Python.
_LEASE = (
    "UPDATE stem_messages SET state = 2, deliveries = deliveries + 1, lease_until = :until,"
    " receipt = seq || '.' || (deliveries + 1) || '.' || :nonce"
    " WHERE seq IN (SELECT seq FROM stem_messages WHERE queue = :queue AND state = 0"
    " ORDER BY priority DESC, due, seq LIMIT :limit)"
    " RETURNING seq, id, body, priority, eta, due, deliveries, receipt"
)
_DEAD_COLUMNS = "queue, id, body, priority, eta, reason, error, traceback, deliveries, dead_at"


def _seq(delivery: Delivery) -> int | None:
    """The row a receipt points at; None for a receipt this broker never wrote."""
    head, _, _ = delivery.receipt.partition(".")
    try:
        return int(head)
    except ValueError:
        return None


def _json_list(values: Sequence[str]) -> str:
    return to_json(list(values))


def _dead_letter(row: Any) -> DeadLetter:
    queue, mid, body, priority, eta, reason, error, traceback, deliveries, dead_at = row
    return DeadLetter(
        message=Message(id=mid, queue=queue, body=bytes(body), priority=priority, eta=eta),
        reason=reason,
        error=error,
        traceback=traceback,
        deliveries=deliveries,
        dead_at=dead_at,
    )


class SqliteBroker(FileStore, Broker):
    """Messages in a SQLite file, shared by the processes of one machine.

    Args:
        path: the database file (created, with its directory, on first use).
        clock: every time stored or compared is read from it.
        poll_interval: longest idle wait of :meth:`consume` between two reads of its queues.
        busy_timeout: how long a write waits for another process's lock before failing.
        wake_interval: longest gap between two checks for messages published by other processes.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.

    The constructor does not touch the file; it is opened, created and migrated on first use.
    """

    capabilities = BrokerCapabilities(notify=True)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
        share_connection: bool = True,
    ) -> None:
        super().__init__(
            clock=clock,
            poll_interval=check_seconds("poll_interval", poll_interval, allow_zero=False),
        )
        self._client = Client(
            SqliteOptions(
                path=resolve_path(path),
                poll_interval=self.poll_interval,
                busy_timeout=check_seconds("busy_timeout", busy_timeout),
                wake_interval=check_seconds("wake_interval", wake_interval, allow_zero=False),
            ),
            share=share_connection,
        )
        # Per set of queues, the version of their signal counters the last time a reserve
        # drained them (found fewer messages than it asked for); see wait_for_messages.
        self._drained: dict[tuple[str, ...], int] = {}

    # -- publishing -------------------------------------------------------------------

    async def publish_many(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        now = self.clock.now()
        rows = []
        for m in messages:
            due = m.eta if m.eta is not None else now
            rows.append(
                (m.queue, m.id, m.body, m.priority, m.eta, due, _DELAYED if due > now else _READY)
            )
        queues = [(q,) for q in dict.fromkeys(m.queue for m in messages)]
        db = await self._db()
        await db.write(_publish, rows, queues)
        db.signals.queues_changed()

    # -- consuming ----------------------------------------------------------------------

    async def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        now = self.clock.now()
        until = now + lease
        db = await self._db()
        rows, signal = await db.write(
            _reserve, list(queues), limit, now, until, secrets.token_hex(6)
        )
        if signal is not None:
            key = tuple(queues)
            self._drained[key] = max(signal, self._drained.get(key, signal))
        return [
            Delivery(
                message=Message(id=mid, queue=queue, body=bytes(body), priority=priority, eta=eta),
                receipt=receipt,
                deliveries=deliveries,
                lease_expires_at=until,
            )
            for queue, mid, body, priority, eta, deliveries, receipt in rows
        ]

    async def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        """Return soon after a message is published to ``queues``, or at ``timeout``.

        Publishes in this process wake the waiter at once; those of other processes are
        seen within ``wake_interval`` by reading a per-queue version counter.
        """
        deadline = self.clock.monotonic() + timeout
        if timeout <= 0:
            await self.clock.sleep(0)
            return
        key = tuple(queues)
        db = await self._db()
        current = await db.run(_signal, _json_list(key))
        # Anything published since the queues were last drained is worth a read at once.
        # The drain may have been another consumer's on this broker: what was published
        # before it was taken by that read, so the newest drain is the right baseline.
        # (A per-task baseline would be lost: workers wait in a task of its own.) Noted as
        # seen, so a caller that waits again without reading does not return at once again.
        if current != self._drained.get(key, current):
            self._drained[key] = current
            return

        async def probe() -> int:
            return await db.run(_signal, _json_list(key))

        await wait_for_change(
            clock=self.clock,
            deadline=deadline,
            notifier=db.signals.queues(),
            probe=probe,
            baseline=current,
            interval=self._client.options.wake_interval,
        )

    async def next_due(self, queues: Sequence[str]) -> float | None:
        db = await self._db()
        return await db.run(_next_due, list(queues))

    # -- settling -----------------------------------------------------------------------

    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        pairs = [(seq, d.receipt) for d in deliveries if (seq := _seq(d)) is not None]
        if not pairs:
            return 0
        db = await self._db()
        if len(pairs) == 1:
            return await db.run(_ack, pairs)
        return await db.write(_ack, pairs)

    async def settle(
        self,
        deliveries: Sequence[Delivery],
        statuses: Sequence[tuple[TaskStatus, float | None]],
        backend: ResultBackend,
    ) -> None:
        """Store the statuses and ack the deliveries in one transaction when the backend
        shares this broker's connection (the usual case: one file); else one after the other."""
        db = await self._db()
        if not (isinstance(backend, SqliteResultBackend) and statuses and deliveries) or (
            await backend._db() is not db
        ):
            await super().settle(deliveries, statuses, backend)
            return
        rows, now = backend.status_rows(statuses)
        pairs = [(seq, d.receipt) for d in deliveries if (seq := _seq(d)) is not None]
        await db.write(_store_and_ack, rows, now, backend._sweep_statuses.due(), pairs)
        db.signals.statuses_changed([row[0] for row in rows])

    async def nack(
        self, delivery: Delivery, *, requeue: bool = True, delay: float | None = None
    ) -> bool:
        seq = _seq(delivery)
        if seq is None:
            return False
        db = await self._db()
        if not requeue:
            return await db.run(_ack, [(seq, delivery.receipt)]) == 1
        now = self.clock.now()
        due = now + delay if delay else None
        done = await db.write(_requeue, seq, delivery.receipt, due, now)
        if done:
            db.signals.queues_changed()
        return done

    async def extend_lease(self, delivery: Delivery, seconds: float) -> bool:
        seq = _seq(delivery)
        if seq is None:
            return False
        db = await self._db()
        return await db.run(_extend, seq, delivery.receipt, self.clock.now() + seconds)

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        seq = _seq(delivery)
        if seq is None:
            return False
        db = await self._db()
        return await db.write(
            _bury, seq, delivery.receipt, reason, error, traceback, self.clock.now()
        )

    # -- dead letters -------------------------------------------------------------------

    async def list_dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        db = await self._db()
        rows = await db.run(
            _fetchall,
            f"SELECT {_DEAD_COLUMNS} FROM stem_dead_letters WHERE queue = ?"
            " ORDER BY seq LIMIT ? OFFSET ?",
            (queue, limit, offset),
        )
        return [_dead_letter(row) for row in rows]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        db = await self._db()
        rows = await db.run(
            _fetchall,
            f"SELECT {_DEAD_COLUMNS} FROM stem_dead_letters"
            " WHERE queue = ? AND id = ? ORDER BY seq LIMIT 1",
            (queue, message_id),
        )
        return _dead_letter(rows[0]) if rows else None

    async def replay_dead_letters(
        self, queue: str, message_ids: Sequence[str] | None = None, *, delay: float | None = None
    ) -> int:
        now = self.clock.now()
        eta = now + delay if delay else None
        ids = None if message_ids is None else _json_list(message_ids)
        db = await self._db()
        count = await db.write(_replay, queue, ids, eta, now)
        if count:
            db.signals.queues_changed()
        return count

    async def purge_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        ids = None if message_ids is None else _json_list(message_ids)
        db = await self._db()
        return await db.run(_purge_dead, queue, ids)

    # -- inspection ---------------------------------------------------------------------

    async def queue_stats(self, queue: str) -> QueueStats:
        db = await self._db()
        pending, delayed, inflight, dead = await db.run(_stats, queue, self.clock.now())
        return QueueStats(
            queue=queue, pending=pending, delayed=delayed, inflight=inflight, dead=dead
        )

    async def purge(self, queue: str) -> int:
        db = await self._db()
        return await db.write(_purge, queue, self.clock.now())

    async def aclose(self) -> None:
        await self._client.aclose()


# -- transactions (run on the connection's thread) --------------------------------------


def _fetchall(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _signal(conn: sqlite3.Connection, queues: str) -> int:
    return int(conn.execute(_SIGNAL, (queues,)).fetchone()[0])


def _publish(
    conn: sqlite3.Connection, rows: list[tuple[Any, ...]], queues: list[tuple[str]]
) -> None:
    conn.executemany(_INSERT, rows)
    conn.executemany(_BUMP, queues)


def _reserve(
    conn: sqlite3.Connection, queues: list[str], limit: int, now: float, until: float, nonce: str
) -> tuple[list[tuple[Any, ...]], int | None]:
    out: list[tuple[Any, ...]] = []
    for queue in queues:
        conn.execute(_PROMOTE_DELAYED, (queue, now))
        conn.execute(_PROMOTE_EXPIRED, (queue, now))
        rows = conn.execute(
            _LEASE, {"until": until, "nonce": nonce, "queue": queue, "limit": limit - len(out)}
        ).fetchall()
        rows.sort(key=lambda r: (-r[3], r[5], r[0]))
        out.extend(
            (queue, mid, body, prio, eta, deliveries, receipt)
            for _, mid, body, prio, eta, _, deliveries, receipt in rows
        )
        if len(out) >= limit:
            return out, None
    # The queues look drained: note their version in this same transaction, so a
    # wait that follows notices anything published after this read.
    return out, _signal(conn, _json_list(queues))


def _next_due(conn: sqlite3.Connection, queues: list[str]) -> float | None:
    times: list[float] = []
    for queue in queues:
        for sql in (
            "SELECT min(due) FROM stem_messages WHERE queue = ? AND state = 1",
            "SELECT min(lease_until) FROM stem_messages WHERE queue = ? AND state = 2",
        ):
            value = conn.execute(sql, (queue,)).fetchone()[0]
            if value is not None:
                times.append(value)
    return min(times, default=None)


def _store_and_ack(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    now: float,
    sweep: bool,
    pairs: list[tuple[int, str]],
) -> int:
    store_statuses(conn, rows, now, sweep)
    return _ack(conn, pairs)


def _ack(conn: sqlite3.Connection, pairs: list[tuple[int, str]]) -> int:
    return conn.executemany(
        "DELETE FROM stem_messages WHERE seq = ? AND receipt = ?", pairs
    ).rowcount


def _requeue(
    conn: sqlite3.Connection, seq: int, receipt: str, due: float | None, now: float
) -> bool:
    row = conn.execute(
        "UPDATE stem_messages SET receipt = NULL, lease_until = NULL, due = coalesce(:due, due),"
        " state = CASE WHEN coalesce(:due, due) > :now THEN 1 ELSE 0 END"
        " WHERE seq = :seq AND receipt = :receipt RETURNING queue",
        {"due": due, "now": now, "seq": seq, "receipt": receipt},
    ).fetchone()
    if row is None:
        return False
    conn.execute(_BUMP, (row[0],))
    return True


def _extend(conn: sqlite3.Connection, seq: int, receipt: str, until: float) -> bool:
    cursor = conn.execute(
        "UPDATE stem_messages SET lease_until = ? WHERE seq = ? AND receipt = ?",
        (until, seq, receipt),
    )
    return cursor.rowcount == 1


def _bury(
    conn: sqlite3.Connection,
    seq: int,
    receipt: str,
    reason: str,
    error: str | None,
    traceback: str | None,
    now: float,
) -> bool:
    row = conn.execute(
        "DELETE FROM stem_messages WHERE seq = ? AND receipt = ?"
        " RETURNING queue, id, body, priority, eta, deliveries",
        (seq, receipt),
    ).fetchone()
    if row is None:
        return False
    queue, mid, body, priority, eta, deliveries = row
    conn.execute(
        f"INSERT INTO stem_dead_letters ({_DEAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (queue, mid, body, priority, eta, reason, error, traceback, deliveries, now),
    )
    return True


_DEAD_CHOICE = "queue = :queue AND (:ids IS NULL OR id IN (SELECT value FROM json_each(:ids)))"


def _replay(
    conn: sqlite3.Connection, queue: str, ids: str | None, eta: float | None, now: float
) -> int:
    due = eta if eta is not None else now
    params = {
        "queue": queue,
        "ids": ids,
        "eta": eta,
        "due": due,
        "state": _DELAYED if due > now else _READY,
    }
    count = conn.execute(
        "INSERT INTO stem_messages (queue, id, body, priority, eta, due, state)"
        " SELECT queue, id, body, priority, :eta, :due, :state FROM stem_dead_letters"
        f" WHERE {_DEAD_CHOICE}"
        " ORDER BY seq",
        params,
    ).rowcount
    if count:
        conn.execute(
            f"DELETE FROM stem_dead_letters WHERE {_DEAD_CHOICE}", {"queue": queue, "ids": ids}
        )
        conn.execute(_BUMP, (queue,))
    return count


def _purge_dead(conn: sqlite3.Connection, queue: str, ids: str | None) -> int:
    return conn.execute(
        f"DELETE FROM stem_dead_letters WHERE {_DEAD_CHOICE}", {"queue": queue, "ids": ids}
    ).rowcount


def _stats(conn: sqlite3.Connection, queue: str, now: float) -> tuple[int, int, int, int]:
    row = conn.execute(
        "SELECT"
        " (SELECT count(*) FROM stem_messages WHERE queue = :q AND state = 0),"
        " (SELECT count(*) FROM stem_messages WHERE queue = :q AND state = 1 AND due <= :now),"
        " (SELECT count(*) FROM stem_messages WHERE queue = :q AND state = 1 AND due > :now),"
        " (SELECT count(*) FROM stem_messages"
        "  WHERE queue = :q AND state = 2 AND lease_until <= :now),"
        " (SELECT count(*) FROM stem_messages"
        "  WHERE queue = :q AND state = 2 AND lease_until > :now),"
        " (SELECT count(*) FROM stem_dead_letters WHERE queue = :q)",
        {"q": queue, "now": now},
    ).fetchone()
    ready, due, delayed, expired, leased, dead = row
    return ready + due + expired, delayed, leased, dead


def _purge(conn: sqlite3.Connection, queue: str, now: float) -> int:
    # A leased message whose lease ran out is ready again (queue_stats counts it as
    # pending), so it goes too; a message under a live lease stays with its consumer.
    ready = conn.execute(
        "DELETE FROM stem_messages WHERE queue = ? AND state = 0", (queue,)
    ).rowcount
    delayed = conn.execute(
        "DELETE FROM stem_messages WHERE queue = ? AND state = 1", (queue,)
    ).rowcount
    expired = conn.execute(
        "DELETE FROM stem_messages WHERE queue = ? AND state = 2 AND lease_until <= ?", (queue, now)
    ).rowcount
    return ready + delayed + expired
