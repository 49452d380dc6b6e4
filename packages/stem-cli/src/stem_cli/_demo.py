"""``stem demo``: Stem's main job end to end on the embedded default, no server needed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import click

from stem import ArgumentError, ConfigurationError, Stem, TaskContext, TaskResult, TaskState

from ._options import SetupError, url_option

__all__ = ["demo"]

#: How often progress is shown: redrawn in place on a terminal, a line otherwise.
_TERMINAL_EVERY = 0.2
_LOG_EVERY = 1.0


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


class _Progress:
    """Shows how many of ``total`` results are in while a long wait goes on."""

    def __init__(
        self, total: int, *, echo: Callable[..., None] = click.echo, every: float | None = None
    ) -> None:
        self.total = total
        self.done = 0
        self.enqueued = False
        self.live = sys.stdout.isatty()
        self.echo = echo
        self.every = every

    @contextlib.asynccontextmanager
    async def showing(self) -> AsyncIterator[None]:
        ticker = asyncio.ensure_future(self._tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            if self.live:
                self.echo("\r\033[K", nl=False)  # clear the progress line

    async def _tick(self) -> None:
        every = self.every
        if every is None:
            every = _TERMINAL_EVERY if self.live else _LOG_EVERY
        while True:
            await asyncio.sleep(every)
            text = (
                f"  {self.done:,}/{self.total:,} results in"
                if self.enqueued
                else f"  enqueueing {self.total:,} tasks"
            )
            if self.live:
                self.echo(f"\r\033[K{text}", nl=False)
            else:
                self.echo(text)


class _HideExpected(logging.Filter):
    """Keeps the worker's log line about the demo's deliberate bad call off the screen:
    the demo reports that outcome itself, as expected."""

    def __init__(self, task_id: str) -> None:
        super().__init__()
        self.task_id = task_id

    def filter(self, record: logging.LogRecord) -> bool:
        return self.task_id not in record.getMessage()


async def _run(url: str | None, count: int) -> int:
    app = _build(url)
    add = app.tasks["demo.add"]
    bad_id = f"demo-bad-arguments-{uuid.uuid4().hex[:8]}"
    hide = _HideExpected(bad_id)
    for handler in logging.getLogger().handlers:
        handler.addFilter(hide)
    where = url or f"{app.url} (the embedded default: SQLite, no server)"
    problems: list[str] = []
    try:
        async with app.worker(concurrency=8, heartbeat_interval=1):
            click.echo(f"Stem demo on {where}")
            started = time.perf_counter()
            progress = _Progress(count)
            results: list[TaskResult[Any]] = []
            async with progress.showing():
                refs = await app.enqueue_many(add.call(i, i) for i in range(count))
                progress.enqueued = True
                for ref in refs:
                    results.append(await app.wait_for_task(ref, timeout=60))
                    progress.done += 1
            elapsed = time.perf_counter() - started
            flaky = await app.enqueue("demo.flaky")
            report = await app.enqueue("demo.report", [400])
            ok = sum(1 for i, r in enumerate(results) if r.succeeded and r.value == 2 * i)
            click.echo(
                f"  {ok:,}/{count:,} additions succeeded in {elapsed:.2f}s "
                f"({count / elapsed:,.0f} tasks/s, enqueue to result)"
            )
            if ok != count:
                problems.append(f"{count - ok} additions did not succeed")
            flaky_result = await app.wait_for_task(flaky, timeout=60)
            click.echo(f"  retried task: {flaky_result.value}")
            if flaky_result.state is not TaskState.SUCCEEDED:
                problems.append("the retried task did not succeed")
            report_result = await app.wait_for_task(report, timeout=60)
            click.echo(f"  progress task: {report_result.value}")

            click.echo("Expected failures (Stem refusing bad input, as it should):")
            try:
                await add.enqueue("one", "two")
                problems.append("arguments that do not fit were accepted at enqueue")
            except ArgumentError as exc:
                click.echo(f"  demo.add('one', 'two') refused at enqueue: {exc}")
            # A producer that does not have the handler (another service, say) cannot
            # check the arguments: the worker refuses them instead, to the dead letters.
            elsewhere = Stem(app.broker, app.backend, clock=app.clock)
            await elsewhere.enqueue("demo.add", ["one", "two"], task_id=bad_id)
            bad_result = await app.wait_for_task(bad_id, timeout=60)
            dead = await app.broker.get_dead_letter(app.default_queue, bad_id)
            reason = dead.reason if dead else "not dead-lettered"
            click.echo(
                f"  the same call from a producer without the handler: {bad_result.state} "
                f"-> dead-lettered ({reason})"
            )
            if bad_result.state is not TaskState.FAILED or dead is None:
                problems.append("the bad call was not dead-lettered")
    finally:
        await app.aclose()
        for handler in logging.getLogger().handlers:
            handler.removeFilter(hide)
    if problems:
        click.echo(f"Unexpected: {'; '.join(problems)}.")
        return 1
    click.echo("Everything behaved as expected.")
    return 0


@click.command()
@url_option("Broker and backend URL (default: the embedded SQLite file). Env: STEM_URL.")
@click.option(
    "-n",
    "--tasks",
    "count",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many additions to run.",
)
def demo(url: str | None, count: int) -> None:
    """Run a worker and 1,000 tasks (or -n) in this process, then show the results.

    Exit codes: 0 when everything behaved as expected, 1 otherwise, 2 for bad options.
    """
    logging.basicConfig(level=logging.WARNING, format="  worker says: %(message)s")
    try:
        code = asyncio.run(_run(url, count))
    except ConfigurationError as exc:  # a URL that no adapter serves, say
        raise SetupError(f"{type(exc).__name__}: {exc}") from None
    raise SystemExit(code)
