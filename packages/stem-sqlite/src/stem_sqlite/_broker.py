"""The SQLite broker: a lease column in one table, one short write transaction per batch."""

from __future__ import annotations

import math
import os
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from stem import Clock
from stem.contracts import (
    Broker,
    BrokerCapabilities,
    DeadLetter,
    Delivery,
    LockStore,
    Message,
    QueueStats,
    ResultBackend,
    Subscription,
    TaskState,
    TaskStatus,
    UniqueClaim,
)

from ._backend import SqliteResultBackend, store_statuses, task_exists
from ._connection import Client, Database, FileStore
from ._stores import ACQUIRE_LOCK, SqliteLockStore
from ._support import sweep_expired, to_json
from ._url import (
    DEFAULT_BUSY_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SYNCHRONOUS,
    DEFAULT_WAKE_INTERVAL,
    SqliteOptions,
    check_seconds,
    check_synchronous,
    resolve_path,
)
from ._wake import Pacer, wait_for_change

__all__ = ["SqliteBroker"]

# Row states. Literals in the SQL below (not parameters) so the partial indexes apply.
_READY, _DELAYED, _LEASED = 0, 1, 2

#: Publishes and enqueues of at most this many messages are small writes: committed on
#: the event loop when that cannot block (see Database.write_small), saving a thread hop.
SMALL_BATCH = 8

