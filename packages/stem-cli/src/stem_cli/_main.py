"""Command-line entry point."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import traceback

import click

from stem import ConfigurationError, StemError

from ._demo import demo
from ._loading import load_app
from ._options import SetupError, StoppedOnError, url_option
from .commands.beat import beat, schedule
from .commands.wf import wf

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


def _pool(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value == "async":
        raise click.BadParameter(
            "async handlers always run on the worker's event loop; --pool chooses where "
            "plain-function tasks run: thread or process"
        )
    if value not in (None, "thread", "process"):
        raise click.BadParameter(f"{value!r} is not a pool: use thread or process")
    return value


@cli.command()
@click.option("--app", "app_spec", required=True, envvar="STEM_APP", help=_APP_HELP)
@url_option(
    "Run the app's tasks on this broker (and backend, unless STEM_BACKEND_URL says "
    "otherwise) instead of the stores the app was built with. Env: STEM_URL."
)
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
    default=None,
    metavar="thread|process",
    callback=_pool,
    help="Run every plain-function task in this pool instead of its own choice "
    "(async handlers always run on the event loop).",
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
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Print tracebacks of errors (also with -l debug)."
)
def worker(
    app_spec: str,
    url: str | None,
    queues: tuple[str, ...],
    concurrency: str,
    pool: str | None,
    prefetch: int,
    grace_period: float,
    max_deliveries: int,
    heartbeat_interval: float,
    loglevel: str,
    verbose: bool,
) -> None:
    """Run a worker until SIGTERM/SIGINT (twice to stop at once).

    Exit codes: 0 after a clean stop, 1 when the worker stops on an error, 2 for bad
    options or an app that cannot be loaded.
    """
    _configure_logging(loglevel)
    verbose = verbose or loglevel == "debug"
    app = load_app(app_spec, verbose=verbose)
    slots = _concurrency(concurrency)

    async def serve() -> None:
        try:
            if url is not None:
                await app.use_url(url)
            the_worker = app.worker(
                queues=list(queues) or None,
                concurrency=slots,
                pool=pool,
                prefetch=prefetch,
                grace_period=grace_period,
                max_deliveries=max_deliveries,
                heartbeat_interval=heartbeat_interval,
            )
            await the_worker.run()
        finally:
            await app.aclose()

    try:
        asyncio.run(serve())
    except ConfigurationError as exc:  # an option or URL the worker cannot use
        raise _one_line(exc, verbose, SetupError) from None
    except StemError as exc:
        raise _one_line(exc, verbose, StoppedOnError) from None


def _one_line(
    exc: StemError, verbose: bool, kind: type[click.ClickException]
) -> click.ClickException:
    """The error in one line; its traceback first only when asked for."""
    if verbose:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    return kind(f"{type(exc).__name__}: {exc}")


cli.add_command(demo)
cli.add_command(wf)
cli.add_command(beat)
cli.add_command(schedule)


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
