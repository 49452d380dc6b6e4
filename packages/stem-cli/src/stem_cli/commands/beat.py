"""``stem beat`` runs the scheduler; ``stem schedule`` lists, adds, changes and removes
its entries, and shows when one fires next (a dry run).

Everything goes through the ScheduleStore contract, so the commands work on every
adapter, and from several machines at once: each change is a versioned write, read
again and retried when a beat recorded a firing meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
import msgspec
from rich.text import Text

from stem import ConfigurationError, ScheduleConflictError, Stem, StemError
from stem._beat import Clocked, Cron, Interval, Solar, Spec, spec_from_entry
from stem._beat._entries import SOURCE_KEY, define, definition_fields, new_entry
from stem._beat._plan import CATCH_UP, jittered
from stem.contracts import ScheduleEntry, ScheduleStore

from .._loading import load_app
from .._options import NotFoundError, SetupError, StoppedOnError, url_option
from .._output import (
    clock_time,
    console,
    duration,
    echo_json,
    plain,
    print_pairs,
    relative,
    short,
    table,
)
from .._target import Target, json_option, target_options

__all__ = ["beat", "schedule"]

#: Tries of a read-change-write that meets a beat recording a firing meanwhile.
_ATTEMPTS = 10


# -- stem beat ------------------------------------------------------------------------------


@click.command()
@click.option(
    "--app",
    "app_spec",
    required=True,
    envvar="STEM_APP",
    help="The app, as module:attribute: its tasks and the entries it defines. Env: STEM_APP.",
)
@url_option(
    "Keep the entries in this store (and enqueue on this broker) instead of the app's "
    "own. Env: STEM_URL."
)
@click.option(
    "--claim-ttl",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Seconds a due entry stays this beat's while it fires it; if it dies, another "
    "beat takes over this long after.",
)
@click.option(
    "--max-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Longest sleep between looks at the store (entries added "
    "with `stem schedule add` are seen within it).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="How late a catch_up='skip' entry may fire; keep it above --claim-ttl.",
)
@click.option(
    "-l",
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option("-v", "--verbose", is_flag=True, help="Print tracebacks of errors.")
def beat(
    app_spec: str,
    url: str | None,
    claim_ttl: float,
    max_interval: float,
    grace: float,
    loglevel: str,
    verbose: bool,
) -> None:
    """Run the beat scheduler until SIGTERM/SIGINT: store the app's entries, then fire
    each due entry once, even with several beats running (run two for availability).

    Exit codes: 0 after a clean stop, 1 when it stops on an error, 2 for bad options or
    an app that cannot be loaded.
    """
    from .._main import _configure_logging  # the CLI's log format, shared with `stem worker`

    _configure_logging(loglevel)
    verbose = verbose or loglevel == "debug"
    app = load_app(app_spec, verbose=verbose)

    async def serve() -> None:
        try:
            if url is not None:
                await app.use_url(url)
            scheduler = app.beat(claim_ttl=claim_ttl, max_interval=max_interval, grace=grace)
            await scheduler.run()
        finally:
            await app.aclose()

    try:
        asyncio.run(serve())
    except ConfigurationError as exc:
        raise _one_line(exc, verbose, SetupError) from None
    except StemError as exc:
        raise _one_line(exc, verbose, StoppedOnError) from None


def _one_line(
    exc: StemError, verbose: bool, kind: type[click.ClickException]
) -> click.ClickException:
    if verbose:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    return kind(f"{type(exc).__name__}: {exc}")


# -- stem schedule ----------------------------------------------------------------------------


@click.group()
def schedule() -> None:
    """Beat entries: list, show, add, remove, enable, disable, and their coming firings.

    Every command takes --app module:attribute, --url URL, or both; --json prints JSON.
    Exit codes: 0 ok, 1 failure, 2 bad usage, 3 entry not found.
    """


async def _entry_or_exit(store: ScheduleStore, entry_id: str) -> ScheduleEntry:
    entry = await store.get(entry_id)
    if entry is None:
        raise NotFoundError(f"there is no beat entry {entry_id!r} (stem schedule list shows them)")
    return entry


def _state(entry: ScheduleEntry) -> Text:
    if not entry.enabled:
        return Text("disabled", style="yellow")
    if entry.last_error is not None:
        return Text("error", style="red")
    if entry.next_run_at is None:
        return Text("done", style="dim")
    return Text("enabled", style="green")


def _spec_text(entry: ScheduleEntry) -> str:
    try:
        return spec_from_entry(entry.kind, entry.spec).describe()
    except ConfigurationError:
        return f"{entry.kind} {short(entry.spec, 40)} (invalid)"


def _call_text(entry: ScheduleEntry) -> str:
    parts = [short(a, 20) for a in entry.args]
    parts += [f"{k}={short(v, 20)}" for k, v in entry.kwargs.items()]
    return f"{entry.task}({', '.join(parts)})"


@schedule.command("list")
@target_options
@json_option
def list_entries(target: Target, as_json: bool) -> None:
    """List the entries, in the order they were stored."""

    async def body(app: Stem) -> tuple[list[ScheduleEntry], float]:
        return await app.schedule_store.list(), app.clock.now()

    entries, now = target.run(body)
    if as_json:
        echo_json([plain(entry) for entry in entries])
        return
    out = console()
    if not entries:
        out.print("no beat entries")
        return
    grid = table("ID", "TASK", "SPEC", "STATE", "NEXT RUN", "LAST RUN", "RUNS", "DRIFT", "SOURCE")
    for entry in entries:
        grid.add_row(
            entry.id,
            _call_text(entry),
            _spec_text(entry),
            _state(entry),
            relative(entry.next_run_at, now) if entry.enabled else "-",
            clock_time(entry.last_run_at),
            str(entry.total_runs),
            duration(entry.last_drift),
            str(entry.meta.get(SOURCE_KEY, "-")),
        )
    out.print(grid)


@schedule.command()
@target_options
@json_option
@click.argument("entry_id", metavar="ID")
def show(target: Target, as_json: bool, entry_id: str) -> None:
    """Show one entry: what it runs, when, and how its last firing went."""

    async def body(app: Stem) -> tuple[ScheduleEntry, float]:
        return await _entry_or_exit(app.schedule_store, entry_id), app.clock.now()

    entry, now = target.run(body)
    if as_json:
        echo_json(plain(entry))
        return
    pairs: list[tuple[str, str | Text]] = [
        ("id", entry.id),
        ("task", _call_text(entry)),
        ("queue", entry.queue or "the task's own"),
        ("spec", _spec_text(entry)),
        ("state", _state(entry)),
        ("next run", relative(entry.next_run_at, now) if entry.enabled else "-"),
        ("last run", relative(entry.last_run_at, now)),
        ("runs", str(entry.total_runs)),
        ("last drift", duration(entry.last_drift)),
        (
            "catch-up",
            entry.catch_up
            + (f" (up to {entry.catch_up_limit})" if entry.catch_up == "each" else ""),
        ),
        ("jitter", "-" if not entry.jitter else f"up to {entry.jitter:g} s"),
        ("options", short(entry.options, 200) if entry.options else "-"),
        ("source", str(entry.meta.get(SOURCE_KEY, "-"))),
    ]
    if (
        entry.claimed_by is not None
        and entry.claimed_until is not None
        and entry.claimed_until > now
    ):
        pairs.append(("claimed by", f"{entry.claimed_by} until {clock_time(entry.claimed_until)}"))
    if entry.last_error is not None:
        pairs.append(("last error", Text(entry.last_error, style="red")))
    print_pairs(console(), pairs)


def _json_option_value(text: str | None, option: str, kind: type) -> Any:
    if text is None:
        return kind()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=option) from None
    if not isinstance(value, kind):
        raise click.BadParameter(
            f"expected a JSON {'array' if kind is list else 'object'}, not {type(value).__name__}",
            param_hint=option,
        )
    return value


def _spec(
    every: float | None,
    cron: str | None,
    tz: str | None,
    solar: str | None,
    lat: float | None,
    lon: float | None,
    at: str | None,
) -> Spec:
    given = [
        name
        for name, value in (("--every", every), ("--cron", cron), ("--solar", solar), ("--at", at))
        if value is not None
    ]
    if len(given) != 1:
        raise click.UsageError(
            "give one of --every SECONDS, --cron EXPR, --solar EVENT --lat --lon, --at ISO-TIME"
            + (f" (not {' and '.join(given)})" if given else "")
        )
    if tz is not None and cron is None and solar is None:
        raise click.UsageError("--tz goes with --cron or --solar")
    if (lat is not None or lon is not None) and solar is None:
        raise click.UsageError("--lat and --lon go with --solar")
    if every is not None:
        return Interval(every)
    if cron is not None:
        return Cron(cron, tz=tz or "UTC")
    if solar is not None:
        if lat is None or lon is None:
            raise click.UsageError(
                "--solar needs --lat and --lon (degrees, north and east positive)"
            )
        return Solar(solar, lat, lon, tz=tz or "UTC")  # type: ignore[arg-type]
    assert at is not None
    try:
        when = datetime.fromisoformat(at)
    except ValueError:
        raise click.BadParameter(
            f"{at!r} is not an ISO 8601 time, e.g. 2030-01-01T09:00:00+01:00", param_hint="--at"
        ) from None
    return Clocked(when)


@schedule.command()
@target_options
@json_option
@click.argument("entry_id", metavar="ID")
@click.option("--task", "task_name", required=True, help="The task to run (its name).")
@click.option(
    "--every",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Fire every SECONDS.",
)
@click.option(
    "--cron",
    default=None,
    metavar="EXPR",
    help="Fire on a cron expression, e.g. '0 9 * * mon-fri'.",
)
@click.option("--tz", default=None, help="Time zone of --cron or --solar (IANA name; default UTC).")
@click.option(
    "--solar",
    default=None,
    type=click.Choice(["sunrise", "sunset", "dawn", "dusk", "noon"]),
    help="Fire at this moment of the sun's day at --lat, --lon.",
)
@click.option(
    "--lat", type=float, default=None, help="Latitude for --solar (degrees, north positive)."
)
@click.option(
    "--lon", type=float, default=None, help="Longitude for --solar (degrees, east positive)."
)
@click.option(
    "--at", default=None, metavar="ISO-TIME", help="Fire once, at this time (with its UTC offset)."
)
@click.option(
    "--args", "args_json", default=None, metavar="JSON", help="Positional arguments, a JSON array."
)
@click.option(
    "--kwargs",
    "kwargs_json",
    default=None,
    metavar="JSON",
    help="Keyword arguments, a JSON object.",
)
@click.option("--queue", default=None, help="Enqueue on this queue instead of the task's own.")
@click.option(
    "--jitter",
    type=click.FloatRange(min=0),
    default=None,
    help="Delay each firing by up to this many seconds, at random.",
)
@click.option(
    "--catch-up",
    type=click.Choice(list(CATCH_UP)),
    default="once",
    show_default=True,
    help="After downtime: one firing for all missed, each missed one, or none.",
)
@click.option(
    "--catch-up-limit",
    type=click.IntRange(min=1),
    default=None,
    help="With --catch-up each: at most this many (default 100).",
)
@click.option(
    "--disabled", is_flag=True, help="Store it disabled (stem schedule enable starts it)."
)
@click.option(
    "--replace", is_flag=True, help="Replace an entry with this id, keeping its run history."
)
def add(
    target: Target,
    as_json: bool,
    entry_id: str,
    task_name: str,
    every: float | None,
    cron: str | None,
    tz: str | None,
    solar: str | None,
    lat: float | None,
    lon: float | None,
    at: str | None,
    args_json: str | None,
    kwargs_json: str | None,
    queue: str | None,
    jitter: float | None,
    catch_up: str,
    catch_up_limit: int | None,
    disabled: bool,
    replace: bool,
) -> None:
    """Add entry ID: run --task on a schedule.

    With --app, the task must be one the app registers and the arguments must fit it;
    with --url only, they are stored as given and the beat checks them when it fires.
    """
    args = _json_option_value(args_json, "--args", list)
    kwargs = _json_option_value(kwargs_json, "--kwargs", dict)
    try:
        spec = _spec(every, cron, tz, solar, lat, lon, at)
    except ConfigurationError as exc:
        raise SetupError(f"ConfigurationError: {exc}") from None

    async def body(app: Stem) -> ScheduleEntry:
        definition = define(
            app,
            entry_id,
            spec,
            task_name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            enabled=not disabled,
            jitter=jitter,
            catch_up=catch_up,
            catch_up_limit=catch_up_limit,
            known_tasks=bool(target.app_spec),
        )
        store = app.schedule_store
        now = app.clock.now()
        for _ in range(_ATTEMPTS):
            stored = await store.get(entry_id)
            if stored is None:
                fresh = new_entry(definition, now, source="cli")
                try:
                    return await store.upsert(fresh)
                except ScheduleConflictError:
                    continue
            if not replace:
                raise StoppedOnError(
                    f"there is a beat entry {entry_id!r} already: add --replace to replace "
                    "it, or choose another id"
                )
            changed = msgspec.structs.replace(
                stored,
                **definition_fields(definition),
                next_run_at=jittered(spec.first_after(now), definition.jitter),
                last_error=None,
                meta={**stored.meta, SOURCE_KEY: "cli"},
            )
            try:
                return await store.upsert(changed)
            except ScheduleConflictError:
                continue
        raise StoppedOnError(f"beat entry {entry_id!r} kept changing: try again")

    entry = target.run(body)
    if as_json:
        echo_json(plain(entry))
        return
    when = clock_time(entry.next_run_at) if entry.enabled else "when enabled"
    click.echo(
        f"{'replaced' if replace and entry.version > 1 else 'added'} {entry.id}: "
        f"{_call_text(entry)}, {_spec_text(entry)}; next run {when}"
    )


@schedule.command()
@target_options
@json_option
@click.argument("entry_id", metavar="ID")
def remove(target: Target, as_json: bool, entry_id: str) -> None:
    """Remove entry ID (one defined in code comes back when a beat starts, unless the
    code no longer defines it)."""

    async def body(app: Stem) -> None:
        if not await app.schedule_store.remove(entry_id):
            raise NotFoundError(f"there is no beat entry {entry_id!r}")

    target.run(body)
    if as_json:
        echo_json({"id": entry_id, "removed": True})
    else:
        click.echo(f"removed {entry_id}")


async def _change(
    store: ScheduleStore, entry_id: str, change: Callable[[ScheduleEntry], ScheduleEntry | None]
) -> ScheduleEntry:
    """Apply ``change`` to the stored entry, again on a fresh read if a beat wrote it
    meanwhile; ``change`` returns None when there is nothing to write."""
    for _ in range(_ATTEMPTS):
        entry = await _entry_or_exit(store, entry_id)
        changed = change(entry)
        if changed is None:
            return entry
        try:
            return await store.upsert(changed)
        except ScheduleConflictError:
            continue
    raise StoppedOnError(f"beat entry {entry_id!r} kept changing: try again")


def _switch(enabled: bool) -> Callable[[Target, bool, str], None]:
    def command(target: Target, as_json: bool, entry_id: str) -> None:
        async def body(app: Stem) -> tuple[ScheduleEntry, bool]:
            now = app.clock.now()
            changed = False

            def flip(entry: ScheduleEntry) -> ScheduleEntry | None:
                nonlocal changed
                if entry.enabled == enabled:
                    return None
                changed = True
                updated = msgspec.structs.replace(entry, enabled=enabled)
                if enabled:  # on from now: what fell due while it was off is not caught up
                    try:
                        spec = spec_from_entry(entry.kind, entry.spec)
                    except ConfigurationError:
                        return updated
                    updated.next_run_at = jittered(spec.next_after(now), entry.jitter)
                return updated

            return await _change(app.schedule_store, entry_id, flip), changed

        entry, changed = target.run(body)
        word = "enabled" if enabled else "disabled"
        if as_json:
            echo_json(plain(entry))
        elif not changed:
            click.echo(f"{entry_id} was {word} already")
        elif enabled:
            click.echo(f"enabled {entry_id}; next run {clock_time(entry.next_run_at)}")
        else:
            click.echo(f"disabled {entry_id}")

    return command


schedule.command(
    "enable",
    help="Enable entry ID: it fires from now on (what fell due while off is not caught up).",
)(target_options(json_option(click.argument("entry_id", metavar="ID")(_switch(True)))))
schedule.command("disable", help="Disable entry ID: no beat fires it until it is enabled.")(
    target_options(json_option(click.argument("entry_id", metavar="ID")(_switch(False))))
)


@schedule.command("next")
@target_options
@json_option
@click.argument("entry_id", metavar="ID")
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1, max=1000),
    default=5,
    show_default=True,
    help="How many firings.",
)
def next_firings(target: Target, as_json: bool, entry_id: str, count: int) -> None:
    """Show when entry ID fires next (a dry run: nothing is written or enqueued).

    The first is its stored due time (jitter included); the later ones are the spec's
    own times, each of which jitter may delay.
    """

    async def body(app: Stem) -> tuple[ScheduleEntry, list[float], float]:
        entry = await _entry_or_exit(app.schedule_store, entry_id)
        try:
            spec = spec_from_entry(entry.kind, entry.spec)
        except ConfigurationError as exc:
            raise StoppedOnError(f"beat entry {entry_id!r} has a bad spec: {exc}") from None
        now = app.clock.now()
        times: list[float] = []
        t = entry.next_run_at if entry.enabled else spec.next_after(now)
        if t is not None and entry.enabled and t < now:  # overdue: due at the next look
            times.append(t)
            t = spec.next_after(now)
        while t is not None and len(times) < count:
            times.append(t)
            t = spec.next_after(t)
        return entry, times, now

    entry, times, now = target.run(body)
    if as_json:
        echo_json({"id": entry.id, "enabled": entry.enabled, "next": times})
        return
    out = console()
    if not entry.enabled:
        out.print(f"{entry.id} is disabled; once enabled it would fire:")
    if not times:
        out.print(f"{entry.id} fires no more")
        return
    for t in times:
        out.print(relative(t, now))
