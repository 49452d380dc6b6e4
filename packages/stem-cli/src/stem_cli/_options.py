"""Options that several commands share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["NotFoundError", "SetupError", "StoppedOnError", "url_option"]

F = TypeVar("F", bound=Callable[..., Any])


def url_option(help_text: str) -> Callable[[F], F]:
    """``--url URL`` (env ``STEM_URL``): the broker URL, overriding the app's own."""
    return click.option("--url", default=None, envvar="STEM_URL", metavar="URL", help=help_text)


class SetupError(click.ClickException):
    """Bad options, or an app or URL that cannot be used: a one-line message, exit code 2."""

    exit_code = 2


class StoppedOnError(click.ClickException):
    """The command ran and stopped on an error: a one-line message, exit code 1."""

    exit_code = 1


class NotFoundError(click.ClickException):
    """What the command names (a run, a step, a workflow) does not exist: exit code 3."""

    exit_code = 3
