"""``redis://``, ``rediss://`` and ``redis+cluster://`` URLs: the servers they name and the
options they carry."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from stem import ConfigurationError

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_POOL_SIZE",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "RedisOptions",
    "mask_url",
    "parse_url",
]

#: The key prefix (namespace) when the URL gives none: keys are ``stem:...`` and ``{stem:...}``.
DEFAULT_PREFIX = "stem"
#: Longest idle wait of a consumer between two reads of its queues (a safety net:
#: publishes wake it at once through pub/sub).
DEFAULT_POLL_INTERVAL = 1.0
#: Connections per server and event loop (stores of one app share them).
DEFAULT_POOL_SIZE = 32
#: Seconds to connect, and to wait for any one reply.
DEFAULT_TIMEOUT = 5.0

#: URL schemes: (TLS, Redis Cluster) of each.
_SCHEMES = {
    "redis": (False, False),
    "rediss": (True, False),
    "redis+cluster": (False, True),
    "rediss+cluster": (True, True),
}
_CERT_REQS = ("none", "optional", "required")
_SECONDS = ("poll_interval", "socket_timeout", "connect_timeout")
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_OPTIONS = (
    "prefix",
    *_SECONDS,
    "pool_size",
    *_TLS_FILES,
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_PREFIX = re.compile(r"[^\s{}]{1,100}")
_SECRET_QUERY = re.compile(
    r"((?<![^&])(?:password|passwd|pwd|secret|token|api_key)=)[^&]*", re.IGNORECASE
)


def mask_url(url: str) -> str:
    """``url`` with its password (and any password-like query value) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # The netloc does not parse (a bad port, say): hide whatever may follow a colon
        # in the user part, which is where a password would be.
        head, sep, rest = url.partition("://")
        if not sep:
            return "<not a URL>"
        userinfo, at, host = rest.partition("@")
        if not at:
            return url
        return f"{head}://{userinfo.partition(':')[0]}:***@{host}"
    netloc, query = parts.netloc, _SECRET_QUERY.sub(r"\1***", parts.query)
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True, slots=True)
class RedisOptions:
    """Where the server is, how to talk to it, and the key prefix.

    Attributes:
        url: the URL as given (it may hold a password: show :attr:`masked_url` instead).
        tls: ``rediss://`` or ``rediss+cluster://``: connect with TLS.
        cluster: ``redis+cluster://``: the servers are nodes of a Redis Cluster.
        host, port, db, username, password: the server and the credentials (in cluster
            mode, the first node named; db is always 0).
        nodes: in cluster mode, every (host, port) the URL names: the client asks them
            for the cluster's layout until one answers.
        prefix: the namespace of every key (default ``stem``), so several apps can share
            one server: each sees only its own queues, results and locks.
        poll_interval: longest idle wait of a consumer between two reads of its queues.
        socket_timeout, connect_timeout: seconds to wait for a reply, and to connect.
        pool_size: connections per server and event loop, shared by the stores of an app.
        ssl_ca_certs, ssl_certfile, ssl_keyfile: PEM files (CA bundle, client certificate
            and key) for ``rediss://``.
        ssl_cert_reqs: ``required`` (default), ``optional`` or ``none``: whether the
            server's certificate must verify.
        ssl_check_hostname: whether the certificate must name the host (default: yes,
            when certificates are verified).
    """

    url: str = field(repr=False)
    tls: bool = False
    cluster: bool = False
    nodes: tuple[tuple[str, int], ...] = ()
    host: str = "localhost"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str = DEFAULT_PREFIX
    poll_interval: float = DEFAULT_POLL_INTERVAL
    socket_timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_TIMEOUT
    pool_size: int = DEFAULT_POOL_SIZE
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_cert_reqs: str = "required"
    ssl_check_hostname: bool | None = None

    @property
    def masked_url(self) -> str:
        """The URL with its password replaced by ``***``: what errors and logs show."""
        return mask_url(self.url)

    @property
    def server(self) -> tuple[object, ...]:
        """What makes two URLs name the same data: stores agreeing on it may share scripts."""
        if self.cluster:
            return (self.tls, "cluster", tuple(sorted((h.lower(), p) for h, p in self.nodes)))
        return (self.tls, self.host.lower(), self.port, self.db)

    @property
    def pool_key(self) -> tuple[object, ...]:
        """What makes two URLs able to share one connection pool."""
        return (
            *self.server,
            self.username,
            self.password,
            self.socket_timeout,
            self.connect_timeout,
            self.pool_size,
            self.ssl_ca_certs,
            self.ssl_certfile,
            self.ssl_keyfile,
            self.ssl_cert_reqs,
            self.ssl_check_hostname,
        )


def _bad(url: str, problem: str) -> ConfigurationError:
    if "+cluster://" in url.lower():
        form = (
            "redis+cluster://[user:password@]host:port[,host:port...][/][?prefix=NAME&...] "
            "(rediss+cluster:// for TLS)"
        )
    else:
        form = "redis://[user:password@]host[:port][/db][?prefix=NAME&...] (rediss:// for TLS)"
    return ConfigurationError(f"{problem} in the Redis URL {mask_url(url)}; the form is {form}")