_INSERT = (
    "INSERT INTO stem_messages (queue, id, body, priority, eta, due, state, status)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
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
        synchronous: ``"normal"`` (a commit survives a crash of any program using the file)
            or ``"full"`` (also a power loss, at an fsync per commit); of the stores sharing
            a connection, the strongest setting applies.
        share_connection: False to open a connection of its own instead of sharing the one
            of every store of this file in this event loop.

    The constructor does not touch the file; it is opened, created and migrated on first use.
    """

    capabilities = BrokerCapabilities(notify=True, broadcast=True)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        wake_interval: float = DEFAULT_WAKE_INTERVAL,
        synchronous: str = DEFAULT_SYNCHRONOUS,
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
                synchronous=check_synchronous(synchronous),
            ),
            share=share_connection,
        )
        # Per set of queues, the mark (see _mark) taken before the last reserve that
        # drained them (found fewer messages than it asked for); see wait_for_messages.
        self._drained: dict[tuple[str, ...], tuple[int, int]] = {}
        # Sets of queues whose wait just ended: their next reserve finds the consumer idle.
        self._woken: dict[tuple[str, ...], bool] = {}
        # Per set of queues, how soon a waiting consumer checks again for other processes'
        # publishes: soon after its last work, less often the longer it stays idle.
        self._pacers: dict[tuple[str, ...], Pacer] = {}

    # -- publishing -------------------------------------------------------------------

    def _rows(
        self, messages: Sequence[Message], now: float, statuses: Sequence[str | None] = ()
    ) -> list[tuple[Any, ...]]:
        """Message rows; ``statuses``, if given, the `queued` status each row carries."""
        rows = []
        for index, m in enumerate(messages):
            due = m.eta if m.eta is not None else now
            state = _DELAYED if due > now else _READY
            status = statuses[index] if statuses else None
            rows.append((m.queue, m.id, m.body, m.priority, m.eta, due, state, status))
        return rows

    async def publish_many(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        db = await self._db()
        write = db.write_small if len(messages) <= SMALL_BATCH else db.write
        await write(_publish, self._rows(messages, self.clock.now()))
        db.signals.queues_changed(_queues_of(messages))

    async def enqueue(
        self,
        messages: Sequence[Message],
        statuses: Sequence[tuple[TaskStatus, float | None]],
        backend: ResultBackend,
        *,
        claims: Sequence[UniqueClaim | None] = (),
        locks: LockStore | None = None,
    ) -> list[str | None]:
        """Claims, statuses and messages in one transaction, when they share this file."""
        db = await self._db()
        shared = isinstance(backend, SqliteResultBackend) and await backend._db() is db
        if any(claims):
            shared = shared and isinstance(locks, SqliteLockStore) and await locks._db() is db
        if not shared or not messages:
            return await super().enqueue(messages, statuses, backend, claims=claims, locks=locks)
        assert isinstance(backend, SqliteResultBackend)
        status_rows, now = backend.status_rows(statuses) if statuses else ([], self.clock.now())
        # Each message's own `queued` status rides in its row (see migration 0004):
        # one row written instead of two, when the statuses are exactly that.
        inline = len(status_rows) == len(messages) and all(
            row[0] == m.id and row[1] == TaskState.QUEUED and row[4] is None
            for row, m in zip(status_rows, messages, strict=True)
        )
        wanted = [
            (index, claim.key, messages[index].id, now + claim.ttl)
            for index, claim in enumerate(claims)
            if claim is not None
        ]
        # Unique-task claims pile up in stem_locks: sweep the expired ones now and then.
        sweeper = locks._sweeper if wanted and isinstance(locks, SqliteLockStore) else None
        write = db.write_small if len(messages) <= SMALL_BATCH else db.write
        existing, swept = await write(
            _enqueue,
            self._rows(messages, now, [row[5] for row in status_rows] if inline else ()),
            [] if inline else status_rows,
            wanted,
            now,
            sweeper is not None and sweeper.due(),
        )
        if sweeper is not None:
            sweeper.swept(swept)
        db.signals.queues_changed(_queues_of(messages))
        if status_rows:
            db.signals.statuses_changed([row[0] for row in status_rows])
        return existing

    # -- consuming ----------------------------------------------------------------------

    async def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        now = self.clock.now()
        until = now + lease
        db = await self._db()
        mark = await self._mark(db, tuple(queues))
        key = tuple(queues)
        # On the database thread, even when small: a worker's loop runs its tasks
        # meanwhile (measured: reserves on the loop drained slower). But the first read
        # after a wait for these queues finds the worker idle: on the loop if it cannot
        # block, a thread hop sooner for the task that woke it.
        write = db.write_small if self._woken.pop(key, False) else db.write
        rows = await write(_reserve, list(queues), limit, now, until, secrets.token_hex(6))
        if len(rows) < limit:
            self._drained[key] = mark
        if rows:
            self._pacer(key).active()
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

        Publishes in this process wake the waiter at once, and those of other processes
        through the file's wake-up sockets (see ``_bus``); failing those, they are seen by
        reading the file's data version, within a millisecond or two after recent work
        and within ``wake_interval`` once idle. Any other process's commit changes that
        version, so a waiter may return with nothing published: the caller reads again.
        """
        deadline = self.clock.monotonic() + timeout
        if timeout <= 0:
            await self.clock.sleep(0)
            return
        key = tuple(queues)
        db = await self._db()
        current = await self._mark(db, key)
        # Anything that happened since the mark taken before the last drain is worth a
        # read at once. The drain may have been another consumer's on this broker: what
        # was published before it was taken by that read, so the newest drain is the
        # right baseline. (A per-task baseline would be lost: workers wait in a task of
        # its own.) Noted as seen, so a caller that waits again without reading does not
        # return at once again.
        drained = self._drained.get(key, current)
        if current != drained:
            self._drained[key] = current
            # A wake-up for these queues, or a commit by another connection (this
            # process's own reserves and acks among them) that left a message ready.
            if current[0] != drained[0] or await db.peek(_any_ready, list(key)):
                self._woken[key] = True
                return
        seen = current[1]

        async def changed() -> bool:
            nonlocal seen
            if db.signals.queue_wakes(key) != current[0]:
                return True
            # Another connection committed something: worth a read only if it left a
            # message ready in these queues (one probe of the ready index).
            version = await db.peek(_data_version)
            if version == seen:
                return False
            seen = version
            return await db.peek(_any_ready, list(key))

        await wait_for_change(
            clock=self.clock,
            deadline=deadline,
            notifier=db.signals.queues(),
            changed=changed,
            pacer=self._pacer(key),
        )
        self._woken[key] = True

    async def _mark(self, db: Database, key: tuple[str, ...]) -> tuple[int, int]:
        """What a wait compares with: the wake-ups for these queues seen by this loop
        (publishes of this process, datagrams of others), and the data version (every
        commit of another connection)."""
        db.signals.queues()  # listening from now on, so no datagram sent after this is lost
        return db.signals.queue_wakes(key), await db.peek(_data_version)

    def _pacer(self, key: tuple[str, ...]) -> Pacer:
        pacer = self._pacers.get(key)
        if pacer is None:
            pacer = self._pacers[key] = Pacer(self._client.options.wake_interval)
        return pacer

    async def next_due(self, queues: Sequence[str]) -> float | None:
        db = await self._db()
        return await db.peek(_next_due, list(queues))

    # -- settling -----------------------------------------------------------------------

    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        pairs = [(seq, d.receipt) for d in deliveries if (seq := _seq(d)) is not None]
        if not pairs:
            return 0
        db = await self._db()
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
        # A small settle (a worker that is not busy: one result, a few) is committed on
        # the loop when it cannot block, a thread hop sooner for whoever awaits it.
        write = db.write_small if len(rows) + len(pairs) <= SMALL_BATCH else db.write
        swept = await write(_store_and_ack, rows, now, backend._sweep_statuses.due(), pairs)
        backend._sweep_statuses.swept(swept)
        db.signals.statuses_changed([row[0] for row in rows])

    async def nack(
        self, delivery: Delivery, *, requeue: bool = True, delay: float | None = None
    ) -> bool:
        seq = _seq(delivery)
        if seq is None:
            return False
        db = await self._db()
        if not requeue:
            return await db.write(_ack, [(seq, delivery.receipt)]) == 1
        now = self.clock.now()
        due = now + delay if delay else None
        done = await db.write(_requeue, seq, delivery.receipt, due, now)
        if done:
            db.signals.queues_changed([delivery.message.queue])
        return done

    async def extend_lease(self, delivery: Delivery, seconds: float) -> bool:
        seq = _seq(delivery)
        if seq is None:
            return False
        db = await self._db()
        return await db.write(_extend, seq, delivery.receipt, self.clock.now() + seconds)

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
        self,
        queue: str,
        message_ids: Sequence[str] | None = None,
        *,
        delay: float | None = None,
        bodies: Mapping[str, bytes] | None = None,
    ) -> int:
        now = self.clock.now()
        eta = now + delay if delay else None
        ids = None if message_ids is None else _json_list(message_ids)
        db = await self._db()
        count = await db.write(_replay, queue, ids, eta, now, dict(bodies or {}))
        if count:
            db.signals.queues_changed([queue])
        return count

    async def purge_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        ids = None if message_ids is None else _json_list(message_ids)
        db = await self._db()
        return await db.write(_purge_dead, queue, ids)

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

    # -- broadcast subscriptions ----------------------------------------------------------

    async def subscribe(self, queue: str, subscriber: str, ttl: float) -> None:
        db = await self._db()
        await db.write(_subscribe, queue, subscriber, self.clock.now() + ttl)

    async def subscriptions(self, queue: str) -> list[Subscription]:
        db = await self._db()
        rows = await db.run(
            _fetchall,
            "SELECT subscriber, expires_at FROM stem_subscriptions WHERE queue = ?"
            " ORDER BY subscriber",
            (queue,),
        )
        now = self.clock.now()
        return [Subscription(subscriber=name, expires_in=end - now) for name, end in rows]

    async def unsubscribe(
        self, queue: str, subscriber: str, *, ended_for: float | None = None
    ) -> bool:
        ended_by = math.inf if ended_for is None else self.clock.now() - ended_for
        db = await self._db()
        return await db.write(_unsubscribe, queue, subscriber, ended_by)

    async def aclose(self) -> None:
        await self._client.aclose()


