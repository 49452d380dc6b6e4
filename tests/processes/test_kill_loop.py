"""The kill -9 loop, short: real workers on one SQLite file (or one Redis server), a random one
SIGKILLed every half second.

The long version is ``tools/soak/kill_loop.py``; both run ``kill_harness.run_kill_loop``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from kill_harness import NOT_A_FILE, POOLS, Pool, Settings, run_kill_loop

pytestmark = [
    pytest.mark.processes,
    pytest.mark.slow,
    # Each loop keeps three worker processes busy: two at once would starve each other.
    pytest.mark.xdist_group("kill_loop"),
]


@pytest.mark.parametrize("pool", POOLS)
async def test_a_worker_killed_every_half_second_loses_nothing(
    pool: Pool, tmp_path: Path, stem_url: str
) -> None:
    # Given three workers on one file (or server), tasks arriving for six seconds, and a
    # random worker killed with SIGKILL every half second (and restarted at once)
    seed = random.randrange(2**32)
    sqlite = stem_url.startswith("sqlite:")
    settings = Settings(
        pool=pool,
        tasks=400,
        seconds=6.0,
        drain_timeout=15.0,
        seed=seed,
        url=None if sqlite else stem_url,
    )

    # When the kills stop and every task has had its chance
    report = await run_kill_loop(tmp_path, settings)

    # Then every task reached a final status and succeeded: none lost, none dead-lettered,
    # none run by two processes at once, and the file is sound
    why = f"seed={seed}\n{report.describe()}"
    assert report.kills == 12, why
    assert report.sent == 400, why
    assert report.lost == 0, why
    assert report.dead == 0, why
    assert report.succeeded == 400, why
    assert report.run_concurrently == 0, why
    assert report.integrity == ("ok" if sqlite else NOT_A_FILE), why
    # And no worker died on its own, and the survivors stopped cleanly on SIGTERM
    assert report.problems == [], why
