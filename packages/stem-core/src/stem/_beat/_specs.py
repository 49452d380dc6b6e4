"""When a beat entry fires: interval, cron, solar and clocked specs.

Each spec is checked when it is built (a bad expression, an unknown time zone, an
event the sun never has at that place: :class:`ConfigurationError` naming the problem),
and answers two questions in seconds since the epoch:

* ``next_after(t)``: the first firing strictly after ``t`` (None: it never fires again);
* ``last_at_or_before(t)``: the latest firing at or before ``t`` (None: none yet).

The calendar work is done by well-kept libraries: cronsim (cron, with Debian cron's
rules for daylight-saving changes), astral (the sun) and the standard ``zoneinfo``
with the tzdata package (time zones on every platform).
"""

from __future__ import annotations

import abc
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any, ClassVar, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import astral
import astral.sun
from cronsim import CronSim, CronSimError

from .._errors import ConfigurationError

__all__ = [
    "Clocked",
    "Cron",
    "Interval",
    "Solar",
    "SolarEvent",
    "Spec",
    "spec_from_entry",
]

SolarEvent: TypeAlias = Literal["sunrise", "sunset", "dawn", "dusk", "noon"]
_SOLAR_EVENTS = ("sunrise", "sunset", "dawn", "dusk", "noon")

#: How far a solar spec looks for a day that has its event (polar day and night last
#: at most half a year; a year and a bit covers every place on Earth).
_SOLAR_HORIZON_DAYS = 370

#: Cron's nicknames, as Vixie and Debian cron read them.
_CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def _time_zone(name: Any) -> tzinfo:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"tz must be an IANA time zone name such as 'Europe/Paris', not {name!r}"
        )
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris', "
            "'America/New_York' or 'UTC'"
        ) from None


def _timestamp(value: Any, what: str) -> float:
    """Seconds since the epoch from an aware datetime or a number."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ConfigurationError(
                f"{what} must be an aware datetime (with a time zone), not the naive "
                f"{value.isoformat()}: add tzinfo=ZoneInfo('Europe/Paris') or timezone.utc"
            )
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigurationError(
            f"{what} must be an aware datetime or seconds since the epoch, not {value!r}"
        )
    return float(value)


def _number(value: Any, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ConfigurationError(f"{what} must be a number from {low:g} to {high:g}, not {value!r}")
    return float(value)


class Spec(abc.ABC):
    """When an entry fires. The concrete specs are :class:`Interval`, :class:`Cron`,
    :class:`Solar` and :class:`Clocked`."""

    __slots__ = ()

    #: The entry's ``kind`` in the store.
    kind: ClassVar[str]

    @abc.abstractmethod
    def next_after(self, t: float) -> float | None:
        """The first firing strictly after ``t`` (seconds since the epoch), or None."""

    @abc.abstractmethod
    def last_at_or_before(self, t: float) -> float | None:
        """The latest firing at or before ``t``, or None if there is none."""

    def first_after(self, t: float) -> float | None:
        """The due time of a new entry defined at ``t``."""
        return self.next_after(t)

    @abc.abstractmethod
    def to_spec(self) -> dict[str, Any]:
        """The spec as the store keeps it (plain JSON values)."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short text for people: ``every 30 s``, ``cron 0 9 * * * (Europe/Paris)``."""


@dataclass(frozen=True, init=False, slots=True)
class Interval(Spec):
    """Every ``every`` seconds (a number or a timedelta).

    The firings are ``anchor + k * every``: with an ``anchor`` (an aware datetime, or
    seconds since the epoch) the first is at the anchor; without one they are the
    multiples of ``every`` since the Unix epoch (``every=60`` fires at each whole
    minute), so every beat, and every restart, agrees on them.
    """

    kind: ClassVar[str] = "interval"
    every: float
    anchor: float | None

    def __init__(self, every: float | timedelta, anchor: datetime | float | None = None) -> None:
        if isinstance(every, timedelta):
            every = every.total_seconds()
        if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
            raise ConfigurationError(
                f"Interval(every=...) must be a positive number of seconds or a timedelta, "
                f"not {every!r}"
            )
        if not math.isfinite(every):
            raise ConfigurationError(f"Interval(every=...) must be finite, not {every!r}")
        object.__setattr__(self, "every", float(every))
        object.__setattr__(
            self, "anchor", None if anchor is None else _timestamp(anchor, "Interval(anchor=...)")
        )

    def _at(self, k: int) -> float:
        return (self.anchor or 0.0) + k * self.every

    def next_after(self, t: float) -> float | None:
        base = self.anchor or 0.0
        if self.anchor is not None and t < base:
            return base
        k = math.floor((t - base) / self.every) + 1
        # The division rounds: step to the exact first multiple past t.
        while self._at(k) <= t:
            k += 1
        while (self.anchor is None or k > 0) and self._at(k - 1) > t:
            k -= 1
        return self._at(k)

    def last_at_or_before(self, t: float) -> float | None:
        base = self.anchor or 0.0
        if self.anchor is not None and t < base:
            return None
        k = math.floor((t - base) / self.every)
        while self._at(k) > t:
            k -= 1
        while self._at(k + 1) <= t:
            k += 1
        return self._at(k)

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"every": self.every}
        if self.anchor is not None:
            spec["anchor"] = self.anchor
        return spec

    def describe(self) -> str:
        return f"every {self.every:g} s"