# -- transactions (run on the connection's thread) --------------------------------------


def _fetchall(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[Any]:
    return conn.execute(sql, params).fetchall()


def _subscribe(conn: sqlite3.Connection, queue: str, subscriber: str, until: float) -> None:
    conn.execute(
        "INSERT INTO stem_subscriptions (queue, subscriber, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (queue, subscriber) DO UPDATE SET expires_at = excluded.expires_at",
        (queue, subscriber, until),
    )


def _unsubscribe(conn: sqlite3.Connection, queue: str, subscriber: str, ended_by: float) -> bool:
    cursor = conn.execute(
        "DELETE FROM stem_subscriptions WHERE queue = ? AND subscriber = ? AND expires_at <= ?",
        (queue, subscriber, ended_by),
    )
    return cursor.rowcount > 0


def _queues_of(messages: Sequence[Message]) -> list[str]:
    return list(dict.fromkeys(m.queue for m in messages))


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def _any_ready(conn: sqlite3.Connection, queues: list[str]) -> bool:
    return any(
        conn.execute(
            "SELECT 1 FROM stem_messages WHERE queue = ? AND state = 0 LIMIT 1", (q,)
        ).fetchone()
        is not None
        for q in queues
    )


def _publish(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.executemany(_INSERT, rows)


def _enqueue(
    conn: sqlite3.Connection,
    rows: list[tuple[Any, ...]],
    status_rows: list[tuple[Any, ...]],
    claims: list[tuple[int, str, str, float]],
    now: float,
    sweep_locks: bool,
) -> tuple[list[str | None], int]:
    """Claims, then statuses, then messages; returns, per message, the id of the task
    holding its claim (None: published), and how many expired locks were swept."""
    existing: list[str | None] = [None] * len(rows)
    claimed: set[str] = set()  # owners of this batch: live, though their status comes later
    for index, key, owner, until in claims:
        params = {"key": key, "owner": owner, "until": until, "now": now}
        if conn.execute(ACQUIRE_LOCK, params).rowcount == 1:
            claimed.add(owner)
            continue
        (holder,) = conn.execute("SELECT owner FROM stem_locks WHERE key = ?", (key,)).fetchone()
        alive = holder in claimed or task_exists(conn, holder, now)
        if alive:
            existing[index] = holder
        else:
            claimed.add(owner)
            # The holder's task does not exist (its producer died before publishing,
            # or its record expired): the claim is not honoured.
            conn.execute(
                "UPDATE stem_locks SET owner = ?, expires_at = ? WHERE key = ?", (owner, until, key)
            )
    keep = [i for i, holder in enumerate(existing) if holder is None]
    published = {rows[i][1] for i in keep}
    if status_rows:
        store_statuses(conn, [r for r in status_rows if r[0] in published], now, False)
    else:
        # The statuses ride in the message rows: an older status of a reused task id
        # would shadow them (a stored row wins), so it goes.
        conn.executemany("DELETE FROM stem_task_statuses WHERE id = ?", [(i,) for i in published])
    _publish(conn, [rows[i] for i in keep])
    return existing, sweep_expired(conn, "stem_locks", "key", now) if sweep_locks else 0


# A row that another program wrote with a time Stem cannot read (TEXT or a BLOB, or a
# lease without an end) would never become ready, or stay leased for good, and its
# time would reach next_due: make it ready, so the lease below hands it out and
# row_problems judges it. The literal '' selects the TEXT and BLOB values (they sort
# after every number) through the partial indexes, so this costs three index probes.
_PROMOTE_UNREADABLE = (
    "UPDATE stem_messages SET state = 0, receipt = NULL, lease_until = NULL WHERE seq IN ("
    "SELECT seq FROM stem_messages WHERE queue = :queue AND state = 1 AND due >= ''"
    " UNION ALL SELECT seq FROM stem_messages"
    " WHERE queue = :queue AND state = 2 AND lease_until >= ''"
    " UNION ALL SELECT seq FROM stem_messages"
    " WHERE queue = :queue AND state = 2 AND lease_until IS NULL)"
)
_MALFORMED_ADVICE = (
    "Stem writes each column as: id TEXT, body a BLOB (an encoded message), priority an "
    "INTEGER, eta and due REAL seconds since the epoch. Publish through Stem; or fix the "
    "body of this dead letter and replay it, or purge it"
)


def _kind(value: object) -> str:
    """An SQLite value, described for a person fixing the row."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"a BLOB of {len(value)} bytes"
    if isinstance(value, str):
        if not _is_utf8(value):
            return "TEXT that is not valid UTF-8"
        return f"TEXT {value[:40]!r}"
    if isinstance(value, int):
        return f"the INTEGER {value}"
    return f"the REAL {value!r}"


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # read with surrogate escapes: see _reserve
        return False
    return True


def _is_number(value: object) -> bool:
    return type(value) is int or type(value) is float


def row_problems(row: tuple[Any, ...]) -> str | None:
    """What is wrong with a row of stem_messages, or None if Stem can hand it out.

    ``row`` is ``(seq, id, body, priority, eta, due, deliveries)`` as SQLite returned them.
    """
    _, mid, body, priority, eta, due, deliveries = row
    problems = []
    if not (isinstance(mid, str) and _is_utf8(mid)):
        problems.append(f"id is {_kind(mid)}, not TEXT")
    if not isinstance(body, bytes):
        problems.append(f"body is {_kind(body)}, not a BLOB")
    if type(priority) is not int:
        problems.append(f"priority is {_kind(priority)}, not an INTEGER")
    if eta is not None and not _is_number(eta):
        problems.append(f"eta is {_kind(eta)}, not a REAL or NULL")
    if not _is_number(due):
        problems.append(f"due is {_kind(due)}, not a REAL")
    if type(deliveries) is not int:
        problems.append(f"deliveries is {_kind(deliveries)}, not an INTEGER")
    return "; ".join(problems) or None


def _bury_malformed(
    conn: sqlite3.Connection, queue: str, row: tuple[Any, ...], problems: str, now: float
) -> None:
    """Move a row Stem cannot hand out to the dead letters, its columns made readable."""
    seq, mid, body, priority, eta, _, deliveries, _ = row
    if isinstance(mid, str):
        mid = mid.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    elif isinstance(mid, bytes):
        mid = mid.decode("utf-8", "replace")
    else:
        mid = f"row-{seq}" if mid is None else str(mid)
    if isinstance(body, str):
        body = body.encode("utf-8", "surrogateescape")  # the bytes the program wrote
    elif not isinstance(body, bytes):
        body = b"" if body is None else str(body).encode()
    conn.execute("DELETE FROM stem_messages WHERE seq = ?", (seq,))
    conn.execute(
        f"INSERT INTO stem_dead_letters ({_DEAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            queue,
            mid,
            body,
            priority if type(priority) is int else 0,
            eta if _is_number(eta) else None,
            "malformed",
            f"MalformedRow: row {seq} of stem_messages was not written by Stem: {problems}. "
            + _MALFORMED_ADVICE,
            None,
            deliveries if type(deliveries) is int else 1,
            now,
        ),
    )


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _reserve(
    conn: sqlite3.Connection, queues: list[str], limit: int, now: float, until: float, nonce: str
) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    # TEXT that is not UTF-8 (another program's) would make fetching the batch raise on
    # every poll: read it with escapes, and row_problems names it.
    text_factory = conn.text_factory
    conn.text_factory = _lenient_text
    try:
        for queue in queues:
            conn.execute(_PROMOTE_DELAYED, (queue, now))
            conn.execute(_PROMOTE_EXPIRED, (queue, now))
            conn.execute(_PROMOTE_UNREADABLE, {"queue": queue})
            while len(out) < limit:
                wanted = limit - len(out)
                rows = conn.execute(
                    _LEASE, {"until": until, "nonce": nonce, "queue": queue, "limit": wanted}
                ).fetchall()
                good = []
                for row in rows:
                    problems = row_problems(row[:7])
                    if problems is None:
                        good.append(row)
                    else:  # dead-lettered alone; the others are served
                        _bury_malformed(conn, queue, row, problems, now)
                good.sort(key=lambda r: (-r[3], r[5], r[0]))
                out.extend(
                    (queue, mid, body, prio, eta, deliveries, receipt)
                    for _, mid, body, prio, eta, _, deliveries, receipt in good
                )
                if len(rows) < wanted or len(good) == len(rows):
                    break  # drained, or nothing was set aside: no more to ask for
            if len(out) >= limit:
                break
    finally:
        conn.text_factory = text_factory
    return out


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
    """Store the statuses, then ack; returns how many expired statuses were swept."""
    swept = store_statuses(conn, rows, now, sweep)
    _ack(conn, pairs)
    return swept


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
        " WHERE seq = :seq AND receipt = :receipt",
        {"due": due, "now": now, "seq": seq, "receipt": receipt},
    )
    return row.rowcount == 1


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
    conn: sqlite3.Connection,
    queue: str,
    ids: str | None,
    eta: float | None,
    now: float,
    bodies: dict[str, bytes],
) -> int:
    due = eta if eta is not None else now
    state = _DELAYED if due > now else _READY
    letters = conn.execute(
        f"DELETE FROM stem_dead_letters WHERE {_DEAD_CHOICE} RETURNING seq, id, body, priority",
        {"queue": queue, "ids": ids},
    ).fetchall()
    letters.sort()  # RETURNING promises no order: back in the order they died
    # New rows: a replayed message starts again at zero deliveries.
    conn.executemany(
        _INSERT,
        [
            (queue, mid, bodies.get(mid, body), priority, eta, due, state, None)
            for _, mid, body, priority in letters
        ],
    )
    return len(letters)


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
