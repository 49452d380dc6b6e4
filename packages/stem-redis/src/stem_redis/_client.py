"""Connections: one pool (and one pub/sub connection) per server, per event loop.

Every store built from URLs naming the same server with the same connection settings
shares one :class:`RedisClient` in each event loop (redis-py's asyncio connections
belong to the loop that opened them). Nothing connects until the first command.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    MaxConnectionsError,
    NoScriptError,
    RedisError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from ._errors import translate
from ._notify import Hub
from ._scripts import SCRIPTS
from ._url import RedisOptions

__all__ = ["Arg", "ClientHandle", "RedisClient", "call_token", "pack"]

Arg = bytes | str | int | float

#: Batches go to scripts as one MessagePack argument (see lua/_args.lua).
pack = msgspec.msgpack.Encoder().encode


class RedisClient:
    """A connection pool and a pub/sub hub for one server, in one event loop."""

    def __init__(self, options: RedisOptions) -> None:
        self.options = options
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
        self.pool = BlockingConnectionPool(
            max_connections=options.pool_size,
            timeout=options.connect_timeout + options.socket_timeout,
            connection_class=SSLConnection if options.tls else Connection,
            **kwargs,
        )
        self.redis = Redis(connection_pool=self.pool)
        # redis-py leaves execute_command untyped: give it a type once, here.
        self._execute: Callable[..., Awaitable[Any]] = self.redis.execute_command
        self.hub = Hub(self.redis, options)

    def __repr__(self) -> str:
        return f"RedisClient({self.options.masked_url!r})"

    async def script(self, name: str, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run one of :data:`SCRIPTS` atomically; loads it first if the server lacks it."""
        script = SCRIPTS[name]

        async def run() -> Any:
            try:
                return await self._execute("EVALSHA", script.sha, len(keys), *keys, *args)
            except NoScriptError:
                # The server restarted or its script cache was flushed. NOSCRIPT means
                # nothing ran, so loading and running it again is safe.
                await self._execute("SCRIPT", "LOAD", script.source)
                return await self._execute("EVALSHA", script.sha, len(keys), *keys, *args)

        return await self._once_more(run)

    async def command(self, *args: Arg) -> Any:
        """One plain command, its errors translated."""
        return await self._once_more(lambda: self._execute(*args))

    async def commands(self, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several plain commands in one round trip (a pipeline, not a transaction)."""
        if not calls:
            return []

        async def run() -> list[Any]:
            async with self.redis.pipeline(transaction=False) as pipe:
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
        """
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

    async def aclose(self) -> None:
        await self.hub.aclose()
        await self.redis.aclose()
        await self.pool.disconnect()


def _broken(exc: RedisError) -> bool:
    """A connection that broke (not one refused for its credentials, or a full pool)."""
    return isinstance(exc, RedisConnectionError) and not isinstance(
        exc, AuthenticationError | AuthorizationError | MaxConnectionsError
    )


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
