"""Waking waiters: at once for changes made in this process, within milliseconds for others.

SQLite has no notifications between processes. A change made in this process wakes
waiters through a :class:`~stem._notify.Notifier`; a change committed by another
process is seen by re-reading a small version counter (``stem_queue_signals`` for
queues, the ``version`` column for task statuses). A counter read is one indexed
lookup on the event loop's own connection (no thread hop), far cheaper than re-running
the query it guards. The reads are paced by a :class:`Pacer`: every millisecond
for a few milliseconds after activity, when an answer is most likely to come (a result
a moment after its enqueue, the next task a moment after the last), then less and less
often, up to the wake interval while nothing happens: low latency without polling hard
when idle.

To close the gap between "I read" and "I start waiting", the version seen by the read
is kept and the wait compares against it: for queues, the version at the last read
that drained them (kept by the broker); for a task status, the version the waiting
task itself last read (:class:`Baselines`).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from stem import Clock
from stem._notify import Notifier

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
        self.statuses: dict[str, Notifier] = {}


class Signals:
    """In-process wake-ups for one database file.

    Each event loop has its own notifiers, touched only from that loop's thread; a
    change made in one loop reaches the others through ``call_soon_threadsafe``
    (stores of one file may live in several loops: pytest's, Stem's sync portal's).
    """

    def __init__(self) -> None:
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopSignals] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def _mine(self) -> _LoopSignals:
        loop = asyncio.get_running_loop()
        with self._lock:
            found = self._loops.get(loop)
            if found is None:
                found = self._loops[loop] = _LoopSignals()
            return found

    def _each(self, act: Callable[[_LoopSignals], None]) -> None:
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        with self._lock:
            loops = list(self._loops.items())
        for loop, signals in loops:
            if loop is running:
                act(signals)
            elif not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(act, signals)
                except RuntimeError:  # closed meanwhile
                    pass

    def queues(self) -> Notifier:
        """The running loop's notifier for "a message may be ready"."""
        return self._mine().queues

    def queues_changed(self) -> None:
        self._each(lambda signals: signals.queues.notify())

    def status(self, task_id: str) -> Notifier:
        """The running loop's notifier for changes of one task's status."""
        statuses = self._mine().statuses
        notifier = statuses.get(task_id)
        if notifier is None:
            notifier = statuses[task_id] = Notifier()
        return notifier

    def statuses_changed(self, task_ids: list[str]) -> None:
        """Wake the watchers of these tasks, in every loop (one pass for a whole batch)."""

        def wake(signals: _LoopSignals) -> None:
            if not signals.statuses:
                return  # nobody in that loop watches anything: the common case in a worker
            for task_id in task_ids:
                notifier = signals.statuses.pop(task_id, None)
                if notifier is not None:
                    notifier.notify()

        self._each(wake)


_signals: dict[str, Signals] = {}
_signals_lock = threading.Lock()


def signals_for(path: str) -> Signals:
    with _signals_lock:
        found = _signals.get(path)
        if found is None:
            found = _signals[path] = Signals()
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
    probe: Callable[[], Awaitable[V]],
    baseline: V,
    pacer: Pacer,
) -> None:
    """Return when ``notifier`` fires, ``probe()`` differs from ``baseline``, or at ``deadline``.

    ``deadline`` is on ``clock.monotonic()``, so a FakeClock ends the wait when it is
    advanced. The probes are paced in real time by ``pacer``: they detect other
    processes' commits, which a FakeClock knows nothing about.
    """
    remaining = deadline - clock.monotonic()
    if remaining <= 0:
        await asyncio.sleep(0)
        return
    waiter = asyncio.ensure_future(notifier.wait(clock, remaining))
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=pacer.next_gap())
            if done:
                if clock.monotonic() < deadline:  # woken by this process, not timed out
                    pacer.active()
                return
            if await probe() != baseline:
                pacer.active()
                return
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.wait({waiter})  # let it unregister from the notifier and the clock
