"""The Redis result backend: statuses with indexes and expiry, groups, chords, heartbeats.

Keys (``P`` is the prefix): ``P:task:ID`` a string per status (``state NUL task NUL
expires_at NUL`` and the status as JSON: one ``SET ... PX`` writes it all, and the
header is read back with ``GETRANGE``); the index ``P:statuses:STATE:TASK`` (sorted
by update time) and the set of task names ``P:task-names``, for listing;
``P:expiring`` (by expiry) for sweeping; ``{P:group:ID}`` and ``{P:group:ID}:results``
per group; ``{P:heartbeats}`` and ``{P:heartbeats}:ends``. A status write publishes on
``P:changed:ID``, which wakes watchers.

Expiry follows the scripts' clock: the Redis server's (``TIME``) with ``server_clock``
(the default when no clock is given, as in production), else the app's clock. A write
sends each status's time to live and the script sets its ``expires_at``; a read gets the
time to judge it by in the same step. A status whose time is up is not returned, and is
deleted (with its index entries) by a sweep that writers run now and then. Redis's own
expiry is set a while later as well, so memory is freed even if no process sweeps any
more. Heartbeats expire the same way. ``updated_at`` stays the writer's clock: it only
informs.

On Redis Cluster the statuses are spread over :data:`STATUS_TAGS` hash tags,
``{P:status:N}``, a task going to the tag its id hashes to (CRC-32): each tag holds
the keys ``P`` holds on one server (``{P:status:N}:task:ID``, its indexes, its
``expiring`` set, its ``changed`` channels), so a status write is one script on one
slot, and the tags are chosen with evenly spaced slots so the statuses spread over the
nodes. Groups and heartbeats have hash tags of their own already.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Sequence
from functools import cache
from typing import Any

import msgspec
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from stem import Clock, DecodeError
from stem.contracts import GroupState, ResultBackend, TaskState, TaskStatus, WorkerHeartbeat

from ._client import Arg, RedisStore, call_token, gather_all, pack
from ._url import RedisOptions

__all__ = [
    "KEEP_AFTER_EXPIRY",
    "STATUS_TAGS",
    "SWEEP_EVERY",
    "RedisResultBackend",
    "status_tags",
]

#: Seconds Redis keeps an expired status (or lock, or heartbeat) after the clock's
#: expiry, so its own expiry never runs ahead of the app's clock (a FakeClock's, say).
KEEP_AFTER_EXPIRY = 300.0
#: Expired statuses are swept at most this often (clock seconds) by each backend...
SWEEP_EVERY = 60.0
#: ...500 at a time; a sweep that found a full batch makes the next write sweep again.
SWEEP_BATCH = 500
#: Versions of statuses read that a backend remembers for the watches that wait next.
SEEN_LIMIT = 10_000

#: On Redis Cluster: how many hash tags the statuses are spread over (so at most this
#: many nodes share the statuses). Part of the key layout: changing it hides the
#: statuses stored before.
STATUS_TAGS = 16

_STATES = tuple(TaskState)


@cache
def status_tags(prefix: str) -> tuple[str, ...]:
    """The :data:`STATUS_TAGS` hash tags of ``prefix``'s statuses on Redis Cluster:
    ``{PREFIX:status:N}``, the first N whose slot falls in each of STATUS_TAGS equal
    ranges of the 16384 slots, so that nodes holding equal ranges hold equal shares."""
    tags: list[str | None] = [None] * STATUS_TAGS
    missing, n = STATUS_TAGS, 0
    while missing:
        tag = f"{{{prefix}:status:{n}}}"
        part = key_slot(tag.encode()) * STATUS_TAGS // REDIS_CLUSTER_HASH_SLOTS
        if tags[part] is None:
            tags[part] = tag
            missing -= 1
        n += 1
    return tuple(t for t in tags if t is not None)


def _plain(value: object) -> object:
    # msgspec refuses subclasses of str (such as stem.TaskRef): store the plain string.
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in Redis")


_encoder = msgspec.json.Encoder(enc_hook=_plain)
_status_decoder = msgspec.json.Decoder(TaskStatus)
_heartbeat_decoder = msgspec.json.Decoder(WorkerHeartbeat)
_meta_decoder = msgspec.json.Decoder(dict[str, Any])


def _score_pairs(reply: list[Any]) -> list[tuple[float, bytes]]:
    """(score, member) from ZREVRANGE ... WITHSCORES, flat or paired (redis-py parses it
    into pairs; the raw reply is flat)."""
    if reply and isinstance(reply[0], list | tuple):
        return [(float(score), member) for member, score in reply]
    return [(float(reply[i + 1]), reply[i]) for i in range(0, len(reply), 2)]


def keep_ms(ttl: float) -> int:
    """Redis's own time to live for something the clock expires after ``ttl`` seconds."""
    return int((max(ttl, 0.0) + KEEP_AFTER_EXPIRY) * 1000)


