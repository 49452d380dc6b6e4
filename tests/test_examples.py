"""Every program under examples/ runs, in a fresh directory, and says what it should.

Each example keeps its data in its own file, ./.stem/examples/<name>.db, and leaves
everyone else's alone: the demo's and your app's ./.stem/stem.db, and whatever else is
in its own file.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stem import Stem
from stem.contracts import Message

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "canvas.py": [
        "prices: [120, 95, 310]",
        "fig on sale: 279",
        "basket: 215",
        "receipt: ann pays 3.39",
        "chord failed: shop.stock raised LookupError: no stock record for 'kiwi'",
        "alert to ops: shop.stock failed with LookupError",
    ],
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
    "workflow_checkout.py": [
        "run completed, steps: reserve, charge, sleep, event:shipped.order-42, receipt",
        "receipt: order-42 charged 3998 cents, shipped by ups",
    ],
    "beat.py": [
        "refused: invalid cron expression '0 25 * * *': Bad hour",
        "sampled cpu 3 times, 0.5 s apart",
        "runs recorded: True, drift recorded: True",
        "at 09:00 Paris time",
    ],
    "workflow_flow.py": [
        "approval: durable-flows waits for an editor",
        "approval: resumed by event: {'editor': 'ann'}",
        "published durable-flows (812 words), approved by ann",
    ],
}


def test_every_example_is_checked() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


async def _leave_a_dead_letter(path: Path, message_id: str) -> None:
    app = Stem.from_url(f"sqlite:///{path}")
    try:
        await app.broker.publish(
            Message(id=message_id, queue="default", body=b"someone else's", priority=0, eta=None)
        )
        (delivery,) = await app.broker.reserve(["default"], 1, 30)
        assert await app.broker.dead_letter(delivery, "kept-for-later")
    finally:
        await app.aclose()


async def _dead_letter_ids(path: Path) -> set[str]:
    app = Stem.from_url(f"sqlite:///{path}")
    try:
        return {letter.message.id for letter in await app.broker.list_dead_letters("default")}
    finally:
        await app.aclose()


@pytest.mark.processes
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str, tmp_path: Path) -> None:
    own = tmp_path / ".stem" / "examples" / name.replace(".py", ".db")
    shared = tmp_path / ".stem" / "stem.db"
    for path in (own, shared):
        asyncio.run(_leave_a_dead_letter(path, f"other-{path.stem}"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STEM_")}
    done = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name)],  # StemWarning included
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    for line in EXPECTED[name]:
        assert line in done.stdout, f"{line!r} not in:\n{done.stdout}\n{done.stderr}"
    for path in (own, shared):  # nobody else's data was touched
        assert f"other-{path.stem}" in asyncio.run(_dead_letter_ids(path)), path
    assert asyncio.run(_dead_letter_ids(shared)) == {"other-stem"}  # it ran on its own file
