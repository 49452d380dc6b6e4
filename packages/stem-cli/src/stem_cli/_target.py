"""The app a command works on (``--app``, ``--url``), and running its async body.

Commands that read or steer stored state (``stem wf ...``) take ``--app module:attr``
(the app with its registered workflows), ``--url`` (the stores to use), or both (the
app moved onto ``--url``); with neither, ``$STEM_URL`` or the embedded default. The
body runs in one event loop, and the app is closed afterwards whatever happens.

Errors become exit codes: 2 for bad options, arguments or URLs, 3 for something named
that does not exist, 1 for any other failure (a store that cannot be reached, too).
"""

from __future__ import annotations

import asyncio
import functools
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from stem import (
    ArgumentError,
    ConfigurationError,
    SerializationError,
    Stem,
    StemError,
    UnknownWorkflowError,
)

from ._loading import load_app
from ._options import NotFoundError, SetupError, StoppedOnError, url_option

__all__ = ["Target", "json_option", "target_options"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_APP_HELP = (
    "The app, as module:attribute (default attribute: app): its registered workflows "
    "and stores. Env: STEM_APP."
)
_URL_HELP = "The stores to use (with --app: instead of the app's own). Env: STEM_URL."


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command works: the app spec and URL it was given."""

    app_spec: str | None
    url: str | None
    verbose: bool = False

    def run(self, body: Callable[[Stem], Awaitable[T]], *, needs_app: str | None = None) -> T:
        """Build the app, run ``body(app)`` in an event loop, close the app.

        ``needs_app`` names the command when it cannot work without ``--app``.
        """
        if needs_app is not None and not self.app_spec:
            raise SetupError(
                f"{needs_app} needs --app module:attribute (or STEM_APP): the app whose "
                "workflows it reads"
            )
        try:
            if self.app_spec:
                app = load_app(self.app_spec, verbose=self.verbose)
            else:
                app = Stem.from_url(self.url)
        except ConfigurationError as exc:
            raise self._fail(exc, SetupError) from None

        async def main() -> T:
            try:
                if self.app_spec and self.url:
                    await app.use_url(self.url)
                return await body(app)
            finally:
                await app.aclose()

        running = main()
        try:
            return asyncio.run(running)
        except (click.ClickException, click.exceptions.Exit):
            raise
        except (ConfigurationError, ArgumentError, SerializationError) as exc:
            raise self._fail(exc, SetupError) from None
        except UnknownWorkflowError as exc:
            raise self._fail(exc, NotFoundError) from None
        except StemError as exc:
            raise self._fail(exc, StoppedOnError) from None
        except Exception as exc:  # a store that is away, a file that cannot be written
            raise self._fail(exc, StoppedOnError) from None
        finally:
            running.close()  # never started if a loop was running already

    def _fail(self, exc: Exception, kind: type[click.ClickException]) -> click.ClickException:
        if self.verbose:
            click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
        return kind(f"{type(exc).__name__}: {exc}")


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--app``, ``--url`` and ``--verbose``, handed to the command as ``target``."""

    @functools.wraps(fn)
    def command(app_spec: str | None, url: str | None, verbose: bool, **kwargs: Any) -> Any:
        return fn(target=Target(app_spec, url, verbose), **kwargs)

    options = [
        click.option("--app", "app_spec", default=None, envvar="STEM_APP", help=_APP_HELP),
        url_option(_URL_HELP),
        click.option("-v", "--verbose", is_flag=True, help="Print tracebacks of errors."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table."
    )(fn)
