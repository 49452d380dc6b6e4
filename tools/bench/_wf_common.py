"""What the systems of the workflow benchmark share: the plan, one repetition's figures,
and the two measures, written once so that every system is measured the same way.

Each system runs in a process of its own (``_wf_run.py``). A system's module
(``_wf_stem.py``, ``_wf_dbos.py``) imports its library inside ``run`` only, so that the
harness can describe a system's settings even where it is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _measure import BenchError

__all__ = [
    "MODULES",
    "TRIP_TIMEOUT",
    "WORKFLOW",
    "NotInstalled",
    "WfPlan",
    "WfRun",
    "cpu_seconds",
    "latencies",
    "throughput",
]

#: The systems in the order of the table, and the module that runs each.
MODULES = {
    "stem-sqlite": "_wf_stem",
    "stem-redis": "_wf_stem",
    "dbos-sqlite": "_wf_dbos",
    "dbos-shipped": "_wf_dbos",
}

#: Every system's workflow is registered under this name.
WORKFLOW = "bench_steps"
#: The longest one workflow of the latency measure may take (a stuck worker fails the run).
TRIP_TIMEOUT = 30.0


class NotInstalled(BenchError):
    """A system that cannot run here: its row says why, and it is not tried again."""


@dataclass(frozen=True, slots=True)
class WfPlan:
    """What to measure and how; the same for every system of one run (sent as JSON)."""

    system: str
    workdir: str
    synchronous: str  # "NORMAL" or "FULL": SQLite's setting, for every SQLite system
    n: int = 500  # workflows started at once, for the throughput
    m: int = 100  # sequential workflows, for the latency
    steps: int = 10
    warm_up: int = 10
    concurrency: int = 100  # the Stem worker's
    redis_url: str = ""  # stem-redis only

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WfPlan:
        return cls(**data)


@dataclass(slots=True)
class WfRun:
    """One repetition of one system."""

    throughput: float | None = None  # workflows/s, first start to last completion
    start_seconds: float | None = None  # how long starting the N workflows took
    latencies: list[float] = field(default_factory=list)  # seconds, start to result
    version: str = ""
    read_back: dict[str, str] = field(default_factory=dict)  # settings seen in the store
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per workflow, per process
    note: str = ""


async def latencies(trip: Callable[[int], Awaitable[Any]], count: int, warm_up: int) -> list[float]:
    """``count`` workflows one at a time after ``warm_up`` others; ``trip(i)`` starts
    workflow ``i`` and returns its result, which must be ``i``."""
    out: list[float] = []
    for i in range(warm_up + count):
        started = time.perf_counter()
        try:
            value = await asyncio.wait_for(trip(i), TRIP_TIMEOUT)
        except TimeoutError:
            raise BenchError(f"workflow {i} gave no result within {TRIP_TIMEOUT:g} s") from None
        elapsed = time.perf_counter() - started
        if value != i:
            raise BenchError(f"workflow {i} returned {value!r}, not {i}")
        if i >= warm_up:
            out.append(elapsed)
    return out


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process (all its threads) so far, from /proc (Linux);
    0.0 where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def throughput(
    start: Callable[[int], Awaitable[Any]],
    wait: Callable[[list[Any]], Awaitable[None]],
    ends: Callable[[list[Any]], Awaitable[list[float]]],
    n: int,
    processes: dict[str, int],
    out: WfRun,
) -> None:
    """Start ``n`` workflows at once (``start(i)`` returns a handle), ``wait(handles)``
    until they all ended, then read ``ends(handles)``: each one's completion time as its
    store recorded it (``time.time()``). Sets ``out.throughput`` (workflows/s from the
    first start to the last completion), ``out.start_seconds`` and ``out.cpu_ms`` (CPU
    milliseconds per workflow of each of ``processes``, name -> pid, from the first start
    until the harness saw the last completion)."""
    cpu = {name: cpu_seconds(pid) for name, pid in processes.items()}
    began = time.time()
    handles = list(await asyncio.gather(*(start(i) for i in range(n))))
    out.start_seconds = time.time() - began
    await wait(handles)
    for name, pid in processes.items():
        out.cpu_ms[name] = (cpu_seconds(pid) - cpu[name]) * 1000 / n
    found = await ends(handles)
    if len(found) != n:
        raise BenchError(f"{len(found)} of {n} workflows completed")
    out.throughput = n / max(max(found) - began, 1e-6)
