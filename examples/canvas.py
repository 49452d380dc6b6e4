"""Canvas: group, chain and chord, nested, and a chord whose branch fails.

    uv run python examples/canvas.py

Runs on SQLite, a file (here ./.stem/examples/canvas.db, its own): no server needed.
The worker runs in this program; with workers in other processes it works the same,
and the chord's callback is sent by whichever worker stores the last branch's result.
"""

from __future__ import annotations

import asyncio

from stem import CanvasFailedError, CanvasFailure, Stem, chain, chord, group

app = Stem.from_url("sqlite:///.stem/examples/canvas.db")


@app.task(name="shop.price")
async def price(sku: str) -> int:
    return {"apple": 120, "pear": 95, "fig": 310}[sku]


@app.task(name="shop.discount")
async def discount(cents: int, percent: int) -> int:
    return cents * (100 - percent) // 100


@app.task(name="shop.total")
async def total(prices: list[int]) -> int:
    return sum(prices)


@app.task(name="shop.receipt")
async def receipt(cents: int, customer: str) -> str:
    return f"{customer} pays {cents / 100:.2f}"


@app.task(name="shop.stock", max_retries=1, retry_backoff=0.1)
async def stock(sku: str) -> int:
    raise LookupError(f"no stock record for {sku!r}")


@app.task(name="shop.alert")
async def alert(failure: CanvasFailure, team: str) -> str:
    print(f"alert to {team}: {failure.task} failed with {failure.error.type}")
    return team


async def main() -> None:
    async with app.worker(concurrency=8):
        # A group: the results come in the group's order
        prices = await group(price.call("apple"), price.call("pear"), price.call("fig")).apply()
        print("prices:", await prices.results(timeout=30))

        # A chain: each result is the next task's first argument
        sale = await app.apply(chain(price.call("fig"), discount.partial(percent=10)))
        print("fig on sale:", await sale.result(timeout=30))

        # A chord: the callback gets every branch's result, in order
        basket = await app.apply(chord([price.call(s) for s in ("apple", "pear")], total))
        print("basket:", await basket.result(timeout=30))

        # Nested: a chord of chains, then a chain link after it
        order = await app.apply(
            chain(
                chord(
                    [
                        chain(price.call("apple"), discount.partial(50)),
                        chain(price.call("fig"), discount.partial(10)),
                    ],
                    total,
                ),
                receipt.partial("ann"),
            )
        )
        print("receipt:", await order.result(timeout=30))

        # A failing branch (after its retry) fails the chord; only the error callback runs
        broken = await app.apply(
            chord([price.call("pear"), stock.call("kiwi")], total, on_error=alert.partial("ops"))
        )
        try:
            await broken.result(timeout=30)
        except CanvasFailedError as exc:
            print(f"chord failed: {exc.task} raised {exc.error.type}: {exc.error.message}")
        await app.wait_for_task(broken.error_callback_ids[0], timeout=30)  # the alert
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
