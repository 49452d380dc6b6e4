"""Periodic tasks: entries defined in code, fired by a beat, run by a worker.

    uv run python examples/beat.py

Runs on SQLite, its own file (./.stem/examples/beat.db). In production the beat runs
as a process of its own (`stem beat --app module:app`, two of them for availability)
beside your workers; here both run in this program for a few seconds.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import datetime
from zoneinfo import ZoneInfo

from stem import ConfigurationError, Cron, Interval, Stem, TaskContext

app = Stem.from_url("sqlite:///.stem/examples/beat.db")
samples: list[float] = []


@app.task(name="metrics.sample")
async def sample(ctx: TaskContext, source: str) -> None:
    # Each firing carries its entry and its nominal time (the same in every beat).
    samples.append(ctx.meta["stem.beat"]["at"])


@app.task(name="reports.weekday")
async def weekday_report() -> None: ...


# Half a second apart, and each weekday at 09:00 Paris time (summer or winter).
app.schedule("sample-cpu", Interval(0.5), sample, args=["cpu"])
app.schedule("weekday-report", Cron("0 9 * * mon-fri", tz="Europe/Paris"), weekday_report)


async def main() -> None:
    try:  # bad input is refused where it is written, with the reason
        app.schedule("broken", Cron("0 25 * * *"), weekday_report)
    except ConfigurationError as exc:
        print(f"refused: {exc}".split(". ")[0])

    async with app.worker(concurrency=2), app.beat(max_interval=0.5):
        while len(samples) < 3:  # noqa: ASYNC110 - a demo: wait for three firings
            await asyncio.sleep(0.05)

    first = samples[:3]
    steps = sorted(round(b - a, 3) for a, b in itertools.pairwise(first))
    print(f"sampled cpu {len(first)} times, {steps[0]} s apart")
    entry = await app.schedule_store.get("sample-cpu")
    assert entry is not None
    print(f"runs recorded: {entry.total_runs >= 3}, drift recorded: {entry.last_drift is not None}")
    report = await app.schedule_store.get("weekday-report")
    assert report is not None and report.next_run_at is not None
    paris = datetime.fromtimestamp(report.next_run_at, ZoneInfo("Europe/Paris"))
    print(f"weekday-report fires next on a {paris:%A} at {paris:%H:%M} Paris time")
    await app.aclose()


if __name__ == "__main__":
    asyncio.run(main())
