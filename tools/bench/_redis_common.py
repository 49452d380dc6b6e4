"""What every system of the Redis benchmark shares: the plan, a run's figures, and helpers.

Each system runs in a process of its own (``_redis_run.py``), so that one peer's imports,
global state or crash cannot touch another's figures. A system's module (``_peer_*.py``,
``_redis_floor.py``) imports its library inside ``run`` only, so that the harness can
describe a peer's settings even where the peer is not installed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from _measure import BenchError
from _systems import WARM_UP_TRIPS, WorkerProcess, _wait

__all__ = [
    "MODULES",
    "WARM_UP_TRIPS",
    "NotInstalled",
    "PeerRun",
    "RedisPlan",
    "ResultFrontier",
    "WorkerProcess",
    "load_module",
    "round_trips",
    "round_trips_async",
    "stamps_of",
    "version_of",
    "wait_drained",
    "write_module",
]

#: The systems in the order of the table, and the module that runs each.
MODULES = {
    "stem": "_peer_stem",
    "celery": "_peer_celery",
    "dramatiq": "_peer_dramatiq",
    "arq": "_peer_arq",
    "saq": "_peer_saq",
    "taskiq": "_peer_taskiq",
    "huey": "_peer_huey",
    "rq": "_peer_rq",
    "floor": "_redis_floor",
}

#: Every system's no-op task is called this, and returns ``time.monotonic()`` when it ran.
TASK = "noop"
#: Every result is decoded and checked to be a float (the task's timestamp).
TRIP_TIMEOUT = 30.0


class NotInstalled(BenchError):
    """A system that cannot run here: its row says why, and it is not tried again."""


@dataclass(frozen=True, slots=True)
class RedisPlan:
    """What to measure and how; the same for every system of one run (sent as JSON)."""

    url: str  # database 0: the backlog, the drain and the round trips
    batch_url: str  # database 1: the batched enqueue, on an empty database of its own
    n: int
    measures: tuple[str, ...]
    workdir: str
    batch: int = 100
    round_trips: int = 500
    concurrency: int = 100  # Stem and the asyncio peers (arq, SAQ, Taskiq)
    threads: int = 8  # the thread-based peers (Dramatiq, Huey)
    poll: float = 0.001  # seconds, for the peers that poll (Dramatiq, arq, Taskiq's results)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RedisPlan:
        return cls(**{**data, "measures": tuple(data["measures"])})


@dataclass(slots=True)
class PeerRun:
    """One repetition of one system: None (or empty) where a measure was not asked for."""

    enqueue_one: float | None = None  # tasks/s
    enqueue_batched: float | None = None  # tasks/s
    drain_stamps: list[float] = field(default_factory=list)  # when each task ran
    round_trips: list[float] = field(default_factory=list)  # seconds, enqueue to result
    version: str = ""
    note: str = ""  # something odd the table should say (tasks a peer lost, say)


def version_of(distribution: str) -> str:
    """The installed version (PackageNotFoundError is an ImportError: "not installed")."""
    return metadata.version(distribution)


def write_module(workdir: Path, name: str, source: str) -> Path:
    """Write the app module that both the producer (here) and the worker process import."""
    path = workdir / f"{name}.py"
    path.write_text(source)
    return path


def load_module(path: Path) -> ModuleType:
    """Import an app module under its own name, as the worker process will."""
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


class ResultFrontier:
    """How many of a backlog's result keys exist, counted from the front, cheaply.

    A worker finishes a backlog in about the order it was written, so each check asks
    ``EXISTS`` only for the first chunk not yet complete (and moves on while chunks are
    complete), instead of for every key: a harness that polls must not load the server
    the worker it measures is using. The count is a lower bound that reaches ``len(keys)``
    exactly when every key exists.
    """

    def __init__(self, keys: Sequence[str | bytes], chunk: int = 500) -> None:
        self.keys = keys
        self.chunk = chunk
        self.done = 0

    def check(self, client: Any) -> int:
        """With a synchronous redis-py client."""
        while self.done < len(self.keys):
            part = self.keys[self.done : self.done + self.chunk]
            if int(client.exists(*part)) < len(part):
                break
            self.done += len(part)
        return self.done

    async def check_async(self, client: Any) -> int:
        """With an asyncio redis-py client."""
        while self.done < len(self.keys):
            part = self.keys[self.done : self.done + self.chunk]
            if int(await client.exists(*part)) < len(part):
                break
            self.done += len(part)
        return self.done


async def wait_drained(done: Callable[[], Awaitable[int]], n: int, worker: WorkerProcess) -> None:
    """Wait until ``done()`` reaches ``n``, checking the worker is alive and progressing."""

    async def remaining() -> int:
        return max(0, n - await done())

    await _wait(remaining, [worker])


def _check_stamp(i: int, value: Any) -> None:
    if not isinstance(value, float):
        raise BenchError(f"round trip {i}: the result is {value!r}, not the task's timestamp")


def round_trips(trip: Callable[[int], Any], count: int) -> list[float]:
    """``count`` sequential round trips after the warm-up; ``trip(i)`` enqueues and waits."""
    trips: list[float] = []
    for i in range(WARM_UP_TRIPS + count):
        started = time.perf_counter()
        value = trip(i)
        elapsed = time.perf_counter() - started
        _check_stamp(i, value)
        if i >= WARM_UP_TRIPS:
            trips.append(elapsed)
    return trips


async def round_trips_async(trip: Callable[[int], Awaitable[Any]], count: int) -> list[float]:
    """:func:`round_trips` for a producer on asyncio."""
    trips: list[float] = []
    for i in range(WARM_UP_TRIPS + count):
        started = time.perf_counter()
        value = await asyncio.wait_for(trip(i), TRIP_TIMEOUT)
        elapsed = time.perf_counter() - started
        _check_stamp(i, value)
        if i >= WARM_UP_TRIPS:
            trips.append(elapsed)
    return trips


def stamps_of(values: Sequence[Any], n: int, system: str) -> list[float]:
    """The tasks' timestamps from their stored results; every one must be there."""
    stamps = [float(v) for v in values if isinstance(v, float)]
    if len(stamps) != n:
        odd = [v for v in values if not isinstance(v, float)][:3]
        raise BenchError(
            f"{system} stored {len(stamps)} timestamps for {n} tasks (other values: {odd!r})"
        )
    return stamps
