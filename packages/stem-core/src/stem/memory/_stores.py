"""In-memory lock, revoke and schedule stores, and the control channel."""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import AsyncIterator

import msgspec

from .._clock import Clock, SystemClock
from .._messages import RevokeEntry
from ..contracts import (
    ControlChannel,
    ControlMessage,
    LockStore,
    RevokeStore,
    ScheduleConflictError,
    ScheduleEntry,
    ScheduleStore,
)

__all__ = [
    "MemoryControlChannel",
    "MemoryLockStore",
    "MemoryRevokeStore",
    "MemoryScheduleStore",
]


class MemoryLockStore(LockStore):
    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._locks: dict[str, tuple[str, float]] = {}

    def _holder(self, key: str) -> str | None:
        held = self._locks.get(key)
        if held is None or held[1] <= self.clock.now():
            self._locks.pop(key, None)
            return None
        return held[0]

    async def acquire(self, key: str, owner: str, ttl: float) -> bool:
        holder = self._holder(key)
        if holder is not None and holder != owner:
            return False
        self._locks[key] = (owner, self.clock.now() + ttl)
        return True

    async def renew(self, key: str, owner: str, ttl: float) -> bool:
        if self._holder(key) != owner:
            return False
        self._locks[key] = (owner, self.clock.now() + ttl)
        return True

    async def release(self, key: str, owner: str) -> bool:
        if self._holder(key) != owner:
            return False
        del self._locks[key]
        return True

    async def owner_of(self, key: str) -> str | None:
        return self._holder(key)


class MemoryRevokeStore(RevokeStore):
    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._entries: dict[str, RevokeEntry] = {}  # in seq order: a new revoke goes last
        self._seq = itertools.count(1)

    def _live(self) -> list[RevokeEntry]:
        now = self.clock.now()
        for tid in [
            t for t, e in self._entries.items() if e.expires_at is not None and e.expires_at <= now
        ]:
            del self._entries[tid]
        return list(self._entries.values())

    async def revoke(self, entry: RevokeEntry) -> RevokeEntry:
        stored = msgspec.structs.replace(entry, seq=next(self._seq))
        self._entries.pop(entry.task_id, None)
        self._entries[entry.task_id] = stored
        return stored

    async def get(self, task_id: str) -> RevokeEntry | None:
        self._live()
        return self._entries.get(task_id)

    async def list(self, *, since: int | None = None) -> list[RevokeEntry]:
        return [e for e in self._live() if since is None or e.seq > since]


_schedule_encoder = msgspec.json.Encoder()
_schedule_decoder = msgspec.json.Decoder(ScheduleEntry)


