"""Finding the user's app from ``module:attribute``."""

from __future__ import annotations

import importlib
import os
import sys

import click

from stem import Stem

__all__ = ["load_app"]


def load_app(spec: str) -> Stem:
    """Import ``module:attr`` (attr may be a Stem or a function returning one).

    Raises:
        click.BadParameter: the module or attribute is missing, or is not a Stem app.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise click.BadParameter(
            f"{spec!r}: expected module:attribute, e.g. myproject.tasks:app", param_hint="--app"
        )
    # Like `python -m`, let the current directory's modules be found.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="--app"
        ) from exc
    target: object = module
    for part in (attr or "app").split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise click.BadParameter(
                f"{module_name} has no attribute {attr or 'app'!r}", param_hint="--app"
            ) from None
    if callable(target) and not isinstance(target, Stem):
        target = target()
    if not isinstance(target, Stem):
        raise click.BadParameter(
            f"{spec} is a {type(target).__name__}, not a stem.Stem app", param_hint="--app"
        )
    return target
