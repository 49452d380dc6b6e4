"""``stem demo``: Stem's main job end to end on the embedded default, no server needed."""

from __future__ import annotations

import asyncio
import logging
import time

import click

from stem import Stem, TaskContext, TaskState

__all__ = ["demo"]


def _build(url: str | None) -> Stem:
    app = Stem.from_url(url)

    @app.task(name="demo.add")
    async def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="demo.flaky", max_retries=3, retry_backoff=0.05)
    async def flaky(ctx: TaskContext) -> str:
        if ctx.attempt < 2:
            raise ConnectionError("the payment service is busy")
        return f"charged on attempt {ctx.attempt + 1}"

    @app.task(name="demo.report")
    async def report(ctx: TaskContext, rows: int) -> dict[str, int]:
        for done in range(0, rows + 1, rows // 4):
            await ctx.progress(done / rows, {"rows": done})
        return {"rows": rows}

    return app


async def _run(url: str | None, count: int) -> int:
    app = _build(url)
    try:
        async with app.worker(concurrency=8, heartbeat_interval=1):
            click.echo(f"Stem demo on {url or 'the embedded default (SQLite at ./.stem/stem.db)'}")
            started = time.perf_counter()
            refs = await app.enqueue_many(app.tasks["demo.add"].call(i, i) for i in range(count))
            flaky = await app.enqueue("demo.flaky")
            report = await app.enqueue("demo.report", [400])
            bad = await app.enqueue(
                "demo.add", ["one", "two"]
            )  # does not fit the handler's int types
            results = [await app.wait_for_task(r, timeout=60) for r in refs]
            elapsed = time.perf_counter() - started
            ok = sum(1 for i, r in enumerate(results) if r.succeeded and r.value == 2 * i)
            click.echo(
                f"  {ok}/{count} additions succeeded in {elapsed:.2f}s ({count / elapsed:,.0f} tasks/s)"
            )
            flaky_result = await app.wait_for_task(flaky, timeout=60)
            click.echo(f"  retried task: {flaky_result.value}")
            report_result = await app.wait_for_task(report, timeout=60)
            click.echo(f"  progress task: {report_result.value}")
            bad_result = await app.wait_for_task(bad, timeout=60)
            dead = await app.broker.get_dead_letter(app.default_queue, bad)
            reason = dead.reason if dead else "?"
            click.echo(f"  bad arguments: {bad_result.state} -> dead-lettered ({reason})")
            failures = count - ok + (flaky_result.state is not TaskState.SUCCEEDED)
            return 1 if failures or bad_result.state is not TaskState.FAILED else 0
    finally:
        await app.aclose()


@click.command()
@click.option(
    "--url", default=None, envvar="STEM_URL", help="Broker URL (default: embedded SQLite)."
)
@click.option(
    "-n", "--tasks", "count", default=1000, show_default=True, help="How many tasks to run."
)
def demo(url: str | None, count: int) -> None:
    """Run a worker and a few thousand tasks in this process, then show the results."""
    logging.basicConfig(level=logging.WARNING, format="  worker says: %(message)s")
    raise SystemExit(asyncio.run(_run(url, count)))
