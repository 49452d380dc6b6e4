"""Retries with backoff, then the dead-letter queue: inspect, fix, replay.

uv run python examples/retries_and_dead_letters.py
"""

from __future__ import annotations

import asyncio

from stem import Stem

app = Stem.from_url("sqlite:///.stem/examples/retries_and_dead_letters.db")  # its own file
service_up = False


@app.task(name="sync.inventory", max_retries=2, retry_backoff=0.1)
async def sync_inventory(sku: str) -> str:
    if not service_up:
        raise ConnectionError(f"inventory service is down (sku {sku})")
    return f"{sku} synced"


async def main() -> None:
    global service_up
    async with app.worker():
        ref = await sync_inventory.enqueue("SKU-1")
        result = await app.wait_for_task(ref, timeout=30)
        assert result.error is not None and result.status is not None
        print(f"{result.state} after {result.status.attempt + 1} attempts: {result.error.message}")

        dead = await app.broker.get_dead_letter("default", ref)
        assert dead is not None
        print(f"dead letter: reason={dead.reason}, error={dead.error}")
        print("last traceback line:", (dead.traceback or "").strip().splitlines()[-1])

        service_up = True  # the outage is over: replay it
        replayed = asyncio.Event()
        app.hooks.on("on_success")(lambda ctx, value: replayed.set())
        await app.broker.replay_dead_letters("default", [ref])
        await asyncio.wait_for(replayed.wait(), timeout=30)
        print("after replay:", (await app.wait_for_task(ref, timeout=30)).value)
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