def _cluster_nodes(url: str, netloc: str) -> tuple[tuple[str, int], ...]:
    """The ``host:port`` list of a ``redis+cluster://`` URL (port 6379 when left out)."""
    hosts = netloc.rpartition("@")[2]
    if not hosts:
        return (("localhost", 6379),)
    nodes = []
    for item in hosts.split(","):
        if item.startswith("["):  # an IPv6 address: [::1]:7000
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise _bad(url, f"malformed node {item!r}")
            port_text = rest[1:]
        else:
            host, colon, port_text = item.partition(":")
            if colon and not port_text:
                raise _bad(url, f"node {item!r} has an empty port")
        if not host:
            raise _bad(url, f"a node without a host ({item!r})")
        if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
            raise _bad(url, f"node {item!r} has a port that is not a number from 1 to 65535")
        nodes.append((host, int(port_text) if port_text else 6379))
    return tuple(nodes)


def _seconds(url: str, key: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise _bad(url, f"option {key} must be a number of seconds above 0, not {raw!r},")
    return value


def _boolean(url: str, key: str, raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise _bad(url, f"option {key} must be true or false, not {raw!r},")


#: The environment variables that give a ``rediss://`` URL's TLS options it leaves out.
TLS_ENVIRONMENT = {
    "ssl_ca_certs": "STEM_TLS_CA_CERTS",
    "ssl_certfile": "STEM_TLS_CERTFILE",
    "ssl_keyfile": "STEM_TLS_KEYFILE",
    "ssl_cert_reqs": "STEM_TLS_CERT_REQS",
    "ssl_check_hostname": "STEM_TLS_CHECK_HOSTNAME",
}


def _option(url: str, key: str, raw: str) -> object:
    """The value of one option, checked."""
    if key == "prefix":
        if not _PREFIX.fullmatch(raw):
            raise _bad(
                url, f"prefix must be 1 to 100 characters without spaces or braces, not {raw!r},"
            )
        return raw
    if key in _SECONDS:
        return _seconds(url, key, raw)
    if key == "pool_size":
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise _bad(url, f"option pool_size must be a whole number from 1, not {raw!r},")
        return int(raw)
    if key == "ssl_cert_reqs":
        if raw.lower() not in _CERT_REQS:
            raise _bad(url, f"option ssl_cert_reqs must be one of {', '.join(_CERT_REQS)},")
        return raw.lower()
    if key == "ssl_check_hostname":
        return _boolean(url, key, raw)
    if not raw:
        raise _bad(url, f"option {key} names no file")
    return raw


def parse_url(url: str) -> RedisOptions:
    """Parse a ``redis://``, ``rediss://``, ``redis+cluster://`` or ``rediss+cluster://`` URL.

    ``redis://[user:password@]host[:port][/db]`` (defaults: localhost, 6379, 0);
    ``redis+cluster://[user:password@]host:port[,host:port...][/]`` names one or more
    nodes of a Redis Cluster (which has database 0 only). User and password are
    percent-decoded. Query options: ``prefix`` (the key namespace,
    default ``stem``), ``poll_interval``, ``socket_timeout``, ``connect_timeout``
    (seconds), ``pool_size``, and for ``rediss://`` ``ssl_ca_certs``, ``ssl_certfile``,
    ``ssl_keyfile``, ``ssl_cert_reqs`` (``none``, ``optional``, ``required``) and
    ``ssl_check_hostname``.

    Raises:
        ConfigurationError: not a Redis URL, or a bad part or option; the message names
            the URL with its password masked.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a Redis URL must be a string, not {type(url).__name__}")
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError as exc:
        raise _bad(url, f"malformed URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES or "://" not in url:
        raise _bad(url, "not a redis://, rediss:// or redis+cluster:// URL")
    tls, cluster = _SCHEMES[scheme]
    hostname: str | None
    port: int | None
    if cluster:
        nodes = _cluster_nodes(url, parts.netloc)
        (hostname, port) = nodes[0]
    else:
        nodes = ()
        try:
            port = parts.port
            hostname = parts.hostname
        except ValueError as exc:
            raise _bad(url, f"malformed URL ({exc})") from None
    if parts.fragment:
        raise _bad(url, f"a fragment (#{parts.fragment}) has no meaning")
    path = parts.path.strip("/")
    if cluster and path not in ("", "0"):
        raise _bad(
            url,
            f"a Redis Cluster has database 0 only, so {parts.path!r} cannot be used: remove it "
            "(apps sharing a cluster keep apart with ?prefix=NAME)",
        )
    if path and not path.isdigit():
        raise _bad(url, f"the database must be a number (like /0), not {parts.path!r},")
    values: dict[str, object] = {}
    seen: set[str] = set()
    for key, raw in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise _bad(url, f"unknown option {key!r} (the options are {', '.join(_OPTIONS)})")
        if key in seen:
            raise _bad(url, f"option {key} is given twice")
        seen.add(key)
        values[key] = _option(url, key, raw)
    if tls:
        # TLS settings the URL leaves out come from the environment (the URL wins), so
        # certificate paths need not be repeated in every URL of a deployment.
        for key, variable in TLS_ENVIRONMENT.items():
            given = os.environ.get(variable)
            if key not in values and given:
                try:
                    values[key] = _option(url, key, given)
                except ConfigurationError as exc:
                    raise ConfigurationError(f"{variable}: {exc}") from None
    if not tls:
        tls_options = sorted(k for k in values if k.startswith("ssl_"))
        if tls_options:
            raise _bad(
                url,
                f"{', '.join(tls_options)} need TLS: use {scheme.replace('redis', 'rediss', 1)}:// "
                f"instead of {scheme}://",
            )
    return RedisOptions(
        url=url,
        tls=tls,
        cluster=cluster,
        nodes=nodes,
        host=hostname or "localhost",
        port=port if port is not None else 6379,
        db=int(path) if path else 0,
        username=unquote(username) if username else None,
        password=unquote(password) if password is not None else None,
        **values,  # type: ignore[arg-type]
    )
