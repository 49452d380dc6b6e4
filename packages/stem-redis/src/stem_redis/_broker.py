"""The Redis broker: a stream per queue and priority lane, leases in sorted sets, Lua for every step.

Each queue's keys share one hash tag, ``{PREFIX:QUEUE}`` (see ``lua/_queue.lua`` for the
layout), so every script touches one hash slot and a queue can live on one Redis Cluster
shard. A reserve is one script: it promotes due delayed messages, takes over deliveries
whose lease ran out (``XCLAIM``: the entry is not copied), then reads new entries with
``XREADGROUP ... COUNT n`` lane by lane, highest priority first. An ack is ``XACK``,
then a trim up to the oldest entry still pending or unread (``XTRIM MINID``), so a
stream holds its unacknowledged messages and a few acked ones, and the length bound
never drops a message not yet acknowledged.

On Redis Cluster (``redis+cluster://``) a queue lives on the node that owns its hash
tag's slot, and a call that names several queues is split by slot: a publish or an ack
of several queues sends one script per slot, all at once; a reserve of several queues
calls them one slot after the other, in the order given, until it has enough; enqueue
and settle write the statuses first, then publish or ack (two round trips instead of one,
as the result backend's keys are on other slots: see ``_backend.py``).

Time: with ``server_clock`` (the default when no clock is given, as in production) every
script reads ``now`` from the Redis server (``TIME``) and is sent durations, so lease
ends, nack delays, expired leases and due messages are judged by the one clock every
worker shares. With a clock (a FakeClock in tests) its reading is sent instead. An
``eta`` is the producer's time either way, and ``Delivery.lease_expires_at`` is on this
broker's clock (``now + lease``), as the worker schedules its renewals by it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from redis.crc import key_slot

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
    TaskStatus,
    UniqueClaim,
)

from ._backend import RedisResultBackend
from ._client import Arg, RedisClient, RedisStore, call_token, gather_all, pack
from ._url import RedisOptions

__all__ = ["RedisBroker"]

#: Most messages one reserve script hands out (a larger limit takes several calls).
RESERVE_CHUNK = 1000
#: Most delayed messages one script moves to their streams (the rest follow on the next).
PROMOTE_CAP = 1000
#: Entries one purge or replay call handles before the next call goes on.
CHUNK = 500
#: The consumer (in each stream's group ``stem``) that deliveries are read under. Stem
#: tracks who holds what in its own lease sets, with receipts, so one name serves all.
CONSUMER = "stem"

_RECEIPT = re.compile(r"(\d)/(\d+-\d+)/(\d+)")


def queue_base(prefix: str, queue: str) -> bytes:
    """The hash tag every key of ``queue`` starts with."""
    return f"{{{prefix}:{queue}}}".encode()


def _optional(text: str | None) -> str:
    return "" if text is None else "+" + text


def _receipt(delivery: Delivery) -> tuple[str, str, str] | None:
    """(lane, entry id, deliveries) from a receipt this broker wrote; None for any other."""
    found = _RECEIPT.fullmatch(delivery.receipt)
    return None if found is None else (found[1], found[2], found[3])


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


class Malformed(Exception):
    """A stream entry that is not a Stem message."""


def _message(queue: str, lane: int, fields: dict[bytes, bytes]) -> Message:
    problems = []
    raw_id, body, raw_eta = fields.get(b"id"), fields.get(b"body"), fields.get(b"eta")
    message_id = ""
    if raw_id is None:
        problems.append("no id field")
    else:
        try:
            message_id = raw_id.decode()
        except UnicodeDecodeError:
            problems.append("the id is not UTF-8")
    if body is None:
        problems.append("no body field")
    eta = None
    if raw_eta is not None:
        try:
            eta = float(raw_eta)
        except ValueError:
            problems.append(f"the eta {raw_eta[:40]!r} is not a number")
    if problems:
        raise Malformed("; ".join(problems))
    assert body is not None
    return Message(id=message_id, queue=queue, body=body, priority=lane, eta=eta)


def _malformed_letter(eid: str, fields: dict[bytes, bytes]) -> tuple[str, bytes]:
    """The id and body a malformed entry is dead-lettered with: what it had, made readable."""
    raw_id = fields.get(b"id")
    message_id = raw_id.decode("utf-8", "replace") if raw_id is not None else f"stream-entry-{eid}"
    body = fields.get(b"body")
    if body is None:  # keep everything the entry had, for whoever fixes it
        body = repr({k.decode("utf-8", "backslashreplace"): v for k, v in fields.items()}).encode()
    return message_id, body


class RedisBroker(RedisStore, Broker):
    """Messages in Redis Streams, shared by every process that reaches the server.

    Args:
        url: ``redis://`` or ``rediss://`` (see :func:`stem_redis.parse_url`); its
            ``prefix`` namespaces the keys and ``poll_interval`` bounds an idle wait.
        clock: this broker's clock: ``Delivery.lease_expires_at``, dead-letter times
            and, when ``server_clock`` is False, every lease end and due time.
        server_clock: whether the scripts read ``now`` from the Redis server (``TIME``)
            so that leases do not depend on the workers' clocks agreeing; None (the
            default) means True when no ``clock`` is given (production) and False when
            one is (a FakeClock in tests). Every broker of one prefix should use the
            same mode.
        share_connection: False to open connections of its own instead of sharing the
            pool of every store of this server in this event loop.

    The constructor does no I/O: it connects on first use.
    """

    capabilities = BrokerCapabilities(notify=True, broadcast=True)

    def __init__(
        self,
        url: str | RedisOptions = "redis://localhost:6379/0",
        *,
        clock: Clock | None = None,
        server_clock: bool | None = None,
        share_connection: bool = True,
    ) -> None:
        options = self._open(
            url, clock=clock, server_clock=server_clock, share_connection=share_connection
        )
        super().__init__(clock=clock, poll_interval=options.poll_interval)
        self._bases: dict[str, bytes] = {}
        self._cluster = options.cluster
        self._slots: dict[str, int] = {}
        # Per set of queues: the wake channels' counts noted before the last reserve,
        # and the next due time that reserve found (when it found nothing ready).
        self._drained: dict[tuple[str, ...], tuple[tuple[int, ...], float | None]] = {}

    def _base(self, queue: str) -> bytes:
        base = self._bases.get(queue)
        if base is None:
            base = self._bases[queue] = queue_base(self.options.prefix, queue)
        return base

    def _slot(self, queue: str) -> int:
        """The Redis Cluster hash slot of every key of ``queue``."""
        slot = self._slots.get(queue)
        if slot is None:
            slot = self._slots[queue] = key_slot(self._base(queue))
        return slot

    def _by_slot(self, queues: Sequence[str]) -> list[list[int]]:
        """Indexes into ``queues``, grouped by slot (a script's keys must share one)."""
        groups: dict[int, list[int]] = {}
        for i, queue in enumerate(queues):
            groups.setdefault(self._slot(queue), []).append(i)
        return list(groups.values())

    def _local(self, due: bytes | None, now: bytes) -> float | None:
        """A due time a script found, on its clock (read at ``now``), on this broker's."""
        if due is None:
            return None
        if not self.server_clock:
            return float(due)
        return self.clock.now() + (float(due) - float(now))

    def _shares_server(self, store: object) -> bool:
        return isinstance(store, RedisResultBackend) and store.options.server == self.options.server

    # -- publishing -------------------------------------------------------------------

    def _message_args(self, messages: Sequence[Message], now: Arg) -> tuple[list[bytes], list[Arg]]:
        """KEYS (the queues' bases) and the messages section of ARGV (see lua/_queue.lua)."""
        index: dict[str, int] = {}
        keys: list[bytes] = []
        records = []
        for m in messages:
            qi = index.get(m.queue)
            if qi is None:
                keys.append(self._base(m.queue))
                qi = index[m.queue] = len(keys)
            if not 0 <= m.priority <= 9:
                raise ValueError(f"message {m.id!r} has priority {m.priority}; it must be 0-9")
            records.append((qi, m.priority, m.id, "" if m.eta is None else m.eta, len(m.body)))
        blob = b"".join(m.body for m in messages)
        return keys, [now, PROMOTE_CAP, pack(records), blob]

    async def publish_many(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        if self._cluster:
            await self._publish_by_slot(messages)
            return
        keys, args = self._message_args(messages, self._now())
        await self._client().script("publish", keys, [call_token(), *args])

    async def _publish_by_slot(self, messages: Sequence[Message]) -> None:
        """One publish script per slot, all at once (each queue keeps its order)."""
        client, now = self._client(), self._now()
        groups = self._by_slot([m.queue for m in messages])
        calls = []
        for group in groups:
            keys, args = self._message_args([messages[i] for i in group], now)
            calls.append(client.script("publish", keys, [call_token(), *args]))
        await gather_all(calls)

    async def enqueue(
        self,
        messages: Sequence[Message],
        statuses: Sequence[tuple[TaskStatus, float | None]],
        backend: ResultBackend,
        *,
        claims: Sequence[UniqueClaim | None] = (),
        locks: LockStore | None = None,
    ) -> list[str | None]:
        """Statuses and messages in one atomic script (one round trip) when the backend is
        on this server; with unique claims, or on a cluster (where a task's status is not
        in its queue's slot), the base class's steps: statuses, then messages."""
        if self._cluster or any(c is not None for c in claims) or not messages or not statuses:
            return await super().enqueue(messages, statuses, backend, claims=claims, locks=locks)
        if not self._shares_server(backend):
            return await super().enqueue(messages, statuses, backend, claims=claims, locks=locks)
        assert isinstance(backend, RedisResultBackend)
        status_args, _ = backend.status_args(statuses)
        keys, message_args = self._message_args(messages, self._now())
        swept = await self._client().script(
            "enqueue", keys, [call_token(), *status_args, *message_args]
        )
        backend.swept(int(swept))
        return [None] * len(messages)

    # -- consuming ----------------------------------------------------------------------

    def _wake_channels(self, queues: Sequence[str]) -> list[bytes]:
        return [self._base(q) + b":wake" for q in queues]

    def _marks(self, client: RedisClient, queues: Sequence[str]) -> tuple[int, ...] | None:
        channels = [client.hub.channel(name) for name in self._wake_channels(queues)]
        if any(c is None for c in channels):
            return None
        return tuple(c.count for c in channels if c is not None)

    async def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        client = self._client()
        key = tuple(queues)
        marks = self._marks(client, queues)
        keys = [self._base(q) for q in queues]
        out: list[Delivery] = []
        while len(out) < limit:
            now = self.clock.now()
            # The lease the script records counts from its commit, on its clock; the one
            # the worker renews by is on ours, and starts no later.
            until = now + lease
            sent: Arg = "" if self.server_clock else now
            want = min(limit - len(out), RESERVE_CHUNK)
            if self._cluster:
                raw, due = await self._reserve_by_slot(client, queues, keys, sent, want, lease)
            else:
                raw, found_due, script_now = await client.script(
                    "reserve", keys, [sent, want, lease, CONSUMER, PROMOTE_CAP]
                )
                due = self._local(found_due, script_now)
            malformed = 0
            for qi, lane, eid, count, flat in raw:
                queue = queues[qi - 1]
                fields = _fields(flat)
                eid_text = eid.decode()
                receipt = f"{lane}/{eid_text}/{count}"
                try:
                    message = _message(queue, lane, fields)
                except Malformed as exc:
                    malformed += 1
                    await self._bury_malformed(queue, lane, eid_text, count, fields, str(exc))
                    continue
                out.append(
                    Delivery(
                        message=message, receipt=receipt, deliveries=count, lease_expires_at=until
                    )
                )
            if len(raw) < want:  # drained
                if out:
                    break
                if marks is None:
                    self._drained.pop(key, None)  # not subscribed yet: a wait reads again
                else:
                    self._drained[key] = (marks, due)
                break
            if not malformed and len(out) >= limit:
                break
        return out

    async def _reserve_by_slot(
        self,
        client: RedisClient,
        queues: Sequence[str],
        keys: list[bytes],
        now: Arg,
        want: int,
        lease: float,
    ) -> tuple[list[Any], float | None]:
        """The reserve script once per run of consecutive queues sharing a slot, in the
        order given, until ``want`` are found: a later queue is read only when the earlier
        ones did not fill the batch. Replies as the script's, indexes into all ``queues``."""
        raw: list[Any] = []
        due: float | None = None
        start = 0
        while start < len(queues) and len(raw) < want:
            end = start + 1
            slot = self._slot(queues[start])
            while end < len(queues) and self._slot(queues[end]) == slot:
                end += 1
            found, found_due, script_now = await client.script(
                "reserve", keys[start:end], [now, want - len(raw), lease, CONSUMER, PROMOTE_CAP]
            )
            raw += [(qi + start, *rest) for qi, *rest in found]
            local_due = self._local(found_due, script_now)  # each node has its own clock
            if local_due is not None and (due is None or local_due < due):
                due = local_due
            start = end
        return raw, None if raw else due

    async def _bury_malformed(
        self, queue: str, lane: int, eid: str, count: int, fields: dict[bytes, bytes], why: str
    ) -> None:
        message_id, body = _malformed_letter(eid, fields)
        error = (
            f"MalformedEntry: stream entry {eid} of queue {queue!r} is not a Stem message "
            f"({why}; fields: {', '.join(k.decode('utf-8', 'replace') for k in fields) or 'none'}). "
            "Stem writes the fields id (UTF-8 text), body (bytes) and eta (seconds, optional); "
            "publish through Stem, or fix this dead letter's body and replay it, or purge it"
        )
        await self._client().script(
            "bury",
            [self._base(queue)],
            [
                lane,
                eid,
                count,
                message_id,
                body,
                "",
                "malformed",
                _optional(error),
                "",
                self.clock.now(),
            ],
        )

    async def wait_for_messages(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a message may be ready in ``queues`` (a publish, a requeue or a
        replay notifies), or after ``timeout``."""
        if timeout <= 0:
            await self.clock.sleep(0)
            return
        client = self._client()
        channels, new = await client.hub.subscribe(self._wake_channels(queues), sticky=True)
        if new:
            return  # something published just before the subscription was not notified
        drained = self._drained.get(tuple(queues))
        if drained is None:
            return  # no empty read since the subscription: read first
        await client.hub.wait(channels, drained[0], self.clock, timeout)

    async def next_due(self, queues: Sequence[str]) -> float | None:
        if not queues:
            return None
        client = self._client()
        drained = self._drained.get(tuple(queues))
        if drained is not None and drained[0] == self._marks(client, queues):
            return drained[1]  # nothing was published since the empty read that found it
        if self._cluster:
            found = await gather_all(
                client.script("next_due", [self._base(queues[i]) for i in group], [self._now()])
                for group in self._by_slot(queues)
            )
        else:
            found = [
                await client.script("next_due", [self._base(q) for q in queues], [self._now()])
            ]
        dues = [self._local(*due_and_now) for due_and_now in found if due_and_now]
        return min((due for due in dues if due is not None), default=None)

    # -- settling -----------------------------------------------------------------------

    def _ack_args(self, deliveries: Sequence[Delivery]) -> tuple[list[bytes], list[Arg], int]:
        """KEYS, the ack section of ARGV, and how many deliveries it names."""
        index: dict[str, int] = {}
        keys: list[bytes] = []
        records = []
        for d in deliveries:
            parts = _receipt(d)
            if parts is None:
                continue
            qi = index.get(d.message.queue)
            if qi is None:
                keys.append(self._base(d.message.queue))
                qi = index[d.message.queue] = len(keys)
            lane, eid, count = parts
            records.append((qi, int(lane), eid, int(count)))
        return keys, [pack(records), b""], len(records)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> int:
        if self._cluster:
            return await self._ack_by_slot(deliveries)
        keys, args, count = self._ack_args(deliveries)
        if count == 0:
            return 0
        return int(await self._client().script("ack", keys, args))

    async def _ack_by_slot(self, deliveries: Sequence[Delivery]) -> int:
        """One ack script per slot, all at once."""
        client = self._client()
        calls = []
        for group in self._by_slot([d.message.queue for d in deliveries]):
            keys, args, count = self._ack_args([deliveries[i] for i in group])
            if count:
                calls.append(client.script("ack", keys, args))
        return sum(int(acked) for acked in await gather_all(calls))

    async def settle(
        self,
        deliveries: Sequence[Delivery],
        statuses: Sequence[tuple[TaskStatus, float | None]],
        backend: ResultBackend,
    ) -> None:
        """Store the statuses, then ack the deliveries, in one atomic script when the
        backend is on this server; else (and on a cluster) one after the other."""
        if self._cluster or not (statuses and deliveries and self._shares_server(backend)):
            await super().settle(deliveries, statuses, backend)
            return
        assert isinstance(backend, RedisResultBackend)
        status_args, _ = backend.status_args(statuses)
        keys, ack_args, _ = self._ack_args(deliveries)
        swept, _ = await self._client().script("settle", keys, [*status_args, *ack_args])
        backend.swept(int(swept))

    async def nack(
        self, delivery: Delivery, *, requeue: bool = True, delay: float | None = None
    ) -> bool:
        parts = _receipt(delivery)
        if parts is None:
            return False
        done = await self._client().script(
            "nack",
            [self._base(delivery.message.queue)],
            [*parts, int(requeue), self._now(), delay or 0.0],
        )
        return bool(done)

    async def extend_lease(self, delivery: Delivery, seconds: float) -> bool:
        parts = _receipt(delivery)
        if parts is None:
            return False
        done = await self._client().script(
            "extend", [self._base(delivery.message.queue)], [*parts, self._now(), seconds]
        )
        return bool(done)

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
    ) -> bool:
        parts = _receipt(delivery)
        if parts is None:
            return False
        m = delivery.message
        done = await self._client().script(
            "bury",
            [self._base(m.queue)],
            [
                *parts,
                m.id,
                m.body,
                "" if m.eta is None else repr(m.eta),
                reason,
                _optional(error),
                _optional(traceback),
                self.clock.now(),
            ],
        )
        return bool(done)

    # -- dead letters -------------------------------------------------------------------

    def _letter(self, queue: str, fields: dict[bytes, bytes]) -> DeadLetter:
        def text(name: bytes) -> str | None:
            value = fields.get(name)
            return None if value is None else value.decode("utf-8", "replace")

        eta = fields.get(b"eta")
        return DeadLetter(
            message=Message(
                id=text(b"id") or "",
                queue=queue,
                body=fields.get(b"body", b""),
                priority=int(fields.get(b"p", b"0")),
                eta=None if eta is None else float(eta),
            ),
            reason=text(b"reason") or "",
            error=text(b"error"),
            traceback=text(b"tb"),
            deliveries=int(fields.get(b"n", b"0")),
            dead_at=float(fields.get(b"at", b"0")),
        )

    async def list_dead_letters(
        self, queue: str, *, limit: int = 100, offset: int = 0
    ) -> list[DeadLetter]:
        if limit <= 0:
            return []
        entries = await self._client().command(
            "XRANGE", self._base(queue) + b":dead", "-", "+", "COUNT", offset + limit
        )
        # redis-py answers XRANGE with (entry id, {field: value}) pairs.
        return [self._letter(queue, fields) for _, fields in entries[offset:]]

    async def get_dead_letter(self, queue: str, message_id: str) -> DeadLetter | None:
        found = await self._client().script("dead_get", [self._base(queue)], [message_id])
        return None if not found else self._letter(queue, _fields(found[1]))

    def _selection(self, message_ids: Sequence[str] | None) -> list[list[Arg]]:
        """The selection sections to send, one per call."""
        if message_ids is None:
            return [["all"]]
        ids = list(dict.fromkeys(message_ids))
        return [["ids", len(chunk), *chunk] for chunk in _chunks(ids, CHUNK)]

    async def replay_dead_letters(
        self,
        queue: str,
        message_ids: Sequence[str] | None = None,
        *,
        delay: float | None = None,
        bodies: Mapping[str, bytes] | None = None,
    ) -> int:
        client, base = self._client(), [self._base(queue)]
        replaced: list[Arg] = [len(bodies or {})]
        for message_id, body in (bodies or {}).items():
            replaced += (message_id, body)
        total = 0
        for selection in self._selection(message_ids):
            while True:
                count, more = await client.script(
                    "dead_replay",
                    base,
                    [self._now(), delay if delay else "", CHUNK, *replaced, *selection],
                )
                total += int(count)
                if not more:
                    break
        return total

    async def purge_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        client, base = self._client(), [self._base(queue)]
        total = 0
        for selection in self._selection(message_ids):
            total += int(await client.script("dead_purge", base, [CHUNK, *selection]))
        return total

    # -- inspection ---------------------------------------------------------------------

    async def queue_stats(self, queue: str) -> QueueStats:
        pending, delayed, inflight, dead = await self._client().script(
            "stats", [self._base(queue)], [self._now()]
        )
        return QueueStats(
            queue=queue, pending=pending, delayed=delayed, inflight=inflight, dead=dead
        )

    async def purge(self, queue: str) -> int:
        client, base = self._client(), [self._base(queue)]
        total = 0
        while True:
            count, more = await client.script("purge", base, [self._now(), CONSUMER, CHUNK])
            total += int(count)
            if not more:
                return total

    # -- broadcast subscriptions ----------------------------------------------------------

    async def subscribe(self, queue: str, subscriber: str, ttl: float) -> None:
        await self._client().script(
            "subscribe", [self._base(queue)], [subscriber, self._now(), ttl]
        )

    async def subscriptions(self, queue: str) -> list[Subscription]:
        now, flat = await self._client().script("subscriptions", [self._base(queue)], [self._now()])
        ends = {flat[i].decode(): float(flat[i + 1]) for i in range(0, len(flat), 2)}
        return [
            Subscription(subscriber=name, expires_in=ends[name] - float(now))
            for name in sorted(ends)
        ]

    async def unsubscribe(
        self, queue: str, subscriber: str, *, ended_for: float | None = None
    ) -> bool:
        removed = await self._client().script(
            "unsubscribe",
            [self._base(queue)],
            [subscriber, self._now(), "" if ended_for is None else ended_for],
        )
        return bool(removed)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]
