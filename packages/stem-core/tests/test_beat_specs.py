"""Beat specs: when interval, cron, solar and clocked entries fire, their edge cases
(daylight-saving changes both ways, 29 February, polar day and night) and bad input."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from stem import Clocked, ConfigurationError, Cron, Interval, Solar
from stem._beat import _specs, spec_from_entry
from stem._beat._plan import jittered, nominal, plan

NY = ZoneInfo("America/New_York")
OSLO = ZoneInfo("Europe/Oslo")
TROMSO = (69.65, 18.96)


def at(*parts: int, tz: ZoneInfo = NY, fold: int = 0) -> float:
    return datetime(*parts, tzinfo=tz, fold=fold).timestamp()  # type: ignore[misc]


def local(t: float | None, tz: ZoneInfo = NY) -> str:
    assert t is not None
    return datetime.fromtimestamp(t, tz).isoformat()


def firings(spec: Cron | Solar | Interval, start: float, n: int) -> list[float]:
    out: list[float] = []
    t = start
    for _ in range(n):
        found = spec.next_after(t)
        assert found is not None and found > t
        out.append(found)
        t = found
    return out


# -- cron and daylight saving -------------------------------------------------------------


def test_a_set_time_in_the_skipped_spring_hour_runs_at_the_first_minute_after_it() -> None:
    # New York skips 02:00-03:00 on 10 March 2024: the 02:30 job runs at 03:00 that day
    spec = Cron("30 2 * * *", tz="America/New_York")
    got = firings(spec, at(2024, 3, 9, 12), 3)
    assert [local(t) for t in got] == [
        "2024-03-10T03:00:00-04:00",
        "2024-03-11T02:30:00-04:00",
        "2024-03-12T02:30:00-04:00",
    ]


def test_a_set_time_in_the_repeated_autumn_hour_runs_once_the_first_time() -> None:
    # New York repeats 01:00-02:00 on 3 November 2024: the 01:30 job runs once, at
    # 01:30 daylight time, and not again at 01:30 standard time an hour later
    spec = Cron("30 1 * * *", tz="America/New_York")
    got = firings(spec, at(2024, 11, 2, 12), 3)
    assert [local(t) for t in got] == [
        "2024-11-03T01:30:00-04:00",
        "2024-11-04T01:30:00-05:00",
        "2024-11-05T01:30:00-05:00",
    ]
    # Asked from inside the repeated hour (01:15 standard time, after the firing)
    assert local(spec.next_after(at(2024, 11, 3, 1, 15, fold=1))) == "2024-11-04T01:30:00-05:00"
    assert local(spec.last_at_or_before(at(2024, 11, 3, 1, 45, fold=1))) == (
        "2024-11-03T01:30:00-04:00"
    )


def test_wildcard_minutes_follow_real_time_through_both_changes() -> None:
    # Every half hour in the 1 o'clock hour: four firings on the day it is repeated...
    spec = Cron("*/30 1 * * *", tz="America/New_York")
    got = firings(spec, at(2024, 11, 3, 0, 50), 5)
    assert [local(t) for t in got] == [
        "2024-11-03T01:00:00-04:00",
        "2024-11-03T01:30:00-04:00",
        "2024-11-03T01:00:00-05:00",
        "2024-11-03T01:30:00-05:00",
        "2024-11-04T01:00:00-05:00",
    ]
    # ...and none in the 2 o'clock hour on the day it is skipped
    spring = Cron("*/30 2 * * *", tz="America/New_York")
    assert local(spring.next_after(at(2024, 3, 10, 0))) == "2024-03-11T02:00:00-04:00"


def test_twenty_ninth_of_february() -> None:
    leap_day = Cron("0 12 29 2 *")
    got = firings(leap_day, at(2023, 1, 1, tz=ZoneInfo("UTC")), 2)
    assert [local(t, ZoneInfo("UTC")) for t in got] == [
        "2024-02-29T12:00:00+00:00",
        "2028-02-29T12:00:00+00:00",
    ]
    last_of_february = Cron("0 0 L 2 *")
    got = firings(last_of_february, at(2023, 1, 1, tz=ZoneInfo("UTC")), 2)
    assert [local(t, ZoneInfo("UTC"))[:10] for t in got] == ["2023-02-28", "2024-02-29"]
    # A daily interval steps over it like any other day
    daily = Interval(timedelta(days=1))
    assert local(daily.next_after(at(2024, 2, 28, 12, tz=ZoneInfo("UTC"))), ZoneInfo("UTC")) == (
        "2024-02-29T00:00:00+00:00"
    )


@pytest.mark.parametrize(
    ("expr", "tz"),
    [
        ("30 2 * * *", "America/New_York"),
        ("30 1 * * *", "America/New_York"),
        ("*/20 1-3 * * *", "America/New_York"),
        ("0 12 29 2 *", "UTC"),
        ("15 */6 * * mon-fri", "Europe/Paris"),
        ("*/7 * * * * *", "Australia/Lord_Howe"),  # six fields; a half-hour DST change
    ],
)
def test_last_at_or_before_agrees_with_next_after(expr: str, tz: str) -> None:
    spec = Cron(expr, tz=tz)
    start = at(2024, 2, 27, tz=ZoneInfo(tz)) if "29 2" in expr else at(2024, 11, 2, tz=ZoneInfo(tz))
    if expr.startswith("*/7"):
        start = at(2024, 4, 7, 1, 20, tz=ZoneInfo(tz))
    times = firings(spec, start, 40)
    for before, current in itertools.pairwise(times):
        assert spec.last_at_or_before(current) == current
        assert spec.last_at_or_before(current - 0.5) == before
        assert spec.last_at_or_before((before + current) / 2) == before


def test_cron_nicknames() -> None:
    daily = Cron("@daily", tz="Europe/Oslo")
    assert local(daily.next_after(at(2024, 6, 1, 10, tz=OSLO)), OSLO) == "2024-06-02T00:00:00+02:00"
    assert daily.describe() == "cron @daily (Europe/Oslo)"


@pytest.mark.parametrize(
    ("expr", "tz", "message"),
    [
        ("61 * * * *", "UTC", "invalid cron expression '61 \\* \\* \\* \\*': Bad minute"),
        ("0 0 30 2 *", "UTC", "Bad day-of-month"),
        ("* * *", "UTC", "Wrong number of fields"),
        ("0 9 * * funday", "UTC", "Bad day-of-week"),
        ("", "UTC", "non-empty string"),
        ("0 9 * * *", "Mars/Olympus_Mons", "unknown time zone 'Mars/Olympus_Mons'"),
        ("0 9 * * *", "", "IANA time zone name"),
    ],
)
def test_bad_cron_input_is_refused_when_defined(expr: str, tz: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Cron(expr, tz=tz)


# -- solar ----------------------------------------------------------------------------------


def test_polar_night_skips_to_the_next_day_with_a_sunrise() -> None:
    # Tromsø has no sunrise from late November to mid January
    sunrise = Solar("sunrise", *TROMSO, tz="Europe/Oslo")
    after = sunrise.next_after(at(2024, 12, 1, tz=OSLO))
    assert after is not None and local(after, OSLO)[:10] in ("2025-01-15", "2025-01-16")
    # ...and the last one before it was in November
    before = sunrise.last_at_or_before(at(2024, 12, 20, tz=OSLO))
    assert before is not None and local(before, OSLO)[:7] == "2024-11"
    # Dawn (civil twilight) still comes every day of the polar night
    dawn = Solar("dawn", *TROMSO, tz="Europe/Oslo")
    assert local(dawn.next_after(at(2024, 12, 21, tz=OSLO)), OSLO)[:10] == "2024-12-21"


def test_polar_day_skips_to_the_next_day_with_a_sunset() -> None:
    sunset = Solar("sunset", *TROMSO, tz="Europe/Oslo")
    after = sunset.next_after(at(2024, 6, 21, tz=OSLO))
    assert after is not None and local(after, OSLO)[:7] == "2024-07"
    # Noon is every day, polar day or not
    noon = Solar("noon", *TROMSO, tz="Europe/Oslo")
    assert local(noon.next_after(at(2024, 6, 21, tz=OSLO)), OSLO)[:10] == "2024-06-21"


def test_solar_firings_agree_both_ways() -> None:
    sunrise = Solar("sunrise", 51.48, 0.0, tz="Europe/London")
    times = firings(sunrise, at(2024, 3, 28, tz=ZoneInfo("Europe/London")), 10)
    assert all(20 * 3600 < b - a < 28 * 3600 for a, b in itertools.pairwise(times))
    for t in times:
        assert sunrise.last_at_or_before(t) == t


def test_an_event_with_no_day_within_the_horizon_never_fires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sunrise = Solar("sunrise", *TROMSO)
    monkeypatch.setattr(_specs, "_SOLAR_HORIZON_DAYS", 10)
    assert sunrise.next_after(at(2024, 12, 1, tz=OSLO)) is None

    # Defined at a time with none in reach: refused, naming place and event
    class December:
        @staticmethod
        def time() -> float:
            return at(2024, 12, 1, tz=OSLO)

    monkeypatch.setattr(_specs, "time", December)
    with pytest.raises(ConfigurationError, match=r"the sun has no sunrise at latitude 69\.65"):
        Solar("sunrise", *TROMSO)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("moonrise", 0, 0), "unknown solar event 'moonrise'"),
        (("sunrise", 91, 0), r"lat=\.\.\.\) must be a number from -90 to 90"),
        (("sunrise", 0, 181), r"lon=\.\.\.\) must be a number from -180 to 180"),
        (("sunrise", "north", 0), "must be a number"),
        (("sunrise", 10, 10, "Nowhere/Land"), "unknown time zone"),
    ],
)
def test_bad_solar_input_is_refused_when_defined(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Solar(*args)  # type: ignore[arg-type]


# -- interval and clocked ---------------------------------------------------------------------


def test_an_interval_without_anchor_fires_at_multiples_since_the_epoch() -> None:
    every = Interval(60)
    assert every.next_after(1_700_000_000.0) == 1_700_000_040.0
    assert every.next_after(1_700_000_040.0) == 1_700_000_100.0
    assert every.last_at_or_before(1_700_000_039.9) == 1_699_999_980.0
    assert Interval(timedelta(minutes=1)) == every


def test_an_interval_with_anchor_starts_there() -> None:
    anchor = datetime(2024, 1, 1, 9, 0, 7, tzinfo=UTC)
    every = Interval(timedelta(hours=1), anchor=anchor)
    assert every.next_after(anchor.timestamp() - 86400) == anchor.timestamp()
    assert every.last_at_or_before(anchor.timestamp() - 1) is None
    assert every.next_after(anchor.timestamp()) == anchor.timestamp() + 3600
    # Fractions of a second step without drifting
    tenth = Interval(0.1)
    times = firings(tenth, 1_700_000_000.05, 1000)
    assert all(tenth.last_at_or_before(t) == t for t in times)
    assert times[-1] == pytest.approx(1_700_000_100.0)


@pytest.mark.parametrize("every", [0, -5, float("inf"), "60", True])
def test_a_bad_interval_is_refused(every: object) -> None:
    with pytest.raises(ConfigurationError, match="Interval"):
        Interval(every)  # type: ignore[arg-type]


def test_clocked_fires_once_and_needs_an_aware_time() -> None:
    when = datetime(2030, 5, 1, 9, tzinfo=ZoneInfo("Europe/Paris"))
    once = Clocked(when)
    assert once.next_after(0) == when.timestamp()
    assert once.next_after(when.timestamp()) is None
    assert once.first_after(when.timestamp() + 10) == when.timestamp()  # still fires once
    with pytest.raises(ConfigurationError, match="naive 2030-05-01T09:00:00"):
        Clocked(datetime(2030, 5, 1, 9))


def test_specs_read_back_from_the_store() -> None:
    specs = [
        Interval(30),
        Interval(timedelta(days=1), anchor=datetime(2024, 1, 1, tzinfo=UTC)),
        Cron("*/5 9-17 * * mon-fri", tz="Europe/Zurich"),
        Solar("dusk", 48.85, 2.35, tz="Europe/Paris"),
        Clocked(datetime(2030, 1, 1, tzinfo=UTC)),
    ]
    for spec in specs:
        assert spec_from_entry(spec.kind, spec.to_spec()) == spec
    with pytest.raises(ConfigurationError, match="unknown beat entry kind 'lunar'"):
        spec_from_entry("lunar", {})
    with pytest.raises(ConfigurationError, match="invalid cron expression"):
        spec_from_entry("cron", {"expr": "every tuesday"})
    with pytest.raises(ConfigurationError, match="does not fit"):
        spec_from_entry("interval", {"every": 5, "phase": 2})


# -- catch-up and jitter ------------------------------------------------------------------------


def test_catch_up_once_each_and_skip() -> None:
    every = Interval(10)
    due, now = 1_000.0, 1_095.0  # 10 firings missed: 1000, 1010, ..., 1090
    once = plan(every, due_at=due, now=now, catch_up="once", limit=0, jitter=None, grace=60)
    assert (once.firings, once.skipped, once.next_at) == ([1090.0], 9, 1100.0)
    each = plan(every, due_at=due, now=now, catch_up="each", limit=0, jitter=None, grace=60)
    assert each.firings == [1000.0 + 10 * k for k in range(10)] and each.skipped == 0
    bounded = plan(every, due_at=due, now=now, catch_up="each", limit=3, jitter=None, grace=60)
    assert (bounded.firings, bounded.skipped) == ([1070.0, 1080.0, 1090.0], 7)
    late = plan(every, due_at=due, now=now, catch_up="skip", limit=0, jitter=None, grace=2)
    assert (late.firings, late.next_at) == ([], 1100.0)
    in_grace = plan(every, due_at=due, now=now, catch_up="skip", limit=0, jitter=None, grace=5)
    assert in_grace.firings == [1090.0]
    on_time = plan(every, due_at=due, now=due, catch_up="skip", limit=0, jitter=None, grace=0)
    assert (on_time.firings, on_time.skipped, on_time.next_at) == ([1000.0], 0, 1010.0)


def test_jitter_never_moves_the_schedule() -> None:
    every = Interval(60)
    t = 1_700_000_040.0
    for _ in range(500):
        due = jittered(t, 30)
        assert due is not None and t <= due < t + 30
        assert nominal(every, due, 30) == t
        result = plan(every, due_at=due, now=due, catch_up="once", limit=0, jitter=30, grace=0)
        assert result.firings == [t] and result.next_at == t + 60
        t += 60
