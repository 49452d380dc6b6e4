"""Real `stem beat` processes sharing one SQLite file: one is SIGKILLed while both run,
and every firing is still enqueued exactly once, none missed, none doubled."""

from __future__ import annotations

import asyncio
import collections
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from _stem_procs import StemProcesses

from stem import Stem
from stem._codec import decode_envelope

pytestmark = [pytest.mark.processes, pytest.mark.sqlite]

EVERY = 0.5

APP = f"""
import asyncio, os
from stem import Interval, Stem

app = Stem.from_url(os.environ["STEM_URL"])
STALL_AFTER = int(os.environ.get("STALL_AFTER", "0"))
enqueued = 0

@app.task(name="beat.tick")
async def tick() -> None: ...

@app.hooks.on("after_enqueue")
async def stall(envelope) -> None:
    # With STALL_AFTER=n this beat stops for good right after its n-th enqueue, before
    # it records the firing: killed there, it leaves its claim and the task behind.
    global enqueued
    enqueued += 1
    if STALL_AFTER and enqueued >= STALL_AFTER:
        open(os.environ["STALL_MARK"], "w").close()
        await asyncio.Event().wait()

# "each": a firing that falls due while no beat holds the entry (one was killed holding
# its claim) is still enqueued when another takes over, so none may be missing
app.schedule("tick", Interval({EVERY}), tick, catch_up="each")
"""


class Beats(StemProcesses):
    """`stem beat` processes on one app module, all killed at the end."""

    def __init__(self, root: Path, url: str) -> None:
        super().__init__(root, "beat_app", APP, {"STEM_URL": url})
        self.env.pop("STEM_APP", None)

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        args = ("--claim-ttl", "2", "--max-interval", "0.2", "-l", "debug")
        return self.spawn("beat", *args, env=env)


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'stem.db'}"


@pytest.fixture
def beats(tmp_path: Path, url: str) -> Iterator[Beats]:
    group = Beats(tmp_path, url)
    try:
        yield group
    finally:
        group.stop_all()


@pytest.fixture
async def reader(url: str) -> AsyncIterator[Stem]:
    app = Stem.from_url(url)
    yield app
    await app.aclose()


async def runs(app: Stem) -> int:
    entry = await app.schedule_store.get("tick")
    return 0 if entry is None else entry.total_runs


async def wait_for_runs(app: Stem, at_least: int, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while await runs(app) < at_least:  # noqa: ASYNC110 - the store is all other processes share
            await asyncio.sleep(0.05)


async def test_a_sigkilled_beat_neither_misses_nor_doubles_a_firing(
    beats: Beats, reader: Stem
) -> None:
    # Given two beat processes on one file, the first of which stops for good after its
    # fourth enqueue, holding its claim, before it records that firing
    mark = beats.root / "stalled"
    first = beats.start({"STALL_AFTER": "4", "STALL_MARK": str(mark)})
    await wait_for_runs(reader, 2)
    second = beats.start()
    async with asyncio.timeout(60):
        while not mark.exists():  # noqa: ASYNC110 - a file is the only signal across processes
            await asyncio.sleep(0.02)
    # When it is killed there, and the other runs on alone past the killed one's claim
    first.send_signal(signal.SIGKILL)
    first.wait()
    await wait_for_runs(reader, (await runs(reader)) + 10)
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0, beats.log_of(second)

    # Then each firing from the first to the last was enqueued exactly once
    published: list[float] = []
    while batch := await reader.broker.reserve(["default"], 500, 60):
        for delivery in batch:
            meta = decode_envelope(delivery.message.body).meta
            published.append(meta["stem.beat"]["at"])
    counts = collections.Counter(published)
    doubled = {at: n for at, n in counts.items() if n > 1}
    assert not doubled, doubled
    times = sorted(counts)
    expected = [times[0] + EVERY * k for k in range(round((times[-1] - times[0]) / EVERY) + 1)]
    assert times == pytest.approx(expected), "a firing is missing"
    entry = await reader.schedule_store.get("tick")
    assert entry is not None and entry.last_error is None
    # The survivor took the claim over, found that firing enqueued, and did not enqueue it again
    assert "was enqueued already" in beats.log_of(second)
    assert all("enqueued its firing" in beats.log_of(p) for p in (first, second))