@dataclass(frozen=True, init=False, slots=True)
class Cron(Spec):
    """A cron expression read in time zone ``tz``.

    Five fields (minute hour day-of-month month day-of-week) or six (seconds first);
    names (``mon``, ``jan``), ranges, steps, ``L``, ``W`` and ``#`` as cronsim reads
    them, and the nicknames ``@hourly``, ``@daily``, ``@weekly``, ``@monthly``,
    ``@yearly``. Daylight-saving changes follow Debian cron: an entry at a set time
    that falls in the hour skipped in spring runs at the first minute after it
    (02:30 runs at 03:00 that day); one that falls in the hour repeated in autumn
    runs once, the first time (01:30 daylight time). Entries with a wildcard or step
    in the minute or hour field follow real time: the skipped hour has no firings,
    the repeated hour has them twice.
    """

    kind: ClassVar[str] = "cron"
    expr: str
    tz: str
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __init__(self, expr: str, tz: str = "UTC") -> None:
        if not isinstance(expr, str) or not expr.strip():
            raise ConfigurationError(f"a cron expression must be a non-empty string, not {expr!r}")
        expr = " ".join(expr.split())
        zone = _time_zone(tz)
        object.__setattr__(self, "expr", expr)
        object.__setattr__(self, "tz", tz)
        object.__setattr__(self, "_zone", zone)
        try:
            CronSim(self._fields, datetime.now(zone))
        except (CronSimError, ValueError, IndexError) as exc:
            raise ConfigurationError(
                f"invalid cron expression {expr!r}: {exc or 'cannot be read'}. Use five fields, "
                "minute hour day-of-month month day-of-week (or six, seconds first), "
                "e.g. '*/15 9-17 * * mon-fri', or a nickname such as '@daily'"
            ) from None
        if self.next_after(time.time()) is None:
            raise ConfigurationError(f"cron expression {expr!r} never fires")

    @property
    def _fields(self) -> str:
        return _CRON_NICKNAMES.get(self.expr.lower(), self.expr)

    def next_after(self, t: float) -> float | None:
        it = CronSim(self._fields, datetime.fromtimestamp(t, self._zone))
        # cronsim walks wall-clock time for set-time entries, so the first match can
        # be the earlier fold of a repeated hour, before t: walk on past it.
        for _ in range(4):
            try:
                found = next(it).timestamp()
            except StopIteration:  # no match for 50 years
                return None
            if found > t:
                return found
        return None

    def last_at_or_before(self, t: float) -> float | None:
        second = math.floor(t)
        it = CronSim(self._fields, datetime.fromtimestamp(second + 1, self._zone), reverse=True)
        for _ in range(4):
            try:
                found = next(it).timestamp()
            except StopIteration:
                return None
            if found <= t:
                return found
        return None

    def to_spec(self) -> dict[str, Any]:
        return {"expr": self.expr, "tz": self.tz}

    def describe(self) -> str:
        return f"cron {self.expr}" + ("" if self.tz.upper() == "UTC" else f" ({self.tz})")


