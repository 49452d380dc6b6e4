"""A small RESP client for one Redis server: the request/response path of every store.

redis-py's asyncio client costs about five event-loop turns per command (a pool
checkout, a ``StreamWriter`` drain, a ``StreamReader`` wake-up, ...). Here a command is
one ``transport.write`` and one future: a connection is an :class:`asyncio.Protocol`
feeding a ``hiredis.Reader``, and every reply it parses resolves the oldest waiting
future of that connection (replies come back in the order the commands were sent, so
concurrent calls are pipelined on one socket).

It speaks what redis-py 8 speaks by default (RESP3, after ``HELLO 3``), and replies are
what redis-py's hiredis parser yields (bytes, never decoded; a map is a dict); error
replies are redis-py's exception classes, made by redis-py's own ``parse_error``, so the
callers' error handling (``translate``, ``_broken``) is the same on both paths. Whatever
redis-py post-processes (its response callbacks) the caller applies (see _client.py).

A connection that breaks fails every call waiting on it (``ConnectionError``) and is
dropped; the next call connects again. Nothing is ever sent twice here. A connection
that gets no reply bytes for ``socket_timeout`` while calls wait fails them with
``TimeoutError`` and is closed (its replies would come out of order otherwise).

A call waits behind every call sent before it on its connection, so no blocking command
(``BLPOP``, ``XREAD BLOCK``...) may go through here: Stem sends none (wake-ups come by
pub/sub, on redis-py's connection).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    DataError,
    InvalidResponse,
    RedisError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)
from redis.utils import format_error_message

from ._url import RedisOptions

__all__ = ["CONNECTIONS", "RespClient", "ssl_context"]

#: Connections per client at most: calls are pipelined on them, so a few suffice; a
#: second one opens only while every open one has calls waiting.
CONNECTIONS = 2

_MORE = object()  # what hiredis.Reader.gets() answers while a reply is incomplete
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

Arg = bytes | str | int | float


def ssl_context(options: RedisOptions) -> ssl.SSLContext:
    """The TLS context redis-py builds from the same options (see RedisSSLContext)."""
    cert_reqs = _CERT_REQS[options.ssl_cert_reqs]
    check_hostname = (
        options.ssl_check_hostname
        if options.ssl_check_hostname is not None
        else options.ssl_cert_reqs != "none"
    )
    context = ssl.create_default_context()
    context.check_hostname = check_hostname if cert_reqs != ssl.CERT_NONE else False
    context.verify_mode = cert_reqs
    if options.ssl_certfile or options.ssl_keyfile:
        context.load_cert_chain(certfile=options.ssl_certfile, keyfile=options.ssl_keyfile)  # type: ignore[arg-type]
    if options.ssl_ca_certs:
        context.load_verify_locations(cafile=options.ssl_ca_certs)
    return context


def pack(args: Sequence[Arg]) -> bytes:
    """One command in RESP, as redis-py packs it (a first argument with spaces, such as
    ``SCRIPT LOAD``, is split into words; a bool or None is a DataError)."""
    first = args[0]
    if isinstance(first, str):
        packed = (*first.encode().split(), *args[1:])
    elif isinstance(first, bytes) and b" " in first:
        packed = (*first.split(), *args[1:])
    else:
        packed = tuple(args)
    try:
        return hiredis.pack_command(packed)  # type: ignore[arg-type,no-any-return]
    except TypeError as exc:
        raise DataError(f"{exc} (in a Redis command {first!r})") from None


class _Batch:
    """The future of several pipelined calls: it resolves when their last reply came."""

    __slots__ = ("future", "replies", "size")

    def __init__(self, future: asyncio.Future[list[Any]], size: int) -> None:
        self.future = future
        self.size = size
        self.replies: list[Any] = []

    def add(self, reply: Any) -> None:
        self.replies.append(reply)
        if len(self.replies) == self.size and not self.future.done():
            self.future.set_result(self.replies)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


def _fail(waiter: asyncio.Future[Any] | _Batch, exc: BaseException) -> None:
    if isinstance(waiter, _Batch):
        waiter.fail(exc)
    elif not waiter.done():
        waiter.set_exception(exc)


class _Connection(asyncio.Protocol):
    """One socket: commands go out in order, and each reply resolves the oldest waiter."""

    def __init__(self, where: str, timeout: float) -> None:
        self.where = where
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.broken: BaseException | None = None
        self.pending: deque[asyncio.Future[Any] | _Batch] = deque()
        self._reader = hiredis.Reader(
            protocolError=InvalidResponse,
            replyError=BaseParser.parse_error,
            notEnoughData=_MORE,
        )
        self._loop = asyncio.get_running_loop()
        self._progress = 0.0  # loop time of the last reply bytes (or of the first call sent)
        self._watchdog: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        pending = self.pending
        self._progress = self._loop.time()
        while True:
            try:
                reply = reader.gets()
            except InvalidResponse as exc:  # the stream is out of step: nothing can be read
                self._break(exc)
                return
            if reply is _MORE:
                return
            if isinstance(reply, hiredis.PushNotification):
                continue  # RESP3 out-of-band data (none is asked for): not a reply
            if not pending:  # a reply nobody asked for (cannot happen without push messages)
                self._break(InvalidResponse(f"an unexpected reply from {self.where}"))
                return
            waiter = pending.popleft()
            if isinstance(waiter, _Batch):
                waiter.add(reply)
            elif waiter.done():  # its caller was cancelled: the reply is dropped, in order
                continue
            elif isinstance(reply, RedisError):
                waiter.set_exception(reply)
            elif isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
                waiter.set_exception(reply[0])  # what redis-py's hiredis parser raises
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            error = RedisConnectionError("Connection closed by server.")
        else:
            error = RedisConnectionError(f"Error while reading from {self.where} : {exc.args}")
        self._break(error)
        if not self.closed.done():
            self.closed.set_result(None)

    # -- calls -------------------------------------------------------------------------

    def send(self, data: bytes, waiter: asyncio.Future[Any] | _Batch, replies: int = 1) -> None:
        """Write ``data`` (holding ``replies`` commands): ``waiter`` takes their replies."""
        if self.broken is not None or self.transport is None:  # broke since it was picked
            _fail(waiter, self.broken or RedisConnectionError(f"not connected to {self.where}"))
            return
        if not self.pending:
            self._progress = self._loop.time()
            if self._watchdog is None:
                self._watchdog = self._loop.call_at(self._progress + self.timeout, self._watch)
        if replies == 1:
            self.pending.append(waiter)
        else:
            self.pending.extend([waiter] * replies)
        self.transport.write(data)

    async def call(self, *args: Arg) -> Any:
        future: asyncio.Future[Any] = self._loop.create_future()
        self.send(pack(args), future)
        return await future

    def _watch(self) -> None:
        """Fail the waiting calls if no reply bytes came for ``timeout`` seconds."""
        self._watchdog = None
        if not self.pending or self.broken is not None:
            return
        due = self._progress + self.timeout
        if self._loop.time() < due:
            self._watchdog = self._loop.call_at(due, self._watch)
            return
        self._break(RedisTimeoutError(f"Timeout reading from {self.where}"))

    def _break(self, exc: BaseException) -> None:
        """Fail every waiting call and close the socket: it is never used again."""
        if self.broken is None:
            self.broken = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        pending, self.pending = self.pending, deque()
        for waiter in pending:
            _fail(waiter, exc)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._break(RedisConnectionError(f"the connection to {self.where} was closed"))


class RespClient:
    """Up to :data:`CONNECTIONS` connections to one server, calls pipelined on them."""

    def __init__(self, options: RedisOptions, *, connections: int = CONNECTIONS) -> None:
        self.options = options
        self.where = f"{options.host}:{options.port}"
        self._limit = max(1, connections)
        self._open: list[_Connection] = []
        self._connecting: asyncio.Task[_Connection] | None = None
        self._ssl: ssl.SSLContext | None = None  # made on first connect, as redis-py does
        self._closed = False
        self._extra_failed = False  # an extra connection was refused: stay with the open ones

    async def execute(self, *args: Arg) -> Any:
        """One command; its reply, or its error reply raised."""
        data = pack(args)
        conn = self._pick() or await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.send(data, future)
        return await future

    async def execute_many(self, calls: Sequence[Sequence[Arg]]) -> list[Any]:
        """Several commands in one write, on one connection; their replies in order. The
        first error reply among them is raised (as a redis-py pipeline does) once every
        reply came."""
        if not calls:
            return []
        data = b"".join([pack(call) for call in calls])
        conn = self._pick() or await self._connect()
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        batch = _Batch(future, len(calls))
        conn.send(data, batch, len(calls))
        replies = await future
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    def _pick(self) -> _Connection | None:
        """The open connection with the fewest waiting calls, or None to connect first.

        While every open connection has calls waiting and there are fewer than the
        limit, another one is opened in the background for the calls after this one.
        """
        best: _Connection | None = None
        for conn in self._open:
            if conn.broken is not None:
                continue
            if not conn.pending:
                return conn
            if best is None or len(conn.pending) < len(best.pending):
                best = conn
        self._open = [c for c in self._open if c.broken is None]
        if (
            best is not None
            and len(self._open) < self._limit
            and self._connecting is None
            and not self._extra_failed
        ):
            self._start_connect().add_done_callback(self._extra_done)
        return best

    def _extra_done(self, task: asyncio.Task[_Connection]) -> None:
        """An extra connection opened in the background. If the server refused it (at its
        client limit, say), no other is tried until a connection has to be made anew;
        a caller waiting for this one sees its error."""
        if not task.cancelled() and task.exception() is not None:
            self._extra_failed = True

    async def _connect(self) -> _Connection:
        """Wait for the connection being opened (one at a time), or open one."""
        task = self._connecting or self._start_connect()
        # Shielded: a caller cancelled while connecting must not abort the connection
        # other callers wait for.
        return await asyncio.shield(task)

    def _start_connect(self) -> asyncio.Task[_Connection]:
        if self._closed:
            raise RedisConnectionError(f"the client of {self.where} was closed")
        task = asyncio.get_running_loop().create_task(self._open_connection())
        self._connecting = task
        return task

    async def _open_connection(self) -> _Connection:
        try:
            conn = await self._handshake(await self._socket())
        finally:
            self._connecting = None
        if self._closed:
            conn.close()
            raise RedisConnectionError(f"the client of {self.where} was closed")
        self._open.append(conn)
        if len(self._open) == 1:
            self._extra_failed = False  # connected anew: extra ones may be tried again
        return conn

    async def _socket(self) -> _Connection:
        """A connected socket (TLS handshake included), within ``connect_timeout``."""
        options = self.options
        loop = asyncio.get_running_loop()
        try:
            if options.tls and self._ssl is None:
                # A missing or bad certificate file fails the connection, not the store.
                self._ssl = ssl_context(options)
            async with asyncio.timeout(options.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(self.where, options.socket_timeout),
                    options.host,
                    options.port,
                    ssl=self._ssl,
                )
        except TimeoutError:
            raise RedisTimeoutError("Timeout connecting to server") from None
        except OSError as exc:
            raise RedisConnectionError(format_error_message(self.where, exc)) from exc
        return conn

    async def _handshake(self, conn: _Connection) -> _Connection:
        """``HELLO 3 [AUTH user password] SETNAME stem`` and ``SELECT db``, in one write:
        what redis-py 8's ``on_connect`` sets up (RESP3, whose replies its callbacks
        expect), in one round trip."""
        options = self.options
        hello: list[Arg] = ["HELLO", 3]
        if options.username or options.password:
            hello += ["AUTH", options.username or "default", options.password or ""]
        hello += ["SETNAME", "stem"]
        calls: list[list[Arg]] = [hello]
        if options.db:
            calls.append(["SELECT", options.db])
        data = b"".join([pack(call) for call in calls])
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        conn.send(data, _Batch(future, len(calls)), len(calls))
        try:
            replies = await future
            for reply in replies:  # the first error: a refused AUTH before SELECT's NOAUTH
                if isinstance(reply, RedisError):
                    raise reply
            if not isinstance(replies[0], dict) or replies[0].get(b"proto") != 3:
                raise RedisConnectionError("Invalid RESP version")
            if options.db and replies[1] != b"OK":
                raise RedisConnectionError("Invalid Database")
        except BaseException:
            conn.close()
            raise
        return conn

    async def aclose(self) -> None:
        self._closed = True
        connecting, self._connecting = self._connecting, None
        if connecting is not None:
            connecting.cancel()
        conns, self._open = self._open, []
        for conn in conns:
            conn.close()
        if conns:
            await asyncio.wait([c.closed for c in conns], timeout=1.0)
