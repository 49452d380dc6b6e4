"""Finding the user's app from ``module:attribute``."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from stem import Stem

from ._options import SetupError

__all__ = ["AppLoadError", "load_app"]


class AppLoadError(SetupError):
    """The app named by ``--app`` cannot be loaded: a one-line message, exit code 2."""


def load_app(spec: str, *, verbose: bool = False) -> Stem:
    """Import ``module:attr`` (attr may be a Stem or a function returning one).

    With ``verbose``, the traceback of an error raised while importing the module or
    calling the factory is printed to stderr first.

    Raises:
        AppLoadError: the module does not import, the attribute is missing, or it is not
            a Stem app.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name:
        raise AppLoadError(f"--app {spec!r}: expected module:attribute, e.g. myproject.tasks:app")
    # Like `python -m`, let the current directory's modules be found.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_name or module_name.startswith(missing + "."):
            raise AppLoadError(
                f"--app {spec}: cannot import {module_name!r}: there is no module {exc.name!r} "
                f"in {os.getcwd()} or on the Python path"
            ) from None
        raise _failure(spec, f"importing {module_name!r} failed", exc, verbose) from None
    except (Exception, SystemExit) as exc:
        raise _failure(spec, f"importing {module_name!r} failed", exc, verbose) from None
    target: object = module
    for part in (attr or "app").split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AppLoadError(
                f"--app {spec}: {module_name} has no attribute {attr or 'app'!r}"
            ) from None
    if callable(target) and not isinstance(target, Stem):
        try:
            target = target()
        except Exception as exc:
            raise _failure(spec, f"calling {attr or 'app'}() failed", exc, verbose) from None
    if not isinstance(target, Stem):
        raise AppLoadError(f"--app {spec}: is a {type(target).__name__}, not a stem.Stem app")
    return target


def _failure(spec: str, what: str, exc: BaseException, verbose: bool) -> AppLoadError:
    """One line naming the error and where it was raised; the traceback only if asked."""
    if verbose:
        click.echo("".join(traceback.format_exception(exc)).rstrip(), err=True)
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        where = f" ({_short(frames[-1].filename)}, line {frames[-1].lineno})"
    detail = str(exc) if not isinstance(exc, SystemExit) else f"exit code {exc.code}"
    hint = "" if verbose else "; add --verbose for the traceback"
    return AppLoadError(f"--app {spec}: {what}: {type(exc).__name__}: {detail}{where}{hint}")


def _short(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return path
    return path if relative.startswith("..") else relative
