"""Waking waiters: at once for changes made in this process, within milliseconds for others.

SQLite has no notifications between processes. A change made in this process wakes
waiters through a :class:`~stem._notify.Notifier`; a change committed by another
process is seen by re-reading a small version counter (``stem_queue_signals`` for
queues, the ``version`` column for task statuses) every few milliseconds. A
counter read is one indexed lookup, far cheaper than re-running the query it guards.

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

__all__ = ["Baselines", "Signals", "signals_for", "wait_for_change"]

K = TypeVar("K")
V = TypeVar("V")

#: First gap between two reads of a version counter; it doubles up to the wake interval.
_FIRST_PROBE = 0.002


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
    interval: float,
) -> None:
    """Return when ``notifier`` fires, ``probe()`` differs from ``baseline``, or at ``deadline``.

    ``deadline`` is on ``clock.monotonic()``, so a FakeClock ends the wait when it is
    advanced. The probes are paced in real time: they detect other processes' commits,
    which a FakeClock knows nothing about.
    """
    remaining = deadline - clock.monotonic()
    if remaining <= 0:
        await asyncio.sleep(0)
        return
    waiter = asyncio.ensure_future(notifier.wait(clock, remaining))
    try:
        gap = min(_FIRST_PROBE, interval)
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=gap)
            if done or await probe() != baseline:
                return
            gap = min(gap * 2, interval)
    finally:
        if not waiter.done():
            waiter.cancel()
            await asyncio.wait({waiter})  # let it unregister from the notifier and the clock
