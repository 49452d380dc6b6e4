"""Output for people (tables, times, short values) and for scripts (``--json``).

Colour only on a terminal: rich turns it off when stdout is a pipe or a file, and when
``NO_COLOR`` is set. Off a terminal nothing is wrapped or cut to a width, so a table
piped to ``grep`` keeps each record on one line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import click
import msgspec
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = [
    "clock_time",
    "console",
    "duration",
    "echo_json",
    "plain",
    "relative",
    "short",
    "table",
]

#: Width used off a terminal: wide enough that no table is wrapped.
_PIPE_WIDTH = 4000


def console(*, stderr: bool = False) -> Console:
    """A console on the current stdout (or stderr), resolved now so CliRunner sees it."""
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    # markup and highlighting off: run ids, topics and error messages are printed as
    # given, never read as rich markup or coloured by guesswork.
    return Console(
        file=stream,
        markup=False,
        highlight=False,
        emoji=False,
        width=None if terminal else _PIPE_WIDTH,
        soft_wrap=not terminal,
    )


def table(*headers: str) -> Table:
    return Table(
        *headers,
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        header_style="bold",
    )


def plain(record: msgspec.Struct) -> dict[str, Any]:
    """Every field of a record as JSON-ready data, defaults included, so scripts can rely
    on each key being there (the records themselves omit defaults when encoded)."""
    return {name: msgspec.to_builtins(getattr(record, name)) for name in record.__struct_fields__}


def echo_json(data: Any) -> None:
    click.echo(msgspec.json.format(msgspec.json.encode(data), indent=2).decode())


def short(value: Any, limit: int = 60) -> str:
    """A value as compact JSON, cut to ``limit`` characters."""
    try:
        text = msgspec.json.encode(value).decode()
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clock_time(stamp: float | None) -> str:
    """A store time (seconds since the epoch) in local time, to the second."""
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} µs"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def relative(stamp: float | None, now: float | None = None) -> str:
    """``2026-05-01 12:00:00 (in 30.0 s)``: a time with how far it is from now."""
    if stamp is None:
        return "-"
    now = time.time() if now is None else now
    gap = stamp - now
    when = f"in {duration(gap)}" if gap >= 0 else f"{duration(-gap)} ago"
    return f"{clock_time(stamp)} ({when})"


def print_pairs(out: Console, pairs: Iterable[tuple[str, str | Text]]) -> None:
    """Aligned ``label  value`` lines."""
    rows: Sequence[tuple[str, str | Text]] = list(pairs)
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        line = Text(f"{label}:".ljust(width + 2), style="bold")
        line.append(value if isinstance(value, Text) else Text(value))
        out.print(line)
