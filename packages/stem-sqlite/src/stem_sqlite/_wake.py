"""Waking waiters: at once for changes made in this process, within milliseconds for others.

A change made in this process wakes waiters through a :class:`~stem._notify.Notifier`;
one committed by another process arrives as a datagram on this process's socket for
the file (:mod:`._bus`), read by the event loop like any other I/O. Datagrams can
miss (a socket bound a moment after the send, a platform without Unix sockets), so
waiters also read a version now and then: ``PRAGMA data_version`` for queues (it
changes with every commit of another connection, at no write cost), the row's
``version`` column for a task status. The reads are paced by a :class:`Pacer`: every
millisecond for a few milliseconds after activity, then less and less often, up to
the wake interval while nothing happens.

To close the gap between "I read" and "I start waiting", the version seen before the
read is kept and the wait compares against it: for queues, a mark taken before the
last reserve (kept by the broker: this loop's count of wake-ups and the data version);
for a task status, the version the waiting task itself last read (:class:`Baselines`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from stem import Clock
from stem._notify import Notifier

from ._bus import QUEUES, STATUSES, WakeBus

__all__ = ["Baselines", "Pacer", "Signals", "signals_for", "wait_for_change"]

K = TypeVar("K")
V = TypeVar("V")

#: Gap between two reads of a version counter right after activity (asyncio's timers
#: on epoll wait whole milliseconds, so a shorter gap would be this one anyway)...
FIRST_PROBE = 0.001
#: ...kept for this many reads (the few milliseconds in which a result or the next task
#: usually comes)...
HOT_PROBES = 8
#: ...then growing by this factor at each read that finds nothing, up to the wake
#: interval (about 30 ms from the first read to a wake interval of 10 ms).
PROBE_GROWTH = 1.5


class Pacer:
    """How long to wait before the next read of a version counter.

    Short right after activity (:meth:`active`), longer at each read that finds no
    change, up to ``interval``. One pacer may serve several waits in a row (a worker
    waiting on its queues again and again): an idle worker stays at ``interval``.
    """

    __slots__ = ("_first", "_hot", "gap", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._first = min(FIRST_PROBE, interval)
        self.gap = self._first
        self._hot = HOT_PROBES

    def active(self) -> None:
        """Something happened: read again soon."""
        self.gap = self._first
        self._hot = HOT_PROBES

    def next_gap(self) -> float:
        gap = self.gap
        if self._hot > 0:
            self._hot -= 1
        else:
            self.gap = min(gap * PROBE_GROWTH, self.interval)
        return gap


class _LoopSignals:
    def __init__(self) -> None:
        self.queues = Notifier()
        self.queue_wakes: dict[str, int] = {}  # wake-ups by queue name: a wait's baseline
        self.statuses: dict[str, Notifier] = {}
        self.listening: dict[str, object | None] = {}  # bus sockets by kind

    def wake_queues(self, names: list[str]) -> None:
        for name in names:
            self.queue_wakes[name] = self.queue_wakes.get(name, 0) + 1
        self.queues.notify()

    def wake_statuses(self, task_ids: list[str] | None) -> None:
        """Wake the watchers of ``task_ids`` (None: of every task) in this loop."""
        if not self.statuses:
            return  # nobody in this loop watches anything: the common case in a worker
        if task_ids is None:
            notifiers = list(self.statuses.values())
            self.statuses.clear()
        else:
            notifiers = [n for t in task_ids if (n := self.statuses.pop(t, None)) is not None]
        for notifier in notifiers:
            notifier.notify()


class Signals:
    """Wake-ups for one database file: in this process, and to and from others.

    Each event loop has its own notifiers, touched only from that loop's thread; a
    change made in one loop reaches the others through ``call_soon_threadsafe``
    (stores of one file may live in several loops: pytest's, Stem's sync portal's),
    and other processes through the file's :class:`~._bus.WakeBus`.
    """

    def __init__(self, path: str) -> None:
        self.bus = WakeBus(path)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSignals] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        # The loops as a tuple, read without the lock on every change this process makes
        # (iterating the weak dictionary cost more than the rest of a small enqueue).
        self._snapshot: tuple[tuple[weakref.ref[asyncio.AbstractEventLoop], _LoopSignals], ...] = ()

    def _mine(self) -> _LoopSignals:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._loops.get(loop)
            if found is None:
                found = self._loops[loop] = _LoopSignals()
                self._snap()
            return found

    def _snap(self) -> None:
        self._snapshot = tuple(
            (weakref.ref(loop), signals) for loop, signals in self._loops.items()
        )

    def _each(self, act: Callable[[_LoopSignals], None]) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for ref, signals in self._snapshot:
            loop = ref()
            if loop is None:  # collected: let its signals (and sockets) go
                with self._lock:
                    self._snap()
                continue
            if loop is running:
                act(signals)
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(act, signals)
                except RuntimeError:  # closed meanwhile
                    pass

    def _listen(self, signals: _LoopSignals, kind: str) -> None:
        """Have other processes' wake-ups of ``kind`` reach this loop (once per loop)."""
        if kind in signals.listening:
            return
        if kind == QUEUES:
            on_wake: Callable[[bytes], None] = lambda names: signals.wake_queues(  # noqa: E731
                names.decode(errors="replace").split("\n")
            )
        else:
            on_wake = lambda ids: signals.wake_statuses(  # noqa: E731
                ids.decode(errors="replace").split("\n") if ids else None
            )
        loop = asyncio.get_running_loop()
        signals.listening[kind] = self.bus.listen(loop, kind, on_wake)

    def queues(self) -> Notifier:
        """The running loop's notifier for "a message may be ready"."""
        signals = self._mine()
        self._listen(signals, QUEUES)
        return signals.queues

    def queue_wakes(self, names: tuple[str, ...]) -> int:
        """How many wake-ups for these queues the running loop has had (a baseline)."""
        wakes = self._mine().queue_wakes
        return sum(wakes.get(name, 0) for name in names)

    def queues_changed(self, names: list[str]) -> None:
        """Messages may be ready in these queues: wake their waiters here and elsewhere."""
        self._each(lambda signals: signals.wake_queues(names))
        self.bus.send(QUEUES, "\n".join(names).encode(errors="replace"))

    def status(self, task_id: str) -> Notifier:
        """The running loop's notifier for changes of one task's status."""
        signals = self._mine()
        self._listen(signals, STATUSES)
        notifier = signals.statuses.get(task_id)
        if notifier is None:
            notifier = signals.statuses[task_id] = Notifier()
        return notifier

    def statuses_changed(self, task_ids: list[str]) -> None:
        """Wake the watchers of these tasks, in every loop and process (one pass a batch)."""
        self._each(lambda signals: signals.wake_statuses(task_ids))
        self.bus.send(STATUSES, "\n".join(task_ids).encode(errors="replace"))


_signals: dict[str, Signals] = {}
_signals_lock = threading.Lock()


def signals_for(path: str) -> Signals:
    with _signals_lock:
        found = _signals.get(path)
        if found is None:
            found = _signals[path] = Signals(path)
        return found


class Baselines(Generic[K, V]):
    """The last version each asyncio task read for a key, handed to its next wait."""

    def __init__(self) -> None:
        self._seen: weakref.WeakKeyDictionary[asyncio.Task[Any], tuple[K, V]] = (
            weakref.WeakKeyDictionary()
        )

    def remember(self, key: K, version: V) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._seen[task] = (key, version)

    def take(self, key: K) -> tuple[bool, V | None]:
        """``(True, version)`` if this task last read ``key``; forgets it either way."""
        task = asyncio.current_task()
        seen = self._seen.pop(task, None) if task is not None else None
        if seen is None or seen[0] != key:
            return False, None
        return True, seen[1]


async def wait_for_change(
    *,
    clock: Clock,
    deadline: float,
    notifier: Notifier,
    changed: Callable[[], Awaitable[bool]],
    pacer: Pacer,
) -> None:
    """Return when ``changed()`` says so, or at ``deadline``.

    ``changed()`` is asked when ``notifier`` fires (a wake-up may concern other queues
    or tasks) and at each gap of ``pacer``, in real time: those checks detect other
    processes' commits, which a FakeClock knows nothing about. ``deadline`` is on
    ``clock.monotonic()``, so a FakeClock ends the wait when it is advanced.
    """
    while True:
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            await asyncio.sleep(0)
            return
        waiter = asyncio.ensure_future(notifier.wait(clock, remaining))
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=pacer.next_gap())
                if done and clock.monotonic() >= deadline:
                    return
                if await changed():
                    pacer.active()
                    return
                if done:
                    break  # a wake-up for something else: wait again
        finally:
            if not waiter.done():
                waiter.cancel()
                await asyncio.wait({waiter})  # let it unregister from the notifier and the clock
