"""A durable checkout: a workflow script whose progress survives a crash.

    uv run python examples/workflow_checkout.py

The run reserves stock and charges the card (two steps, each recorded once it is done),
sleeps half a second (a durable sleep: no worker is held meanwhile), waits for the
shipment event that this program sends, and returns a receipt. On a restart after a
crash, recorded steps return their checkpoints instead of running again.

Runs on SQLite, in its own file (./.stem/examples/workflow_checkout.db). The manual:
docs/workflows.md.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from stem import EventTimeoutError, Stem, WorkflowContext

app = Stem.from_url("sqlite:///.stem/examples/workflow_checkout.db")


@dataclass
class Receipt:
    order_id: str
    cents: int
    carrier: str


async def reserve(sku: str, quantity: int) -> str:
    print(f"reserving {quantity} x {sku}")
    return f"hold-{sku}-{quantity}"


async def charge(order_id: str, cents: int, idempotency_key: str) -> int:
    # The key is the same on every execution of this run: a payment API that honours
    # it charges once even if this step runs again after a crash.
    print(f"charging {order_id} {cents} cents (key ...{idempotency_key[-14:]})")
    return cents


def make_receipt(order_id: str, cents: int, carrier: str) -> Receipt:
    return Receipt(order_id, cents, carrier)  # stored as JSON, a Receipt again on replay


@app.workflow(name="shop.checkout")
async def checkout(wf: WorkflowContext, order_id: str, sku: str, quantity: int) -> Receipt:
    await wf.step("reserve", reserve, sku, quantity)
    cents = await wf.step("charge", charge, order_id, 1999 * quantity, wf.idempotency_key("charge"))
    await wf.sleep(timedelta(seconds=0.5))  # e.g. the warehouse's picking window
    try:
        shipped = await wf.wait_for_event(f"shipped.{order_id}", timeout=timedelta(seconds=30))
    except EventTimeoutError:
        shipped = {"carrier": "none (not shipped in time)"}
    return await wf.step("receipt", make_receipt, order_id, cents, shipped["carrier"])


async def main() -> None:
    async with app.worker(concurrency=4):
        ref = await checkout.start("order-42", sku="SKU-1", quantity=2)
        # Sent before the run waits for it: send_event keeps it for this run until then.
        await app.send_event(ref, "shipped.order-42", {"carrier": "ups"})
        result = await app.wait_for_workflow(ref, timeout=30)
        steps = await app.workflow_store.list_steps(ref)
    print(f"run {result.status}, steps: {', '.join(s.name for s in steps)}")
    receipt = result.value
    assert receipt is not None, result.error
    print(
        f"receipt: {receipt.order_id} charged {receipt.cents} cents, shipped by {receipt.carrier}"
    )
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