@dataclass(frozen=True, init=False, slots=True)
class Solar(Spec):
    """A moment of the sun's day at a place: ``sunrise``, ``sunset``, ``dawn`` and
    ``dusk`` (civil twilight, the sun 6° below the horizon) or ``noon``.

    ``lat`` and ``lon`` are degrees (north and east positive); ``tz`` chooses which
    local day an event belongs to. On days without the event (polar day or night,
    where the sun never crosses the horizon) there is no firing: the next one is on
    the next day that has the event, up to a year ahead. A place and event that has
    none in the coming year is refused when the spec is built.
    """

    kind: ClassVar[str] = "solar"
    event: SolarEvent
    lat: float
    lon: float
    tz: str
    _zone: tzinfo = field(init=False, repr=False, compare=False)

    def __init__(self, event: SolarEvent, lat: float, lon: float, tz: str = "UTC") -> None:
        if event not in _SOLAR_EVENTS:
            raise ConfigurationError(
                f"unknown solar event {event!r}: use one of {', '.join(_SOLAR_EVENTS)}"
            )
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "lat", _number(lat, "Solar(lat=...)", -90, 90))
        object.__setattr__(self, "lon", _number(lon, "Solar(lon=...)", -180, 180))
        object.__setattr__(self, "tz", tz)
        object.__setattr__(self, "_zone", _time_zone(tz))
        if self.next_after(time.time()) is None:
            raise ConfigurationError(
                f"the sun has no {event} at latitude {lat}, longitude {lon} in the coming "
                "year: choose another event or place"
            )

    def _on(self, day: date) -> float | None:
        observer = astral.Observer(latitude=self.lat, longitude=self.lon)
        try:
            moment: datetime = getattr(astral.sun, self.event)(observer, day, tzinfo=self._zone)
        except ValueError:  # the sun does not cross that altitude on this day
            return None
        return moment.timestamp()

    def next_after(self, t: float) -> float | None:
        day = datetime.fromtimestamp(t, self._zone).date() - timedelta(days=1)
        for offset in range(_SOLAR_HORIZON_DAYS):
            found = self._on(day + timedelta(days=offset))
            if found is not None and found > t:
                return found
        return None

    def last_at_or_before(self, t: float) -> float | None:
        day = datetime.fromtimestamp(t, self._zone).date() + timedelta(days=1)
        for offset in range(_SOLAR_HORIZON_DAYS):
            found = self._on(day - timedelta(days=offset))
            if found is not None and found <= t:
                return found
        return None

    def to_spec(self) -> dict[str, Any]:
        return {"event": self.event, "lat": self.lat, "lon": self.lon, "tz": self.tz}

    def describe(self) -> str:
        return f"{self.event} at {self.lat:g}, {self.lon:g}" + (
            "" if self.tz.upper() == "UTC" else f" ({self.tz})"
        )


@dataclass(frozen=True, init=False, slots=True)
class Clocked(Spec):
    """Once, at ``at`` (an aware datetime, or seconds since the epoch).

    A clocked entry whose time has passed when it is first stored still fires once,
    as a missed firing (its ``catch_up`` decides: ``"skip"`` drops it when it is later
    than the beat's grace); afterwards it is never due again.
    """

    kind: ClassVar[str] = "clocked"
    at: float

    def __init__(self, at: datetime | float) -> None:
        object.__setattr__(self, "at", _timestamp(at, "Clocked(at=...)"))

    def next_after(self, t: float) -> float | None:
        return self.at if self.at > t else None

    def last_at_or_before(self, t: float) -> float | None:
        return self.at if self.at <= t else None

    def first_after(self, t: float) -> float | None:
        return self.at

    def to_spec(self) -> dict[str, Any]:
        return {"at": self.at}

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds")
        return f"once at {when}"


_KINDS: dict[str, type[Spec]] = {cls.kind: cls for cls in (Interval, Cron, Solar, Clocked)}


def spec_from_entry(kind: str, spec: dict[str, Any]) -> Spec:
    """The spec a stored entry describes.

    Raises:
        ConfigurationError: the kind is unknown, or the spec does not read as one.
    """
    cls = _KINDS.get(kind)
    if cls is None:
        raise ConfigurationError(
            f"unknown beat entry kind {kind!r}: use one of {', '.join(_KINDS)}"
        )
    if not isinstance(spec, dict):
        raise ConfigurationError(f"a {kind} spec must be an object, not {spec!r}")
    try:
        return cls(**spec)
    except TypeError as exc:  # a missing or unexpected field
        raise ConfigurationError(f"the {kind} spec {spec!r} does not fit: {exc}") from None
