"""Every program under examples/ runs, in a fresh directory, and says what it should."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "quickstart.py": ["succeeded: order-42 charged 1999 cents", "sums: [0, 2, 4"],
    "retries_and_dead_letters.py": [
        "failed after 3 attempts",
        "reason=max-retries",
        "after replay: SKU-1 synced",
    ],
    "sync_producer.py": [
        "enqueued 3 tasks",
        "welcome mail sent to user2@example.com",
        "result read synchronously",
    ],
    "process_pool.py": ["primes below 200,000: 17984", "stopped politely at the soft limit"],
}


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.processes
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, f"{line!r} not in:\n{done.stdout}\n{done.stderr}"
    assert (tmp_path / ".stem" / "stem.db").exists()  # ran on the embedded default
