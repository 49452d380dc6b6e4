"""The beat loop: claim the due entries, enqueue their firings, record them, sleep.

Several beats may share a store. ``ScheduleStore.due`` claims each due entry for one
beat until ``claim_ttl`` runs out, and ``mark_executed`` records a firing only for the
live claim on it, so each firing is fired by one beat; if a beat dies holding a claim,
another takes the entry over once the claim runs out. A beat that dies after
enqueueing a firing but before recording it leaves the task behind: each firing is
enqueued under a task id and unique key of its own (the entry and its nominal time),
so the beat that takes over finds it and does not enqueue it again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import signal
import socket
from typing import TYPE_CHECKING, Any

from .._errors import ArgumentError, ConfigurationError, SerializationError
from ..contracts import ScheduleEntry, ScheduleStore
from ._entries import SyncReport, sync_definitions
from ._plan import jittered, plan
from ._specs import spec_from_entry

if TYPE_CHECKING:
    from .._app import Stem

__all__ = ["Beat", "firing_task_id"]

log = logging.getLogger("stem.beat")


def firing_task_id(entry_id: str, at: float) -> str:
    """The task id of an entry's firing at nominal time ``at``: the same in every beat.

    Shaped like the other task ids (a UUIDv7: the firing's milliseconds first, so ids
    sort by time), with the rest taken from a hash of the entry and the time.
    """
    millis = max(0, int(at * 1000)) & 0xFFFF_FFFF_FFFF
    digest = hashlib.sha256(f"{entry_id}\0{at!r}".encode()).digest()
    value = millis << 80 | int.from_bytes(digest[:10], "big")
    value = (value & ~(0xF << 76)) | (0x7 << 76)  # version 7
    value = (value & ~(0x3 << 62)) | (0x2 << 62)  # RFC 9562 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _default_owner() -> str:
    return f"beat-{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"


class Beat:
    """Fires the app's beat entries on time; run one or several (on one store) per app.

    Use it inside a program (``async with app.beat():``), or run it until a signal
    (``await beat.run()``, what ``stem beat`` does). At start it stores the entries
    defined in code (``app.schedule(...)``).

    Args:
        app: the app whose tasks the entries name and whose schedule store holds them.
        owner: this beat's name in claims (default: host, process id and a random part).
        claim_ttl: seconds a due entry stays this beat's while it fires it; if the beat
            dies, another takes the entry over this long after. Keep it well above the
            time one firing takes (an enqueue).
        max_interval: the longest sleep between looks at the store, so entries added
            or changed elsewhere (``stem schedule add``) are seen within it.
        grace: how late a firing may be and still fire under ``catch_up="skip"``; keep
            it above ``claim_ttl``, so a firing taken over from a dead beat still fires.
        batch: entries claimed per look at the store.
    """

    def __init__(
        self,
        app: Stem,
        *,
        owner: str | None = None,
        claim_ttl: float = 30.0,
        max_interval: float = 5.0,
        grace: float = 60.0,
        batch: int = 100,
    ) -> None:
        for name, value in (("claim_ttl", claim_ttl), ("max_interval", max_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigurationError(
                    f"{name} must be a positive number of seconds, not {value!r}"
                )
        if isinstance(grace, bool) or not isinstance(grace, int | float) or grace < 0:
            raise ConfigurationError(f"grace must be seconds >= 0, not {grace!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigurationError(f"batch must be a whole number >= 1, not {batch!r}")
        self.app = app
        self.owner = owner or _default_owner()
        self.claim_ttl = float(claim_ttl)
        self.max_interval = float(max_interval)
        self.grace = float(grace)
        self.batch = batch
        #: Firings enqueued, found enqueued already (by a beat that died before
        #: recording them), recorded as failed, not recorded (claim lost or entry
        #: changed meanwhile), and entries whose firing raised (left to be retried).
        self.counters = {"fired": 0, "already_enqueued": 0, "failed": 0, "lost": 0, "errors": 0}
        self.ticks = 0
        self.last_sync: SyncReport | None = None
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._signal_stop: asyncio.Future[None] | None = None

    @property
    def store(self) -> ScheduleStore:
        return self.app.schedule_store

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Sync the entries defined in code, then fire in the background; returns at once."""
        if self._loop is not None:
            return
        self.last_sync = await self.sync()
        self._loop = asyncio.ensure_future(self._run_loop())
        log.info(
            "beat %s ready: claims last %gs, looks at the store at least every %gs",
            self.owner,
            self.claim_ttl,
            self.max_interval,
        )

    async def sync(self) -> SyncReport:
        """Store the app's entries defined in code (see :func:`sync_definitions`)."""
        report = await sync_definitions(self.store, self.app.schedules, self.app.clock.now())
        if report.created or report.updated:
            log.info(
                "beat entries from code: %d created, %d updated, %d unchanged",
                len(report.created),
                len(report.updated),
                len(report.unchanged),
            )
        if report.no_longer_in_code:
            log.warning(
                "beat entries stored from code but no longer defined there (left alone; "
                "`stem schedule remove ID` removes one): %s",
                ", ".join(report.no_longer_in_code),
            )
        return report

    async def stop(self) -> None:
        """Stop after the firing under way (if any) is recorded."""
        self._stopping.set()
        if self._loop is not None:
            await asyncio.shield(self._loop)

    async def run(self) -> None:
        """Start and run until SIGTERM or SIGINT."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        try:
            await self.start()
            await self._stopped.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        log.info("%s: beat %s stopping", signal.Signals(signum).name, self.owner)
        self._signal_stop = asyncio.ensure_future(self.stop())

    async def __aenter__(self) -> Beat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop -------------------------------------------------------------------------

    async def _run_loop(self) -> None:
        clock = self.app.clock
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    wake_at = await self.tick()
                    failures = 0
                except Exception as exc:  # the store is away: try again, a little later each time
                    failures += 1
                    pause = min(self.max_interval, 0.5 * 2 ** min(failures, 10))
                    log.error(
                        "beat %s: cannot read the schedule store (%s); again in %.1fs",
                        self.owner,
                        exc,
                        pause,
                    )
                    wake_at = clock.now() + pause
                await self._sleep(wake_at - clock.now())
        finally:
            self._stopped.set()

    async def _sleep(self, seconds: float) -> None:
        if self._stopping.is_set():
            return
        nap = asyncio.ensure_future(self.app.clock.sleep(max(0.0, seconds)))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({nap, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (nap, stop):
                waiter.cancel()
            await asyncio.gather(nap, stop, return_exceptions=True)

    async def tick(self) -> float:
        """Fire every entry due now; returns when to look again (clock time)."""
        self.ticks += 1
        fired_any = False
        while True:
            now = self.app.clock.now()
            due = await self.store.due(
                now, owner=self.owner, claim_ttl=self.claim_ttl, limit=self.batch
            )
            for entry in due:
                fired_any = True
                try:
                    await self._fire(entry)
                except Exception:  # a broker away, say: the claim runs out, then it is retried
                    self.counters["errors"] += 1
                    log.exception(
                        "beat entry %s: firing failed; it is tried again when this beat's "
                        "claim runs out (%gs)",
                        entry.id,
                        self.claim_ttl,
                    )
            if len(due) < self.batch or self._stopping.is_set():
                break
        return await self._next_wake(fired_any)

    async def _next_wake(self, fired_any: bool) -> float:
        """The earliest time something may be due: an entry's next run, or the end of
        another beat's claim on a due entry (if that beat died, the entry is ours then)."""
        now = self.app.clock.now()
        wake = now + self.max_interval
        held_now = self.store.clock.now()
        for entry in await self.store.list():
            if not entry.enabled or entry.next_run_at is None:
                continue
            at = entry.next_run_at
            if entry.claimed_until is not None and entry.claimed_until > held_now:
                at = max(at, now + (entry.claimed_until - held_now))
            wake = min(wake, at)
        if wake <= now and not fired_any:
            # Due but not handed to us (a store whose clock runs behind ours): do not spin.
            wake = now + min(self.max_interval, 0.05)
        return wake

    async def _fire(self, entry: ScheduleEntry) -> None:
        due_at = entry.next_run_at
        if due_at is None:  # due() returns only entries with a due time
            return
        now = self.app.clock.now()
        try:
            spec = spec_from_entry(entry.kind, entry.spec)
        except ConfigurationError as exc:
            # Not fired again until its spec is fixed (sync from code, or the CLI).
            await self._record(entry, due_at, now, None, error=f"bad spec: {exc}")
            return
        firings = plan(
            spec,
            due_at=due_at,
            now=now,
            catch_up=entry.catch_up,
            limit=entry.catch_up_limit,
            jitter=entry.jitter,
            grace=self.grace,
        )
        next_run_at = jittered(firings.next_at, entry.jitter)
        if entry.task not in self.app.tasks:
            known = (
                ", ".join(sorted(n for n in self.app.tasks if not n.startswith("stem."))) or "none"
            )
            error = (
                f"task {entry.task!r} is not registered with the beat's app (it registers: "
                f"{known}); register it, or fix the entry's task"
            )
            await self._record(entry, due_at, now, next_run_at, error=error)
            return
        try:
            for at in firings.firings:
                await self._enqueue(entry, at)
        except (ArgumentError, SerializationError, ConfigurationError) as exc:
            await self._record(
                entry, due_at, now, next_run_at, error=f"{type(exc).__name__}: {exc}"
            )
            return
        ran_at = self.app.clock.now()
        skipped: str | None = None
        if not firings.firings:
            skipped = (
                f"skipped {firings.skipped} missed firing(s) (catch_up='skip'): the entry was "
                f"{ran_at - due_at:.0f}s late, more than the beat's grace of {self.grace:g}s"
            )
        elif firings.skipped:
            log.info(
                "beat entry %s: %d missed firing(s) left out (catch_up=%r)",
                entry.id,
                firings.skipped,
                entry.catch_up,
            )
        await self._record(entry, due_at, ran_at, next_run_at, error=skipped, fired=True)

    async def _enqueue(self, entry: ScheduleEntry, at: float) -> None:
        task_id = firing_task_id(entry.id, at)
        if await self.app.get_status(task_id) is not None:
            # Enqueued by a beat that died before it recorded the firing.
            self.counters["already_enqueued"] += 1
            log.info("beat entry %s: firing at %.3f was enqueued already", entry.id, at)
            return
        options: dict[str, Any] = dict(entry.options)
        meta = {**(options.pop("meta", None) or {}), "stem.beat": {"entry": entry.id, "at": at}}
        await self.app.enqueue(
            entry.task,
            entry.args,
            entry.kwargs,
            queue=entry.queue or None,
            task_id=task_id,
            unique_key=f"beat:{entry.id}:{at!r}",
            meta=meta,
            **options,
        )
        self.counters["fired"] += 1
        log.debug("beat entry %s: enqueued its firing at %r as task %s", entry.id, at, task_id)

    async def _record(
        self,
        entry: ScheduleEntry,
        due_at: float,
        ran_at: float,
        next_run_at: float | None,
        *,
        error: str | None = None,
        fired: bool = False,
    ) -> None:
        if error is not None and not fired:
            self.counters["failed"] += 1
            log.error("beat entry %s: %s", entry.id, error)
        recorded = await self.store.mark_executed(
            entry.id,
            owner=self.owner,
            due_at=due_at,
            ran_at=ran_at,
            next_run_at=next_run_at,
            drift=ran_at - due_at,
            error=error,
        )
        if not recorded:
            self.counters["lost"] += 1
            log.warning(
                "beat entry %s changed, went, or this beat's claim ran out while it fired: "
                "the firing is not recorded here (its task id keeps it from being enqueued "
                "twice)",
                entry.id,
            )
