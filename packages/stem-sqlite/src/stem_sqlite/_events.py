"""The SQLite event bus: recent events in a table, subscribers woken by the file's datagrams.

A publish appends a row to ``stem_events`` (its ``seq`` grows with every row, in commit
order) and wakes subscribers through the file's wake-up signals: at once in this
process, by datagram in others (the status signals of ``_wake``, under a key of the
bus's namespace). Each subscriber reads the rows of its namespace after the last one it
read, and matches their topics against its pattern itself. Datagrams can miss (see
``_bus``), so an idle subscriber also reads now and then, paced as the broker's waits
are: within ``wake_interval`` at worst.

Rows are pruned after ``retention`` seconds (on the publishers' clock): a subscriber
that falls further behind loses the oldest, with a warning. Subscribers list themselves
in ``stem_event_listeners`` (renewed while they live), and a publish in a namespace
nobody listens to writes nothing: publishing costs one indexed read while nobody follows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import sqlite3
import time
from typing import Any

from stem import Clock, SystemClock
from stem.contracts import EventBus, EventSubscription, TopicPattern, decode_event, encode_event

from ._connection import Client, Database, FileStore
from ._support import SWEEP_BATCH, Sweeper, fetchall
from ._url import (
    SqliteOptions,
    check_namespace,
    check_seconds,
    check_synchronous,
    parse_url,
    resolve_path,
)
from ._wake import Pacer

__all__ = ["SqliteEventBus"]

log = logging.getLogger("stem.events")

#: How long published rows are kept (seconds on the publishers' clock): how far a
#: subscriber may fall behind before it loses events.
RETENTION = 60.0
#: A subscriber's row says it is alive until this many wall-clock seconds ahead...
LISTENER_TTL = 300.0
#: ...and is renewed this often (real seconds) while the subscription is open.
RENEW_EVERY = 60.0
#: Rows a subscriber reads at once.
READ_BATCH = 256

#: Wake-up keys of the buses, among the task ids of the file's status signals (a task
#: with the same id only causes a spurious wake-up, which subscribers allow).
_WAKE_PREFIX = "stem.events:"

_LISTENING = "SELECT 1 FROM stem_event_listeners WHERE namespace = ? AND alive_until > ? LIMIT 1"
_READ = (
    "SELECT seq, topic, payload FROM stem_events WHERE namespace = ? AND seq > ?"
    " ORDER BY seq LIMIT ?"
)
_OLDEST = "SELECT min(seq) FROM stem_events"

_real_clock = SystemClock()


class SqliteEventBus(FileStore, EventBus):
    """Live events between the processes sharing a SQLite file (see the module docstring).

    Args:
        path: the database file (created, with its directory, on first use), or a
            ``sqlite://`` URL naming it, whose options apply unless given here.
        clock: stamps published rows, and times their retention.
        namespace: apps sharing the file see each other's events only in the same
            namespace (default: the URL's ``namespace``, else ``default``).
        retention: seconds a published event is kept for subscribers that are behind.
        wake_interval: longest gap between two reads of an idle subscriber (datagrams
            wake it sooner, and changes made in this process at once).
        busy_timeout, synchronous, share_connection: as for the other SQLite stores.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        namespace: str | None = None,
        retention: float = RETENTION,
        wake_interval: float | None = None,
        busy_timeout: float | None = None,
        synchronous: str | None = None,
        share_connection: bool = True,
    ) -> None:
        text = os.fspath(path)
        base = (
            parse_url(text)
            if text.lower().startswith("sqlite:")
            else SqliteOptions(path=resolve_path(text))
        )
        self.clock: Clock = clock or SystemClock()
        self.namespace = check_namespace(base.namespace if namespace is None else namespace)
        self.retention = check_seconds("retention", retention, allow_zero=False)
        self._client = Client(
            SqliteOptions(
                path=base.path,
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
                namespace=self.namespace,
            ),
            share=share_connection,
        )
        self.wake_key = _WAKE_PREFIX + self.namespace
        self._sweeper = Sweeper(self.clock)
        self._subscriptions: dict[_Subscription, None] = {}

    async def publish(self, topic: str, payload: Any = None) -> None:
        body = encode_event(topic, payload).decode()  # refuses a bad payload first
        db = await self._db()
        if not await db.peek(fetchall, _LISTENING, (self.namespace, time.time())):
            return  # nobody follows this namespace: nothing to write
        now = self.clock.now()
        sweep = self._sweeper.due()
        swept = await db.write_small(
            _append, self.namespace, topic, body, now, now - self.retention if sweep else None
        )
        if sweep:
            self._sweeper.swept(swept)
        db.signals.statuses_changed([self.wake_key])

    async def open_subscription(self, pattern: str) -> EventSubscription:
        subscription = _Subscription(self, TopicPattern(pattern))
        await subscription.open()
        self._subscriptions[subscription] = None
        return subscription

    def _forget(self, subscription: _Subscription) -> None:
        self._subscriptions.pop(subscription, None)

    async def aclose(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.aclose()
        await self._client.aclose()


class _Subscription(EventSubscription):
    """One subscriber's cursor in ``stem_events``, and the rows it read but not yet gave."""

    def __init__(self, bus: SqliteEventBus, pattern: TopicPattern) -> None:
        self.pattern = pattern.pattern
        self._matcher = pattern
        self._bus = bus
        self._id = secrets.token_hex(12)
        self._events: collections.deque[tuple[str, str]] = collections.deque()
        self._cursor = 0
        self._closed = False
        self._warned = False
        self._pacer = Pacer(bus._client.options.wake_interval)
        self._db: Database | None = None
        self._closing: asyncio.Future[None] | None = None
        self._keeper: asyncio.Task[None] | None = None

    async def open(self) -> None:
        bus = self._bus
        db = self._db = await bus._db()
        # Bind this loop's datagram socket before the cursor is read, so that every row
        # committed after the read is announced to it.
        db.signals.status(bus.wake_key)
        self._cursor = await db.write_small(
            _listen, self._id, bus.namespace, time.time() + LISTENER_TTL
        )
        self._closing = asyncio.get_running_loop().create_future()
        self._keeper = asyncio.ensure_future(self._keep_listed(db))

    async def _keep_listed(self, db: Database) -> None:
        """Renew this subscriber's row while it is open, read or not."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                await db.write_small(
                    _listen, self._id, self._bus.namespace, time.time() + LISTENER_TTL
                )
            except Exception as exc:  # the file is away for now: renew next time
                log.warning("could not renew an event subscription in %s: %s", db.path, exc)

    async def __anext__(self) -> tuple[str, Any]:
        db, closing = self._db, self._closing
        assert db is not None and closing is not None
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._events:
                topic, payload = self._events.popleft()
                return topic, decode_event(payload)
            notifier = db.signals.status(self._bus.wake_key)
            if await self._read(db):
                continue
            wake = asyncio.ensure_future(notifier.wait(_real_clock, 3600.0))
            try:
                await asyncio.wait(
                    {wake, closing},
                    timeout=self._pacer.next_gap(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                if not wake.done():
                    wake.cancel()
                    await asyncio.wait({wake})

    async def _read(self, db: Database) -> bool:
        """Take the next rows of the namespace; True if there were any."""
        rows = await db.peek(fetchall, _READ, (self._bus.namespace, self._cursor, READ_BATCH))
        if not rows or self._closed:
            return False
        if rows[0][0] > self._cursor + 1:  # rows of other namespaces, or pruned ones
            await self._check_pruned(db)
        self._cursor = rows[-1][0]
        matches = self._matcher.matches
        self._events.extend((topic, payload) for _, topic, payload in rows if matches(topic))
        self._pacer.active()
        return True

    async def _check_pruned(self, db: Database) -> None:
        oldest = await db.peek(fetchall, _OLDEST, ())
        pruned = bool(oldest) and oldest[0][0] is not None and oldest[0][0] > self._cursor + 1
        if pruned and not self._warned:
            self._warned = True
            log.warning(
                "a subscriber to %r in %s fell more than the bus's retention (%g s) "
                "behind: events published meanwhile were pruned before it read them",
                self.pattern,
                db.path,
                self._bus.retention,
            )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._events.clear()
        self._bus._forget(self)
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper
        if self._db is not None:
            with contextlib.suppress(Exception):  # its row expires by itself otherwise
                await self._db.write_small(_unlisten, self._id)


# -- transactions ---------------------------------------------------------------------------


def _append(
    conn: sqlite3.Connection,
    namespace: str,
    topic: str,
    payload: str,
    now: float,
    prune_before: float | None,
) -> int:
    """Append one event; prune a batch of old rows and dead listeners if asked (how many)."""
    conn.execute(
        "INSERT INTO stem_events (namespace, topic, payload, published_at) VALUES (?, ?, ?, ?)",
        (namespace, topic, payload, now),
    )
    if prune_before is None:
        return 0
    swept = conn.execute(
        "DELETE FROM stem_events WHERE seq IN (SELECT seq FROM stem_events"
        " WHERE published_at < ? ORDER BY published_at LIMIT ?)",
        (prune_before, SWEEP_BATCH),
    ).rowcount
    conn.execute("DELETE FROM stem_event_listeners WHERE alive_until < ?", (time.time(),))
    return swept


def _listen(conn: sqlite3.Connection, listener: str, namespace: str, alive_until: float) -> int:
    """List (or renew) a subscriber; returns the last seq ever given, its starting point."""
    conn.execute(
        "INSERT INTO stem_event_listeners (id, namespace, alive_until) VALUES (?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET alive_until = excluded.alive_until",
        (listener, namespace, alive_until),
    )
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'stem_events'").fetchone()
    return 0 if row is None else int(row[0])


def _unlisten(conn: sqlite3.Connection, listener: str) -> None:
    conn.execute("DELETE FROM stem_event_listeners WHERE id = ?", (listener,))
