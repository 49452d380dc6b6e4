"""A flow whose middle step suspends until an editor approves, then resumes.

    uv run python examples/workflow_flow.py

A flow is a list of declared steps run in order, each one's value recorded. The
"approval" step waits for an event: the run is suspended (no worker is held), and when
the event comes the step runs again from its top, with the payload in
``ctx.take_resume_data()``.

Runs on SQLite, in its own file (./.stem/examples/workflow_flow.db). The manual:
docs/workflows.md.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from stem import FlowContext, Stem

app = Stem.from_url("sqlite:///.stem/examples/workflow_flow.db")
publish = app.flow("blog.publish")


@publish.step("draft")
def draft(ctx: FlowContext) -> dict[str, Any]:
    return {"slug": ctx.params["slug"], "words": 812}


@publish.step("approval")
async def approval(ctx: FlowContext) -> dict[str, Any]:
    post = ctx.previous_result
    woke = ctx.resumed_by  # None on the first run; read it before take_resume_data()
    if woke == "timeout":
        return {**post, "approved_by": None}
    decision = ctx.take_resume_data()  # the event's payload when the step resumes
    if decision is None:
        print(f"approval: {post['slug']} waits for an editor")
        # Suspends the run; the step runs again from its top when the event comes.
        decision = await ctx.await_event(f"approve.{post['slug']}", deadline=timedelta(seconds=30))
    print(f"approval: resumed by {woke or 'an event sent before the wait'}: {decision}")
    return {**post, "approved_by": decision["editor"]}


@publish.step("publish")
def publish_post(ctx: FlowContext) -> str:
    post = ctx.previous_result
    if post["approved_by"] is None:
        return f"{post['slug']} not published: nobody approved it"
    return f"published {post['slug']} ({post['words']} words), approved by {post['approved_by']}"


async def main() -> None:
    async with app.worker(concurrency=4):
        ref = await publish.start(slug="durable-flows")
        topic = "approve.durable-flows"
        # emit_event reaches only the runs waiting at that moment (it returns their
        # ids), so try until the run has reached its wait.
        for _ in range(600):
            if await app.emit_event(topic, {"editor": "ann"}):
                print(f"emitted {topic}: the run resumed")
                break
            await asyncio.sleep(0.05)
        result = await app.wait_for_workflow(ref, timeout=30)
        steps = await app.workflow_store.list_steps(ref)
    print(f"run {result.status}, steps: {', '.join(s.name for s in steps)}")
    print(result.value)
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