class _Sweeper:
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
        self._behind = count >= SWEEP_BATCH


class RedisResultBackend(RedisStore, ResultBackend):
    """Task statuses, groups, chord claims and worker heartbeats in Redis.

    Args:
        url: ``redis://`` or ``rediss://`` (see :func:`stem_redis.parse_url`).
        clock: ``updated_at`` stamps and, when ``server_clock`` is False, every expiry
            stored or compared are read from it.
        server_clock: whether status and heartbeat expiry follow the Redis server's
            clock (``TIME`` in the scripts); None (the default) means True when no
            ``clock`` is given (production) and False when one is (a FakeClock in tests).
        share_connection: False to open connections of its own instead of sharing the
            pool of every store of this server in this event loop.

    Watchers are woken by pub/sub; ``poll_interval`` (from the URL) only bounds how
    late one notices a change whose notification was lost in a reconnect.
    """

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
        self._prefix = options.prefix
        self._cluster = options.cluster
        self._tags = status_tags(options.prefix) if options.cluster else (options.prefix,)
        self._sweeper = _Sweeper(self.clock)
        # (A hash of) each status as last read by get_status, so that a watch that
        # waits next cannot miss a change made between that read and its wait (the
        # oldest are dropped past SEEN_LIMIT: a waiter that lost its own waits less).
        self._seen: dict[str, int | None] = {}

    def _tag(self, task_id: str) -> str:
        """What a task's status keys start with: the prefix, or on a cluster its hash tag."""
        if not self._cluster:
            return self._prefix
        return self._tags[zlib.crc32(task_id.encode()) % STATUS_TAGS]

    def _key(self, task_id: str) -> str:
        return f"{self._tag(task_id)}:task:{task_id}"

    def _changed(self, task_id: str) -> bytes:
        """The channel a status write of ``task_id`` publishes on (see lua/_status.lua)."""
        return f"{self._tag(task_id)}:changed:{task_id}".encode()

    def _decode(self, value: bytes) -> TaskStatus:
        """A stored status (see the module docstring), whatever its expiry."""
        parts = value.split(b"\0", 3)
        try:
            if len(parts) != 4:
                raise msgspec.DecodeError("no state, task and expiry before the JSON")
            status: TaskStatus = _status_decoder.decode(parts[3])
        except msgspec.DecodeError as exc:
            raise DecodeError(
                f"a task status stored in Redis at {self.options.masked_url} does not decode: {exc}"
            ) from exc
        status.expires_at = float(parts[2]) if parts[2] else None  # expire() changes only it
        return status

    def _live(self, value: bytes | None, now: float) -> TaskStatus | None:
        """The stored status if it has not expired by ``now``."""
        if value is None:
            return None
        status = self._decode(value)
        if status.expires_at is not None and status.expires_at <= now:
            return None
        return status

    # -- statuses -------------------------------------------------------------------------

    def status_args(
        self,
        statuses: Sequence[tuple[TaskStatus, float | None]],
        *,
        tag: str | None = None,
        now: float | None = None,
        sweep: bool | None = None,
    ) -> tuple[list[Arg], float]:
        """The statuses section of a script's ARGV (see lua/_status.lua), and its time.

        ``tag`` is what their keys start with (default: the prefix, as on one server).
        The script sets each expiry from its clock and the time to live sent.
        """
        now = self.clock.now() if now is None else now
        records = []
        data = []
        for status, ttl in statuses:
            # Like the other backends, fill in the caller's status: when it was updated
            # (unless given) and when it expires (on a server's clock: about then).
            status.updated_at = status.updated_at or now
            status.expires_at = now + ttl if ttl is not None else None
            encoded = _encoder.encode(status)
            data.append(encoded)
            records.append(
                (
                    status.id,
                    str(status.state),
                    status.task,
                    status.updated_at,
                    "" if ttl is None else ttl,
                    0 if ttl is None else keep_ms(ttl),
                    len(encoded),
                )
            )
        if sweep is None:
            sweep = self._sweeper.due()
        flag = "1" if sweep else "0"
        sent: Arg = "" if self.server_clock else now
        return [tag or self._prefix, sent, flag, pack(records), b"".join(data)], now

    def swept(self, count: int) -> None:
        """What the sweep that :meth:`status_args` asked for deleted."""
        self._sweeper.swept(count)

    async def set_status(self, status: TaskStatus, *, ttl: float | None = None) -> None:
        await self.set_statuses([(status, ttl)])

    async def set_statuses(self, statuses: Sequence[tuple[TaskStatus, float | None]]) -> None:
        """Store several statuses in one atomic script (the worker's batched flush)."""
        if not statuses:
            return
        if self._cluster:
            await self._set_by_tag(statuses)
            return
        args, _ = self.status_args(statuses)
        self.swept(int(await self._client().script("statuses", [], args)))

    async def _set_by_tag(self, statuses: Sequence[tuple[TaskStatus, float | None]]) -> None:
        """On a cluster: one script per status tag, all at once."""
        client, now, sweep = self._client(), self.clock.now(), self._sweeper.due()
        groups: dict[str, list[tuple[TaskStatus, float | None]]] = {}
        for item in statuses:
            groups.setdefault(self._tag(item[0].id), []).append(item)
        calls = []
        for tag, group in groups.items():
            args, _ = self.status_args(group, tag=tag, now=now, sweep=sweep)
            calls.append(client.script("statuses", [tag], args))
        self.swept(max(int(swept) for swept in await gather_all(calls)))

    async def get_status(self, task_id: str) -> TaskStatus | None:
        if self.server_clock:
            [(value, now)] = await self._read([task_id])
        else:
            value, now = await self._client().command("GET", self._key(task_id)), self.clock.now()
        self._seen.pop(task_id, None)
        self._seen[task_id] = None if value is None else hash(value)
        if len(self._seen) > SEEN_LIMIT:
            del self._seen[next(iter(self._seen))]
        return self._live(value, now)

    async def get_statuses(self, task_ids: Sequence[str]) -> dict[str, TaskStatus]:
        if not task_ids:
            return {}
        found = {}
        for task_id, (value, now) in zip(task_ids, await self._read(task_ids), strict=True):
            status = self._live(value, now)
            if status is not None:
                found[task_id] = status
        return found

    async def _read(self, task_ids: Sequence[str]) -> list[tuple[bytes | None, float]]:
        """Each task's stored status, and the time its expiry is judged by: this
        backend's clock, or with ``server_clock`` the server's, read in the same script
        (on a cluster, the clock of the node that holds the status)."""
        if not self.server_clock:
            values = await self._get_many([self._key(t) for t in task_ids])
            now = self.clock.now()
            return [(value, now) for value in values]
        client = self._client()
        if not self._cluster:
            now, *values = await client.script("status_get", [self._key(t) for t in task_ids], [""])
            return [(value, float(now)) for value in values]
        groups: dict[str, list[int]] = {}
        for i, task_id in enumerate(task_ids):
            groups.setdefault(self._tag(task_id), []).append(i)
        replies = await gather_all(
            client.script("status_get", [self._key(task_ids[i]) for i in group], [""])
            for group in groups.values()
        )
        read: list[tuple[bytes | None, float]] = [(None, 0.0)] * len(task_ids)
        for group, (now, *values) in zip(groups.values(), replies, strict=True):
            for i, value in zip(group, values, strict=True):
                read[i] = (value, float(now))
        return read

    async def _get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """GET of each key: one MGET, or on a cluster (keys on many slots) a pipeline."""
        if not self._cluster:
            values: list[bytes | None] = await self._client().command("MGET", *keys)
            return values
        return await self._client().commands([("GET", key) for key in keys])

    async def list_statuses(
        self, *, state: TaskState | None = None, task: str | None = None, limit: int = 100
    ) -> list[TaskStatus]:
        if limit <= 0:
            return []
        client = self._client()
        states = _STATES if state is None else (state,)
        # Per tag (on one server, just the prefix): the task names it has statuses of.
        names: dict[str, list[str]]
        if task is not None:
            names = {tag: [task] for tag in self._tags}
        else:
            replies = await client.commands([("SMEMBERS", f"{t}:task-names") for t in self._tags])
            names = {
                tag: sorted(m.decode() for m in members)
                for tag, members in zip(self._tags, replies, strict=True)
            }
        # One index per state and task name: a status write touches one, and listing
        # by state alone merges those of every task name (there are few of them).
        indexes = [
            f"{tag}:statuses:{s}:{n}" for tag, ns in names.items() for s in states for n in ns
        ]
        if not indexes:
            return []
        read: dict[bytes, TaskStatus | None] = {}
        depth = max(limit, 50)
        while True:
            # The newest `depth` of each index. Below the oldest score read from an index
            # that had more, other indexes may hold entries not read yet: only what is at
            # or above that boundary is known to be in order.
            ranges = await client.commands(
                [("ZREVRANGE", index, 0, depth - 1, "WITHSCORES") for index in indexes]
            )
            boundary = float("-inf")
            candidates: list[tuple[float, bytes, str]] = []
            for index, flat in zip(indexes, ranges, strict=True):
                pairs = _score_pairs(flat)
                if len(pairs) >= depth:
                    boundary = max(boundary, pairs[-1][0])
                candidates += [(score, tid, index) for score, tid in pairs]
            candidates = [c for c in candidates if c[0] >= boundary]
            unread = [c for c in candidates if c[1] not in read]
            if unread:
                values = await self._read([tid.decode() for _, tid, _ in unread])
                stale: list[tuple[str, str, bytes]] = []
                for (_, tid, index), (value, now) in zip(unread, values, strict=True):
                    if value is None:
                        stale.append(("ZREM", index, tid))  # Redis expired it: unindex it
                    read[tid] = self._live(value, now)
                if stale:
                    await client.commands(stale)
            live = [s for s in (read[c[1]] for c in candidates) if s is not None]
            if len(live) >= limit or boundary == float("-inf"):
                live.sort(key=lambda s: s.updated_at, reverse=True)
                return live[:limit]
            depth *= 4

    async def expire(self, task_id: str, ttl: float) -> bool:
        tag = self._tag(task_id)
        done = await self._client().script(
            "expire",
            [tag] if self._cluster else [],
            [tag, task_id, self._now(), ttl, keep_ms(ttl)],
        )
        return bool(done)

    async def wait_for_change(self, task_id: str, timeout: float) -> None:
        """Return soon after the status of ``task_id`` changes (in any process), or at ``timeout``.

        Woken by the ``PUBLISH`` of every status write; a change made between the
        caller's last ``get_status`` and this wait is found by comparing what it read.
        """
        client = self._client()
        channels, _ = await client.hub.subscribe([self._changed(task_id)], sticky=False)
        try:
            marks = client.hub.marks(channels)
            known = task_id in self._seen
            seen = self._seen.pop(task_id, None)
            value = await client.command("GET", self._key(task_id))
            if known and (None if value is None else hash(value)) != seen:
                return
            wait = min(timeout, self.poll_interval)
            await client.hub.wait(channels, marks, self.clock, wait)
        finally:
            await client.hub.release(channels)

    async def watch(
        self, task_id: str, *, timeout: float | None = None
    ) -> AsyncIterator[TaskStatus]:
        """Yield each new status of a task until it is final or ``timeout`` passes.

        One subscription for the whole watch, taken before the first read: a status
        written after a read moves the channel's count, so the wait after it returns at
        once and nothing is missed. Three round trips for a task that finishes while
        watched (subscribe, read, read the result), where the base class's loop of
        ``get_status`` and ``wait_for_change`` takes five.
        """
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        client = self._client()
        channels, _ = await client.hub.subscribe([self._changed(task_id)], sticky=False)
        try:
            last: TaskStatus | None = None
            while True:
                marks = client.hub.marks(channels)
                status = await self.get_status(task_id)
                if status is not None and status != last:
                    last = status
                    yield status
                    if status.state.is_final:
                        return
                remaining = 3600.0 if deadline is None else deadline - self.clock.monotonic()
                if remaining <= 0:
                    return
                await client.hub.wait(
                    channels, marks, self.clock, min(remaining, self.poll_interval)
                )
        finally:
            await client.hub.release(channels)

    # -- groups and chords ----------------------------------------------------------------

    def _group_keys(self, group_id: str) -> list[str]:
        base = f"{{{self._prefix}:group:{group_id}}}"
        return [base, f"{base}:results"]

    def _group(self, group_id: str, found: Any) -> GroupState | None:
        if not found:
            return None
        size, meta, claimed, flat, claimed_at, chord_meta = found
        results = {
            flat[i].decode(): _status_decoder.decode(flat[i + 1]) for i in range(0, len(flat), 2)
        }
        return GroupState(
            id=group_id,
            size=int(size),
            results=results,
            meta=_meta_decoder.decode(meta),
            chord_claimed_by=claimed.decode() if claimed else None,
            chord_claimed_at=float(claimed_at) if claimed_at else None,
            chord_meta=_meta_decoder.decode(chord_meta) if chord_meta else {},
        )

    async def init_group(
        self,
        group_id: str,
        size: int,
        *,
        meta: dict[str, object] | None = None,
        ttl: float | None = None,
    ) -> None:
        expiry: list[Arg] = [""] if ttl is None else [ttl, keep_ms(ttl)]
        await self._client().script(
            "group_init",
            self._group_keys(group_id),
            [size, _encoder.encode(dict(meta or {})), self._now(), *expiry],
        )

    async def add_group_result(self, group_id: str, status: TaskStatus) -> GroupState | None:
        found = await self._client().script(
            "group_add",
            self._group_keys(group_id),
            [self._now(), status.id, _encoder.encode(status)],
        )
        return self._group(group_id, found)

    async def get_group(self, group_id: str) -> GroupState | None:
        found = await self._client().script("group_get", self._group_keys(group_id), [self._now()])
        return self._group(group_id, found)

    async def claim_chord(
        self, group_id: str, owner: str, *, meta: dict[str, object] | None = None
    ) -> bool:
        args: list[Arg] = [self._now(), owner, call_token(), _encoder.encode(dict(meta or {}))]
        return bool(await self._client().script("chord_claim", self._group_keys(group_id), args))

    # -- worker heartbeats ----------------------------------------------------------------

    def _heartbeat_keys(self) -> list[str]:
        base = f"{{{self._prefix}:heartbeats}}"
        return [base, f"{base}:ends"]

    async def set_heartbeat(self, heartbeat: WorkerHeartbeat, *, ttl: float) -> None:
        await self._client().script(
            "heartbeat_set",
            self._heartbeat_keys(),
            [heartbeat.worker_id, _encoder.encode(heartbeat), self._now(), ttl],
        )

    async def get_heartbeat(self, worker_id: str) -> WorkerHeartbeat | None:
        found = await self._client().script(
            "heartbeat_get", self._heartbeat_keys(), [self._now(), worker_id]
        )
        return _heartbeat_decoder.decode(found[0]) if found and found[0] else None

    async def list_heartbeats(self) -> list[WorkerHeartbeat]:
        found = await self._client().script("heartbeat_get", self._heartbeat_keys(), [self._now()])
        return [_heartbeat_decoder.decode(data) for data in found if data]
