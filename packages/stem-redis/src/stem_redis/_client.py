"""Connections: one pool (and one pub/sub connection) per server, per event loop.

Every store built from URLs naming the same server with the same connection settings
shares one :class:`RedisClient` in each event loop (redis-py's asyncio connections
belong to the loop that opened them). Nothing connects until the first command.

On a single server, commands and scripts go through :class:`~stem_redis._resp.RespClient`
(a few pipelined connections, one write and one future per call), which answers what
redis-py answers; redis-py's client still serves pub/sub. ``STEM_REDIS_CLIENT=redis-py``
in the environment sends everything through redis-py instead (for comparisons).

With ``redis+cluster://`` the client is redis-py's ``RedisCluster``: it routes each
command (a script by its first key) to the node that owns the key's slot, and follows
the cluster when slots move. Callers keep every key of one call in one slot.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MaxConnectionsError,
    NoScriptError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from stem import AdapterError, Clock, ConfigurationError

from ._errors import translate
from ._notify import Hub, ShardedHub
from ._resp import CONNECTIONS, RespClient
from ._scripts import CLUSTER_SCRIPTS, SCRIPTS, Script
from ._url import RedisOptions, parse_url

__all__ = ["Arg", "ClientHandle", "RedisClient", "call_token", "gather_all", "pack"]

Arg = bytes | str | int | float

#: The environment variable choosing the single-server client: ``resp`` (the default)
#: or ``redis-py`` (redis-py's asyncio client for every command, as before _resp.py).
CLIENT_ENVIRONMENT = "STEM_REDIS_CLIENT"
_CLIENTS = ("resp", "redis-py")


def _use_resp() -> bool:
    chosen = os.environ.get(CLIENT_ENVIRONMENT, "").strip().lower() or "resp"
    if chosen not in _CLIENTS:
        raise ConfigurationError(
            f"{CLIENT_ENVIRONMENT}={chosen!r} is not a Redis client Stem has: use "
            f"{' or '.join(_CLIENTS)} (or leave it unset)"
        )
    return chosen == "resp"


#: Batches go to scripts as one MessagePack argument (see lua/_args.lua).
pack = msgspec.msgpack.Encoder().encode


class RedisClient:
    """A connection pool and a pub/sub hub for one server (or one cluster), in one event loop."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
        self.cluster: RedisCluster | None = None
        kwargs: dict[str, Any] = {
            "host": options.host,
            "port": options.port,
            "db": options.db,
            "username": options.username,
            "password": options.password,
            "socket_timeout": options.socket_timeout,
            "socket_connect_timeout": options.connect_timeout,
            # No retries inside redis-py: a script whose reply was lost must not run twice
            # behind our back (a publish would be doubled). Callers see the error; workers
            # back off and read again, and leases redeliver whatever was in flight.
            "retry": Retry(NoBackoff(), 0),
            "client_name": "stem",
        }
        if options.tls:
            kwargs.update(
                ssl_ca_certs=options.ssl_ca_certs,
                ssl_certfile=options.ssl_certfile,
                ssl_keyfile=options.ssl_keyfile,
                ssl_cert_reqs=options.ssl_cert_reqs,
                ssl_check_hostname=(
                    options.ssl_check_hostname
                    if options.ssl_check_hostname is not None
                    else options.ssl_cert_reqs != "none"
                ),
            )
        self._kwargs = kwargs
        self.pool = BlockingConnectionPool(
            max_connections=options.pool_size,
            timeout=options.connect_timeout + options.socket_timeout,
            connection_class=SSLConnection if options.tls else Connection,
            **kwargs,
        )
        self.redis = Redis(connection_pool=self.pool)
        # redis-py leaves execute_command untyped: give it a type once, here.
        self._execute: Callable[..., Awaitable[Any]] = self.redis.execute_command
        self._scripts = SCRIPTS
        self.resp: RespClient | None = None
        self.hub: Hub | ShardedHub
        if options.cluster:
            self._start_cluster(options, kwargs)
        else:
            self.hub = Hub(self.redis, options)
            if _use_resp():
                self.resp = RespClient(options, connections=min(options.pool_size, CONNECTIONS))
                self._execute = self._resp_execute
                # redis-py's post-processing of replies, by command name (what it applies
                # to execute_command's replies: the callers expect those shapes).
                self._callbacks = self.redis.response_callbacks
                self._parsers: dict[Arg, Callable[..., Any] | None] = {}

    def _start_cluster(self, options: RedisOptions, kwargs: dict[str, Any]) -> None:
        """Talk to a Redis Cluster instead: ``self.redis`` stays unused (it never connects)."""
        cluster_kwargs = {
            k: v for k, v in kwargs.items() if k not in ("host", "port", "db", "retry")
        }
        if options.tls:
            cluster_kwargs["ssl"] = True
        self.cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in options.nodes],
            # Each node's pool raises at once when it is full instead of waiting, so a
            # semaphore bounds the commands in flight (see _cluster_call) to pool_size.
            max_connections=options.pool_size,
            # One more try after the cluster client refreshed its map of the slots (a node
            # failed over, say), as _once_more allows on one server: Stem's calls are safe
            # to send twice.
            retry=Retry(NoBackoff(), 1),
            **cluster_kwargs,
        )
        self._in_flight = asyncio.Semaphore(options.pool_size)
        self._mapped = False
        self._mapping = asyncio.Lock()
        self._execute = self.cluster.execute_command
        self._scripts = CLUSTER_SCRIPTS
        self.hub = ShardedHub(self.cluster, options, self._node_client, self._map_cluster)

    def _node_client(self, host: str, port: int) -> Redis:
        """A client for one node of the cluster (its pub/sub connection)."""
        kwargs = {**self._kwargs, "host": host, "port": port}
        pool = BlockingConnectionPool(
            max_connections=2,
            timeout=self.options.connect_timeout + self.options.socket_timeout,
            connection_class=SSLConnection if self.options.tls else Connection,
            **kwargs,
        )
        return Redis(connection_pool=pool)

    def _script(self, name: str) -> Script:
        found = self._scripts.get(name)
        if found is None:  # a script added to SCRIPTS after this module was imported
            found = self._scripts[name] = SCRIPTS[name].for_cluster()
        return found

    def __repr__(self) -> str:
        return f"RedisClient({self.options.masked_url!r})"

    async def script(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run one of :data:`SCRIPTS` atomically; loads it first if the server lacks it.

        On a cluster every key must be in one slot: the script runs on its node.
        """
        script = self._script(name)
        load = ("SCRIPT", "LOAD") if self.cluster is None else ("SCRIPT LOAD",)

        async def run() -> Any:
            try:
                return await self._execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The server restarted or its script cache was flushed. NOSCRIPT means
                # nothing ran, so loading and running it again is safe.
                await self._execute(*load, script.source)  # on a cluster: on every primary
                return await self._execute("EVALSHA", script.sha, len(keys), *keys, *args)

        return await self._once_more(run)

    async def _resp_execute(self, *args: Arg) -> Any:
        """One command through the RESP client, its reply as redis-py would return it."""
        assert self.resp is not None
        return self._parse(args[0], await self.resp.execute(*args))

    def _parse(self, name: Arg, reply: Any) -> Any:
        try:
            parser = self._parsers[name]
        except KeyError:
            parser = self._parsers[name] = (
                self._callbacks[name] if isinstance(name, str) and name in self._callbacks else None
            )
        if parser is None:
            return reply
        parsed = parser(reply)
        assert not inspect.isawaitable(parsed)  # its legacy-shape callbacks are plain functions
        return parsed

    async def command(self, *args: Arg) -> Any:
        """One plain command, its errors translated."""
        return await self._once_more(lambda: self._execute(*args))

    async def commands(self, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several plain commands in one round trip (a pipeline, not a transaction)."""
        if not calls:
            return []

        resp = self.resp
        if resp is not None:

            async def run_resp() -> list[Any]:
                replies = await resp.execute_many(calls)
                return [self._parse(c[0], r) for c, r in zip(calls, replies, strict=True)]

            found: list[Any] = await self._once_more(run_resp)
            return found

        async def run() -> list[Any]:
            # On a cluster, the pipeline sends each node its commands, all nodes at once.
            pipeline = self.redis.pipeline if self.cluster is None else self.cluster.pipeline
            async with pipeline(transaction=False) as pipe:
                for call in calls:
                    pipe.execute_command(*call)
                return list(await pipe.execute())

        replies: list[Any] = await self._once_more(run)
        return replies

    async def _once_more(self, run: Callable[[], Awaitable[Any]]) -> Any:
        """``run()``, once more on a fresh connection if the connection broke.

        After the server restarted, the pool's idle connections are dead, and the first
        command on each fails: the pool is emptied and the command sent again, once.
        That is safe for every command Stem sends: reads, scripts that end in the same
        state when run twice (an ack run twice answers False the second time), and the
        publishes and chord claims, which carry a token so that a second run of a call
        whose first run went through (its reply lost) changes nothing.

        On a cluster, the cluster client does that one retry itself (after refreshing its
        map of the slots), and also follows MOVED and ASK redirections.
        """
        if self.cluster is not None:
            return await self._cluster_call(run)
        try:
            return await run()
        except RedisError as exc:
            if not _broken(exc):
                raise translate(exc, self.options) from exc
        await self.pool.disconnect(inuse_connections=False)
        try:
            return await run()
        except RedisError as exc:
            raise translate(exc, self.options) from exc

    async def _cluster_call(self, run: Callable[[], Awaitable[Any]]) -> Any:
        limit = self.options.connect_timeout + self.options.socket_timeout
        try:
            async with asyncio.timeout(limit):
                await self._in_flight.acquire()
        except TimeoutError:
            raise AdapterError(
                f"all {self.options.pool_size} connections to the Redis Cluster at "
                f"{self.options.masked_url} stayed busy for {limit:g} s: raise ?pool_size=N "
                "in the URL, or make fewer calls at once"
            ) from None
        try:
            if not self._mapped:
                await self._map_cluster()
            return await run()
        except (RedisError, RedisClusterException) as exc:
            raise translate(exc, self.options) from exc
        finally:
            self._in_flight.release()

    async def _map_cluster(self) -> None:
        """Learn the cluster's slots once, before the first command: redis-py 8.1 lets
        concurrent first commands each start that, and one of them may then find its
        connection closed under it (AttributeError on ``writelines``)."""
        assert self.cluster is not None
        if self._mapped:
            return
        async with self._mapping:
            if not self._mapped:
                await self.cluster.initialize()
                self._mapped = True

    async def aclose(self) -> None:
        await self.hub.aclose()
        if self.resp is not None:
            await self.resp.aclose()
        if self.cluster is not None:
            await self.cluster.aclose()
        await self.redis.aclose()
        await self.pool.disconnect()


def _broken(exc: RedisError) -> bool:
    """A connection that broke (not one refused for its credentials, or a full pool)."""
    return isinstance(exc, RedisConnectionError) and not isinstance(
        exc, AuthenticationError | AuthorizationError | MaxConnectionsError
    )


async def gather_all(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """Run calls at once (on a cluster, each goes to its own node) and return their
    results; the first error is raised once every call has finished, so none is left
    running unobserved."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def call_token() -> str:
    """A token naming one call, so a script run twice for it acts once."""
    return secrets.token_hex(8)


class _Shared:
    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self.refs = 0


_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[object, ...], _Shared]
] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class ClientHandle:
    """What each store holds: its options, and its share of a client, taken on first use.

    With ``share=False`` the store gets a client of its own, as a store in another
    process would (the contract suites race two such stores).
    """

    def __init__(self, options: RedisOptions, *, share: bool = True) -> None:
        self.options = options
        self.share = share
        self._client: RedisClient | None = None
        self._shared: _Shared | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> RedisClient:
        """The client for the running event loop (no I/O: it connects on first command)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        self._drop()  # used from another loop before: that loop's client is not ours any more
        if not self.share:
            shared = _Shared(RedisClient(self.options))
        else:
            with _lock:
                per_loop = _clients.setdefault(loop, {})
                found = per_loop.get(self.options.pool_key)
                if found is None:
                    found = per_loop[self.options.pool_key] = _Shared(RedisClient(self.options))
                shared = found
        shared.refs += 1
        self._client, self._shared, self._loop = shared.client, shared, loop
        return shared.client

    def _drop(self) -> _Shared | None:
        shared, loop = self._shared, self._loop
        self._client = self._shared = self._loop = None
        if shared is None:
            return None
        with _lock:
            shared.refs -= 1
            if shared.refs > 0:
                return None
            per_loop = _clients.get(loop) if loop is not None else None
            if per_loop is not None and per_loop.get(self.options.pool_key) is shared:
                del per_loop[self.options.pool_key]
        return shared

    async def aclose(self) -> None:
        """Release this store's share; the last one closes the connections."""
        shared = self._drop()
        if shared is not None:
            await shared.client.aclose()


class RedisStore:
    """What every Redis store shares: its options, its share of a client, and which clock
    its scripts read (the base of the broker, the backend and every store)."""

    _handle: ClientHandle
    clock: Clock
    #: Whether the scripts read ``now`` from the server (``TIME``) or from ``clock``.
    server_clock: bool

    def _open(
        self,
        url: str | RedisOptions,
        *,
        clock: Clock | None,
        server_clock: bool | None,
        share_connection: bool,
    ) -> RedisOptions:
        """Parse ``url`` and take a client handle (no I/O). ``server_clock`` None means
        the server's clock when no ``clock`` is given (production), else ``clock``'s (a
        FakeClock in tests)."""
        options = url if isinstance(url, RedisOptions) else parse_url(url)
        self.server_clock = clock is None if server_clock is None else server_clock
        self._handle = ClientHandle(options, share=share_connection)
        return options

    def _now(self) -> Arg:
        """The ``now`` a script is sent: '' reads the server's clock (see lua/_args.lua)."""
        return "" if self.server_clock else self.clock.now()

    @property
    def options(self) -> RedisOptions:
        return self._handle.options

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.masked_url!r})"

    def _client(self) -> RedisClient:
        return self._handle.get()

    async def aclose(self) -> None:
        await self._handle.aclose()
