"""What every benchmark here shares: steady-state rates, summaries, percentiles, RSS, settings.

Rates are computed from timestamps the tasks themselves record (``time.monotonic()``, one
clock for every process of the machine), so a harness need not poll while it measures:
the drain rate is the number of tasks that ran between the 10% and the 90% marks divided
by the time between them, which leaves out the worker's start-up and the tail.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "BenchError",
    "Summary",
    "comma_choices",
    "filesystem",
    "format_cell",
    "format_number",
    "paired_ratios",
    "percentile",
    "platform_settings",
    "rss_bytes",
    "run_in_own_process",
    "steady_rate",
    "summarize",
    "window_rates",
]


class BenchError(Exception):
    """A benchmark that cannot run as asked; the message says what to do."""


def steady_rate(stamps: Sequence[float], low: float = 0.1, high: float = 0.9) -> float:
    """Tasks per second between the ``low`` and ``high`` fractions of ``stamps`` (any order).

    With few tasks the window may hold a single batch that ran at one instant; the time
    between the marks is then taken as at least a microsecond, so the figure is finite
    (and meaningless: use a sample of thousands of tasks).
    """
    if len(stamps) < 2:
        raise BenchError(f"a rate needs at least two timestamps, got {len(stamps)}")
    ordered = sorted(stamps)
    first = int(low * (len(ordered) - 1))
    last = math.ceil(high * (len(ordered) - 1))
    return (last - first) / max(ordered[last] - ordered[first], 1e-6)


def window_rates(stamps: Sequence[float], window: int) -> list[float]:
    """The rate of each run of ``window`` consecutive tasks, first to last (a partial last
    window is left out)."""
    ordered = sorted(stamps)
    rates = []
    for start in range(0, len(ordered) - window + 1, window):
        end = start + window - 1
        rates.append((window - 1) / max(ordered[end] - ordered[start], 1e-6))
    return rates


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, linearly interpolated."""
    if not values:
        raise BenchError("a percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    below = math.floor(rank)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


@dataclass(frozen=True, slots=True)
class Summary:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise BenchError("nothing measured")
    return Summary(statistics.median(values), min(values), max(values))


#: The unit shown after a figure of each kind: tasks per second, a duration, a ratio.
UNITS = {"rate": "/s", "ms": " ms", "x": "x"}


def format_number(v: float, unit: str) -> str:
    """A figure without its unit: 13.0k (tasks/s), 2.88 (ms, from seconds), 1.25 (x)."""
    if unit == "rate":
        return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"
    if unit == "ms":
        return f"{v * 1000:.2f}"
    return f"{v:.2f}"


def format_cell(values: Sequence[float], unit: str) -> str:
    """The median with its unit, and the range of the repetitions: 13.0k/s (12.1k-13.5k)."""
    if not values:
        return "-"
    s = summarize(values)
    text = format_number(s.median, unit) + UNITS[unit]
    if len(values) > 1:
        text += f" ({format_number(s.low, unit)}-{format_number(s.high, unit)})"
    return text


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-repetition ratios a/b (the repetitions are paired)."""
    return [x / y for x, y in zip(a, b, strict=False) if y]


def rss_bytes(pid: int) -> int | None:
    """The resident set size of a process (Linux), or None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def filesystem(path: str) -> str:
    """The type of the file system ``path`` is on (fsync costs differ by far between them),
    from /proc/mounts; "unknown" where that cannot be read."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split()[1:3] for line in mounts if len(line.split()) > 2]
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best, kind = "", "unknown"
    for mount_point, fs_type in entries:
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, kind = mount_point, fs_type
    return f"{kind} (mounted on {best})" if best else kind


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def platform_settings() -> dict[str, str | int]:
    """The machine and the versions every figure depends on."""
    return {
        "python": platform.python_version(),
        "implementation": sys.implementation.name,
        "sqlite": sqlite3.sqlite_version,
        "stem-core": _version("stem-core"),
        "stem-sqlite": _version("stem-sqlite"),
        "huey": _version("huey"),
        "cpus": os.cpu_count() or 0,
        "platform": platform.platform(terse=True),
    }


def comma_choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list, each item one of ``allowed``."""

    def parse(text: str) -> list[str]:
        items = [t.strip().lower() for t in text.split(",") if t.strip()]
        wrong = [t for t in items if t not in allowed]
        if wrong or not items:
            raise argparse.ArgumentTypeError(
                f"{text!r}: choose from {', '.join(allowed)} (comma-separated)"
            )
        return items

    return parse


def run_in_own_process(
    cmd: list[str], workdir: Path, out_path: Path, name: str, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    """Run one repetition's runner in a process group of its own and read its JSON result
    from ``out_path``; whatever the group left behind (a worker) is killed afterwards."""
    with open(workdir / "runner.log", "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            return {"ok": False, "reason": f"stopped after {timeout:.0f} s"}
        _kill_group(proc.pid)  # a worker left behind by a runner that crashed
    if not out_path.exists():
        tail = (workdir / "runner.log").read_text(errors="replace").splitlines()[-5:]
        return {"ok": False, "reason": f"exited with code {proc.returncode}: {' / '.join(tail)}"}
    result: dict[str, Any] = json.loads(out_path.read_text())
    if not result["ok"]:
        log_text = (workdir / "runner.log").read_text(errors="replace").strip()
        if log_text:
            print(f"--- {name}:\n{log_text}", file=sys.stderr)
    return result


def _kill_group(pgid: int) -> None:
    """Kill what is left of the process group a runner led (its workers, their children)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
