"""Command-line entry point."""

from __future__ import annotations

import asyncio
import logging
import re
import sys

import click

from ._demo import demo
from ._loading import load_app

__all__ = ["cli", "main"]

_APP_HELP = "The app to use, as module:attribute (default attribute: app). Env: STEM_APP."


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "STEM"})
@click.version_option(package_name="stem-cli")
def cli() -> None:
    """Stem: background jobs and durable workflows."""


def _concurrency(value: str) -> int | tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", value)
    if match is None:
        raise click.BadParameter("use a number (8) or a range for autoscaling (2-16)")
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if low < 1 or high < low:
        raise click.BadParameter("concurrency must be at least 1, and a range must go up (2-16)")
    return low if low == high else (low, high)


@cli.command()
@click.option("--app", "app_spec", required=True, envvar="STEM_APP", help=_APP_HELP)
@click.option(
    "-Q",
    "--queue",
    "queues",
    multiple=True,
    help="Queue to consume (repeat for several, in order).",
)
@click.option(
    "-c",
    "--concurrency",
    default="10",
    show_default=True,
    help="Handlers at once, or MIN-MAX to autoscale.",
)
@click.option(
    "--pool",
    type=click.Choice(["async", "thread", "process"]),
    default=None,
    help="Pool for plain-function tasks.",
)
@click.option(
    "--prefetch", default=0, show_default=True, help="Messages to hold beyond free slots."
)
@click.option(
    "--grace-period",
    default=30.0,
    show_default=True,
    help="Seconds running tasks get to finish on shutdown.",
)
@click.option(
    "--max-deliveries",
    default=5,
    show_default=True,
    help="Deliveries without a result before a message is poison.",
)
@click.option(
    "--heartbeat-interval", default=10.0, show_default=True, help="Seconds between heartbeats."
)
@click.option(
    "-l",
    "--loglevel",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def worker(
    app_spec: str,
    queues: tuple[str, ...],
    concurrency: str,
    pool: str | None,
    prefetch: int,
    grace_period: float,
    max_deliveries: int,
    heartbeat_interval: float,
    loglevel: str,
) -> None:
    """Run a worker until SIGTERM/SIGINT (twice to stop at once)."""
    _configure_logging(loglevel)
    app = load_app(app_spec)
    the_worker = app.worker(
        queues=list(queues) or None,
        concurrency=_concurrency(concurrency),
        pool=pool,
        prefetch=prefetch,
        grace_period=grace_period,
        max_deliveries=max_deliveries,
        heartbeat_interval=heartbeat_interval,
    )

    async def serve() -> None:
        try:
            await the_worker.run()
        finally:
            await app.aclose()

    asyncio.run(serve())


cli.add_command(demo)


def _configure_logging(level: str) -> None:
    # The worker logs a line per task, so a log record must be cheap. These switches
    # come from the logging HOWTO's "Optimization" section: the format below prints
    # no caller, thread or process, so they need not be collected.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main() -> None:
    cli()
