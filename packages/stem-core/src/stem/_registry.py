"""URL schemes to adapters, through the ``stem.adapters`` entry-point group."""

from __future__ import annotations

import difflib
import functools
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from ._errors import ConfigurationError, UnknownSchemeError
from .contracts import Adapter

__all__ = ["get_adapter", "parse_scheme", "register_adapter"]

#: Schemes of the first-party adapters and the distribution that provides each,
#: so a missing one is named in the error even when it is not installed.
KNOWN_SCHEMES: dict[str, str] = {
    "memory": "stem-core",
    "sqlite": "stem-sqlite",
    "redis": "stem-redis",
    "rediss": "stem-redis",
    "postgresql": "stem-postgres",
    "postgres": "stem-postgres",
}

#: First-party adapters that are planned but not released. Their packages exist (as
#: placeholders) but register no entry point, so the scheme is refused with a message
#: saying so. An adapter's release removes its schemes from here.
PLANNED: dict[str, str] = {
    "postgresql": "PostgreSQL",
    "postgres": "PostgreSQL",
}

_registered: dict[str, Adapter] = {}


def register_adapter(scheme: str, adapter: Adapter) -> None:
    """Register an adapter for a scheme in this process (tests, or adapters without a distribution)."""
    if not isinstance(adapter, Adapter):
        raise ConfigurationError(f"{adapter!r} is not a stem.contracts.Adapter")
    _registered[scheme.lower()] = adapter


@functools.cache
def _entry_point_schemes() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group="stem.adapters")}


def parse_scheme(url: str) -> str:
    """The URL's scheme, or a :class:`ConfigurationError` saying what a URL looks like."""
    if not isinstance(url, str):
        raise ConfigurationError(f"a Stem URL must be a string, not {type(url).__name__}")
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise ConfigurationError(f"malformed URL {url!r}: {exc}") from exc
    if not scheme or "://" not in url:
        raise ConfigurationError(
            f"{url!r} is not a Stem URL: expected scheme://..., for example "
            "sqlite:///path/to/stem.db, redis://localhost:6379/0 or memory://"
        )
    return scheme


def get_adapter(url: str) -> Adapter:
    """The adapter for a URL's scheme, loading its entry point on first use."""
    scheme = parse_scheme(url)
    if scheme in _registered:
        return _registered[scheme]
    target = _entry_point_schemes().get(scheme)
    if target is None:
        if scheme in PLANNED:
            available = ", ".join(f"{s}://" for s in _available_schemes())
            raise UnknownSchemeError(
                f"{PLANNED[scheme]} support is not released yet, so {scheme}:// URLs cannot "
                f"be used (the {KNOWN_SCHEMES[scheme]} package is a placeholder). Adapters "
                f"available now: {available}"
            )
        if scheme in KNOWN_SCHEMES:
            dist = KNOWN_SCHEMES[scheme]
            raise UnknownSchemeError(
                f"{scheme}:// URLs need the {dist} package: pip install {dist}"
            )
        known = sorted(set(KNOWN_SCHEMES) | set(_entry_point_schemes()) | set(_registered))
        close = difflib.get_close_matches(scheme, known, n=1)
        hint = f" Did you mean {close[0]}://?" if close else ""
        raise UnknownSchemeError(
            f"no Stem adapter handles {scheme}:// URLs. Known schemes: {', '.join(known)}.{hint}"
        )
    adapter = _load(scheme, target)
    _registered[scheme] = adapter
    return adapter


def _available_schemes() -> list[str]:
    return sorted(set(_entry_point_schemes()) | set(_registered))


def _load(scheme: str, target: str) -> Adapter:
    found = [e for e in entry_points(group="stem.adapters") if e.name == scheme]
    if not found:  # pragma: no cover - entry points changed under us
        raise UnknownSchemeError(f"the adapter for {scheme}:// ({target}) disappeared")
    try:
        loaded = found[0].load()
    except ImportError as exc:
        raise UnknownSchemeError(
            f"the adapter for {scheme}:// ({target}) failed to import: {exc}"
        ) from exc
    adapter = loaded() if isinstance(loaded, type) else loaded
    if not isinstance(adapter, Adapter):
        raise ConfigurationError(
            f"the stem.adapters entry point {scheme} = {target} is not a stem.contracts.Adapter"
        )
    return adapter
