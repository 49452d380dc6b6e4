"""Outages, logged once: when the broker (or a result backend elsewhere) stops answering,
a worker logs the first failure with its error, the later failures of the same outage at
DEBUG, and the recovery once, instead of a traceback per failed call from each loop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._errors import StemError

if TYPE_CHECKING:
    from .._app import Stem
    from .._clock import Clock

__all__ = ["Outage", "outages_of"]

log = logging.getLogger("stem.worker")


class Outage:
    """The failures of the calls a worker makes to one place: its broker, or its result
    backend when that is elsewhere.

    An outage starts with a failure and ends with a success. The loops that retry for
    ever (the consumer, heartbeats, revocation polling) name what failed with ``retried``:
    each of those must succeed again before the outage ends, so a loop that still fails
    is not hidden by another that works. A failure of a single call (a settle, a nack, a
    lease renewal) starts an outage or joins it, and the next success of any call ends it.
    """

    __slots__ = ("_clock", "_failing", "failures", "name", "since")

    def __init__(self, name: str, clock: Clock) -> None:
        self.name = name
        self._clock = clock
        self.since: float | None = None  # when the outage began (monotonic); None: no outage
        self.failures = 0
        self._failing: set[str] = set()

    def failed(self, what: str, exc: BaseException, *, retried: bool = False) -> None:
        """A call failed; ``what`` says what it did ("reading from the broker")."""
        if retried:
            self._failing.add(what)
        if self.since is not None:
            self.failures += 1
            log.debug("%s failed again: %s", what, _text(exc))
            return
        self.since = self._clock.monotonic()
        self.failures = 1
        # Stem's own errors say what is wrong and what to do; anything else may be a bug,
        # and its first occurrence gets its traceback.
        log.error(
            "%s failed: %s. The worker goes on trying; until %s answers again, "
            "further failures are logged at DEBUG",
            what,
            _text(exc),
            self.name,
            exc_info=None if isinstance(exc, StemError) else exc,
        )

    def recovered(self, what: str = "") -> None:
        """A call succeeded: the outage, if one is on, ends once no loop still fails."""
        if self.since is None:
            return
        self._failing.discard(what)
        if self._failing:
            return
        log.warning(
            "connection to %s restored after %.1f s (%d failed calls)",
            self.name,
            self._clock.monotonic() - self.since,
            self.failures,
        )
        self.since = None


def outages_of(app: Stem) -> tuple[Outage, Outage]:
    """The outages of a worker's broker and of its result backend: one and the same when
    both are at one URL (a Redis server is down for both at once)."""
    broker = Outage("the broker", app.clock)
    if app.backend_url == app.url:
        return broker, broker
    return broker, Outage("the result backend", app.clock)


def _text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, StemError) else f"{type(exc).__name__}: {exc}"
