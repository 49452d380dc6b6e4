"""Quick start: define tasks, run a worker in this program, enqueue, read results.

    uv run python examples/quickstart.py

Runs on SQLite, a file (here ./.stem/examples/quickstart.db, its own): no server needed.
An app built with no URL at all, ``Stem.from_url()``, uses ./.stem/stem.db.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from stem import Stem, TaskContext

app = Stem.from_url("sqlite:///.stem/examples/quickstart.db")


@dataclass
class Receipt:
    order_id: str
    cents: int


@app.task(name="shop.charge", max_retries=3)
async def charge(ctx: TaskContext, order_id: str, cents: int) -> Receipt:
    # ctx.idempotency_key() stays the same across retries: pass it to the payment API.
    print(f"charging {order_id} (attempt {ctx.attempt + 1}, key {ctx.idempotency_key()[:8]})")
    return Receipt(order_id, cents)


@app.task(name="shop.add")
def add(a: int, b: int) -> int:  # a plain function: runs in the worker's thread pool
    return a + b


async def main() -> None:
    async with app.worker(concurrency=4):
        ref = await charge.enqueue("order-42", cents=1999)
        receipt = await app.wait_for_task(ref, timeout=30)
        assert receipt.value is not None
        print(f"{receipt.state}: {receipt.value.order_id} charged {receipt.value.cents} cents")

        ids = await app.enqueue_many(add.call(i, i) for i in range(10))
        sums = [(await app.wait_for_task(i, timeout=30)).value for i in ids]
        print("sums:", sums)
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