class MemoryScheduleStore(ScheduleStore):
    """Beat entries in process memory, the reference :class:`ScheduleStore`.

    Entries are kept encoded, as a database would keep them: a caller that changes an
    entry (or its ``spec`` dict) after ``upsert`` does not change the stored one, and an
    entry that cannot be encoded fails at ``upsert`` here as it would anywhere else.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        super().__init__(clock=clock)
        self._entries: dict[str, bytes] = {}  # insertion order; an upsert keeps the place

    def _load(self, entry_id: str) -> ScheduleEntry | None:
        data = self._entries.get(entry_id)
        return None if data is None else _schedule_decoder.decode(data)

    def _save(self, entry: ScheduleEntry) -> None:
        self._entries[entry.id] = _schedule_encoder.encode(entry)

    async def upsert(self, entry: ScheduleEntry) -> ScheduleEntry:
        stored = self._load(entry.id)
        if (stored.version if stored else 0) != entry.version:
            have = f"version {stored.version}" if stored else "no such entry"
            raise ScheduleConflictError(
                f"beat entry {entry.id!r} was written with version {entry.version}, but the "
                f"store has {have}: read it again and apply the change to what is stored"
            )
        new = msgspec.structs.replace(entry, version=entry.version + 1)
        if stored is not None:  # a claim belongs to the beat that holds it, not the writer
            new.claimed_by, new.claimed_until = stored.claimed_by, stored.claimed_until
        data = _schedule_encoder.encode(new)  # fails before anything changes
        self._entries[entry.id] = data
        return _schedule_decoder.decode(data)

    async def get(self, entry_id: str) -> ScheduleEntry | None:
        return self._load(entry_id)

    async def remove(self, entry_id: str) -> bool:
        return self._entries.pop(entry_id, None) is not None

    async def due(
        self, now: float, *, owner: str, claim_ttl: float, limit: int = 100
    ) -> builtins.list[ScheduleEntry]:
        held = self.clock.now()
        entries = (_schedule_decoder.decode(data) for data in self._entries.values())
        due = [
            e
            for e in entries
            if e.enabled
            and e.next_run_at is not None
            and e.next_run_at <= now
            and (e.claimed_until is None or e.claimed_until <= held)
        ]
        due.sort(key=lambda e: e.next_run_at or 0.0)  # stable: equal times in insertion order
        claimed = due[: max(limit, 0)]
        for entry in claimed:
            entry.claimed_by, entry.claimed_until = owner, held + claim_ttl
            self._save(entry)
        return claimed

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
        entry = self._load(entry_id)
        if (
            entry is None
            or entry.claimed_by != owner
            or entry.claimed_until is None
            or entry.claimed_until <= self.clock.now()
            or entry.next_run_at != due_at
        ):
            return False
        entry.last_run_at, entry.next_run_at = ran_at, next_run_at
        entry.last_drift, entry.last_error = drift, error
        if error is None:
            entry.total_runs += 1
        entry.claimed_by = entry.claimed_until = None
        entry.version += 1
        self._save(entry)
        return True

    async def release(self, entry_id: str, owner: str) -> bool:
        entry = self._load(entry_id)
        if entry is None or entry.claimed_by != owner:
            return False
        entry.claimed_by = entry.claimed_until = None
        self._save(entry)
        return True

    # Defined last: inside the class body, ``list`` names this method from here on.
    async def list(self) -> builtins.list[ScheduleEntry]:
        return [_schedule_decoder.decode(data) for data in self._entries.values()]


_control_encoder = msgspec.json.Encoder()
_control_decoder = msgspec.json.Decoder(ControlMessage)

#: How long (clock seconds) replies to one ``reply_to`` are kept for a sender to read.
REPLY_TTL = 300.0


def _copy(message: ControlMessage) -> ControlMessage:
    """The message as a receiver in another process would get it: a copy, through JSON."""
    return _control_decoder.decode(_control_encoder.encode(message))


class _Replies:
    """The replies to one ``reply_to``, and a wake-up for the readers waiting on them."""

    __slots__ = ("changed", "items", "readers", "until")

    def __init__(self, until: float) -> None:
        self.items: builtins.list[ControlMessage] = []
        self.changed = asyncio.Event()
        self.readers = 0
        self.until = until

    def add(self, message: ControlMessage, until: float) -> None:
        self.items.append(message)
        self.until = until
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class MemoryControlChannel(ControlChannel):
    """Remote control in process memory, the reference :class:`ControlChannel`.

    * A message with a ``destination`` goes to the listeners of that worker id; one
      without goes to every listener. A listener gets the messages sent after it
      started reading (its first ``__anext__``), never older ones.
    * Replies to one ``reply_to`` are kept ``reply_ttl`` clock seconds after the last
      one, so a sender that starts reading ``replies()`` after the first replies came
      still gets every one, in the order they were sent.
    """

    def __init__(self, *, clock: Clock | None = None, reply_ttl: float = REPLY_TTL) -> None:
        self.clock: Clock = clock or SystemClock()
        self.reply_ttl = reply_ttl
        self._listeners: dict[str, set[asyncio.Queue[ControlMessage]]] = {}
        self._replies: dict[str, _Replies] = {}

    async def send(self, message: ControlMessage) -> None:
        if message.destination is None:
            targets = [q for queues in self._listeners.values() for q in queues]
        else:
            targets = list(self._listeners.get(message.destination, ()))
        for queue in targets:
            queue.put_nowait(_copy(message))

    async def listen(self, worker_id: str) -> AsyncIterator[ControlMessage]:
        queue: asyncio.Queue[ControlMessage] = asyncio.Queue()
        self._listeners.setdefault(worker_id, set()).add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            queues = self._listeners.get(worker_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._listeners[worker_id]

    async def reply(self, reply_to: str, message: ControlMessage) -> None:
        self._forget_old()
        until = self.clock.now() + self.reply_ttl
        self._replies.setdefault(reply_to, _Replies(until)).add(_copy(message), until)

    async def replies(self, reply_to: str) -> AsyncIterator[ControlMessage]:
        self._forget_old()
        box = self._replies.setdefault(reply_to, _Replies(self.clock.now() + self.reply_ttl))
        box.readers += 1
        seen = 0
        try:
            while True:
                if seen < len(box.items):
                    seen += 1
                    yield box.items[seen - 1]
                    continue
                await box.changed.wait()
        finally:
            box.readers -= 1

    def _forget_old(self) -> None:
        now = self.clock.now()
        for reply_to in [
            k for k, box in self._replies.items() if box.until <= now and not box.readers
        ]:
            del self._replies[reply_to]
