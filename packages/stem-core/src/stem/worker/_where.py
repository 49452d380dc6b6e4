"""Where a worker reads and writes, said without secrets (for its start-up banner)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["mask", "where"]

_SECRET_QUERY = re.compile(
    r"((?<![^&])(?:password|passwd|pwd|secret|token|api_key)=)[^&]*", re.IGNORECASE
)


def mask(url: str) -> str:
    """``url`` with its password (and any password-like query value) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<a URL that does not parse>"
    netloc, query = parts.netloc, _SECRET_QUERY.sub(r"\1***", parts.query)
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: urlunsplit would turn sqlite:///x into sqlite:/x
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def where(url: str | None, store: object) -> str:
    """Where a store reads and writes, for the banner: its URL, and its file if it has one."""
    text = mask(url) if url is not None else type(store).__name__
    path = getattr(store, "path", None)
    if isinstance(path, str):
        text += f" (file {path})"
    return text
