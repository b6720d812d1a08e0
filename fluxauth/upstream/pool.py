"""The upstream client: keep-alive HTTP/1.1 connections in one pool per process, responses streamed.

Not aiohttp, first chosen over httpx: through the same
minimal proxy under uvicorn, aiohttp's client ran at 0.53x of this one (4,188
vs 7,960 requests/s for a 12 KiB tile; ``loadtests/minimal_proxies.py``, run by
``bench.py --with-minimal``). fluxauth's needs are narrow — a few origins fixed
by the settings, requests it has framed itself, responses relayed as bytes —
and aiohttp's generality (URL objects, multidicts, cookie jars, tracing, one
task and several futures per request) was most of the hot path's cost. The
parsing is not ours: httptools is llhttp, Node's parser, which uvicorn
already uses for the requests.

What a connection does, in order: it is taken from the pool (the most recently
used idle one, or a new one while fewer than ``max_connections`` are open),
sent a head that the caller built, optionally a streamed body, and read until
its response is complete; then it goes back to the pool if both sides keep it
alive, or is closed. A response that is not read to its end closes its
connection (its remaining bytes would be read as the next response).

A request without a body that fails on a reused connection before any byte of
an answer arrives is sent once more on a new connection: the upstream closed
the idle connection as the request went out (RFC 9112 §9.3.1; nginx's
``proxy_next_upstream error`` does the same for idempotent requests).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import unquote, urlsplit

import httptools

from fluxauth.errors import UpstreamBroken, UpstreamError, UpstreamTimeout, UpstreamUnreachable
from fluxauth.types import Headers

# Idle connections older than this are closed rather than reused: below
# uvicorn's 5 s keep-alive, the shortest default among common upstream servers
# (nginx 75 s, Go 90 s), so the upstream rarely closes one as we send on it.
IDLE_SECONDS = 4.0
# Response bytes buffered before the upstream is paused (a slow client reads
# them): the same bound as uvicorn's request bodies.
HIGH_WATER = 64 * 1024


class Sink(Protocol):
    """Takes a response as it arrives, instead of ``Connection.read``: the hot path's relay (``server/hotpath.py``)."""

    def upstream_head(self, connection: Connection) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_end(self) -> None: ...

    def upstream_failed(self, failure: UpstreamError) -> None: ...


@dataclass(frozen=True, slots=True)
class Origin:
    """Where requests for one upstream go, and what their heads say of it."""

    host: str
    port: int
    tls: bool
    host_header: bytes  # the Host the upstream is sent: its own name
    prefix: bytes  # a base path to put before every request path
    authorization: bytes | None  # Basic credentials from the URL's userinfo, fluxauth's own to the upstream

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        netloc = parts.netloc.rpartition("@")[2]
        authorization = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(userinfo.encode("utf-8"))
        return cls(host, port, tls, netloc.encode("idna"), parts.path.rstrip("/").encode("ascii"), authorization)

    def __repr__(self) -> str:  # never the credentials
        return f"Origin({'https' if self.tls else 'http'}://{self.host}:{self.port})"


class Connection(asyncio.Protocol):
    """One upstream connection, and the response it is reading.

    One object per connection, reused by each request on it: the callbacks of
    asyncio and httptools fill in ``status`` and ``headers`` and buffer the
    body for ``read``.
    """

    def __init__(self, pool: UpstreamPool, origin: Origin) -> None:
        self._pool = pool
        self.origin = origin
        self._loop = pool.loop
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.counted = True  # among the pool's open connections
        self.closed = False
        self.idle_since = 0.0
        self.status = 0
        self.headers: Headers = []
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._busy = False  # a request is in flight (from send to release)
        self._started = False  # any byte of its response arrived
        self._head_done = False
        self._complete = False
        self._head_only = False  # a HEAD request: no body follows the head
        self._until_close = False  # neither length nor chunked: the body ends with the connection
        self._keep_alive = False
        self._surplus = False  # an answer past the one asked for is being parsed: ignored
        self._failure: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drained: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._last_read = 0.0  # when the upstream last sent something (or the request went out)
        self._writer: asyncio.Task[None] | None = None
        self.sink: Sink | None = None

    # -- asyncio protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if not self._busy or self._complete:
            # Bytes nobody asked for (while idle, or past a whole response):
            # the connection cannot be trusted with another request.
            self._keep_alive = False
            self.abort()
            return
        self._started = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"the upstream's response cannot be parsed: {exc}"))
            return
        if self._surplus:
            self.abort()
            return
        if self._head_only and self._head_done and not self._complete:
            # llhttp would wait for the body that Content-Length announces; a
            # HEAD response has none (RFC 9110 §9.3.2), so the next starts afresh.
            self._parser = httptools.HttpResponseParser(self)
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._busy and not self._complete:
            if self._until_close and self._head_done and exc is None:
                self._keep_alive = False
                self._finish()
            else:
                self._fail(UpstreamBroken("the upstream closed the connection mid-response"))
        self._pool.waiting.discard(self)
        self._pool.discard(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- httptools callbacks --------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # A second answer in the same read as the first: nobody asked
            # for it, and the connection cannot be trusted with another request.
            self._surplus = True
            self._keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._surplus:
            self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        if self._surplus:
            return
        status = self._parser.get_status_code()
        if status < 200:
            # An interim answer (103 Early Hints...): the final one follows.
            self.headers = []
            return
        self.status = status
        self._head_done = True
        self._keep_alive = self._parser.should_keep_alive()
        if not self._head_only and status not in (204, 304):
            names = {name for name, _ in self.headers}
            self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        if self.sink is not None:
            self.sink.upstream_head(self)
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self._surplus:
            return
        if self.sink is not None:
            self.sink.upstream_body(body)
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER:
            self.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._head_done and not self._surplus:  # not the end of an interim (or unasked) answer
            self._finish()

    # -- one request -------------------------------------------------------

    def begin(self, *, head_only: bool) -> None:
        self.status = 0
        self.headers = []
        self._chunks = []
        self._buffered = 0
        self._busy = True
        self._started = self._head_done = self._complete = self._until_close = self._surplus = False
        self._head_only = head_only
        self._failure = None
        self._writer = None
        self._last_read = self._loop.time()
        self._pool.watch(self)

    def end(self) -> None:
        """The request is over, whatever became of it."""
        self._busy = False
        self.sink = None
        self._pool.waiting.discard(self)
        if self._writer is not None and not self._writer.done():
            # Answered before the body was all sent: what the upstream makes
            # of the rest is unknown, so the connection is not reused.
            self._keep_alive = False
            self._writer.cancel()
        self._writer = None

    def _finish(self) -> None:
        self._complete = True
        self._pool.waiting.discard(self)
        if self.sink is not None:
            self.sink.upstream_end()
        else:
            self._wake()

    def _fail(self, failure: UpstreamError) -> None:
        first = self._failure is None and not self._complete
        if first:
            self._failure = failure
        self._keep_alive = False
        self._pool.waiting.discard(self)
        self.abort()
        if self.sink is not None:
            if first:
                self.sink.upstream_failed(failure)
        else:
            self._wake()

    @property
    def started(self) -> bool:
        """Some byte of the response arrived: a request that failed before cannot have been answered."""
        return self._started

    def pause_reading(self) -> None:
        """The reader cannot take more for now (a sink's slow client)."""
        if not self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and not self.closed:
            self._read_paused = False
            self._last_read = self._loop.time()  # the upstream's time starts again now
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def check_timeout(self, now: float, read_timeout: float) -> None:
        """Fail the request if the upstream sent nothing for ``read_timeout``; a pause of ours does not count."""
        if not self._read_paused and now - self._last_read >= read_timeout:
            self._fail(UpstreamTimeout(f"the upstream sent nothing for {read_timeout:g} s"))

    async def wait_head(self) -> None:
        while not self._head_done:
            if self._failure is not None:
                raise self._failure
            await self._wait()

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; ``b""`` at the end."""
        while not self._chunks:
            if self._complete:
                return b""
            if self._failure is not None:
                raise self._failure
            await self._wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._buffered = 0
        self.resume_reading()
        return data

    @property
    def complete(self) -> bool:
        """The whole response has arrived (``read`` may still hold the last of it)."""
        return self._complete

    @property
    def reusable(self) -> bool:
        return self._complete and self._keep_alive and not self._chunks and not self.closed

    # -- writing -----------------------------------------------------------

    def write_body(self, body: AsyncIterator[bytes], *, chunked: bool) -> None:
        """Stream a request body beside the wait for the response (an upstream may answer before the end)."""
        self._writer = self._loop.create_task(self._write_body(body, chunked))
        self._writer.add_done_callback(_retrieve)

    async def _write_body(self, body: AsyncIterator[bytes], chunked: bool) -> None:
        assert self.transport is not None
        try:
            async for chunk in body:
                if self.closed:
                    return
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                while self._write_paused and not self.closed:
                    self._drained = self._loop.create_future()
                    await self._drained
        except Exception:
            # The client's body broke off (gone, too slow, too large): the
            # upstream must not take what it got for a whole request.
            self._fail(UpstreamBroken("the request body broke off"))
            raise
        if chunked and not self.closed:
            self.transport.write(b"0\r\n\r\n")


class UpstreamPool:
    """Keep-alive connections to the upstreams, at most ``max_connections`` open at once."""

    def __init__(self, *, max_connections: int, connect_timeout: float, read_timeout: float) -> None:
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._idle: dict[Origin, dict[Connection, None]] = {}
        self._open = 0  # connections open or being opened
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls: ssl.SSLContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Connections waiting for the upstream, looked at by one watchdog for
        # all of them: a timer per request costs more than the request's
        # parsing. A silent upstream fails between read_timeout and 1.25 times it.
        self.waiting: set[Connection] = set()
        self._watch_every = min(1.0, read_timeout / 4)
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    async def send(
        self,
        origin: Origin,
        head: bytes,
        body: AsyncIterator[bytes] | None = None,
        *,
        chunked: bool = False,
        head_only: bool = False,
    ) -> Connection:
        """Send ``head`` (then ``body``) and return once the response's head has arrived.

        The caller reads the body with ``Connection.read`` and hands the
        connection to ``release`` in the end, read to its end or not. Raises an
        ``UpstreamError``: ``UpstreamUnreachable`` (nothing was sent),
        ``UpstreamTimeout`` or ``UpstreamBroken``.
        """
        retry = body is None
        while True:
            connection, reused = await self._acquire(origin)
            connection.begin(head_only=head_only)
            assert connection.transport is not None
            connection.transport.write(head)
            if body is not None:
                connection.write_body(body, chunked=chunked)
            try:
                await connection.wait_head()
            except UpstreamBroken:
                self.release(connection)
                if retry and reused and not connection.started:
                    retry = False
                    continue
                raise
            except BaseException:
                self.release(connection)
                raise
            return connection

    def release(self, connection: Connection) -> None:
        """Take a connection back: pooled if it can serve another request, else closed."""
        connection.end()
        if connection.reusable:
            connection.idle_since = self.loop.time()
            self._idle.setdefault(connection.origin, {})[connection] = None
            self._wake_waiter()
        else:
            connection.abort()
            self.discard(connection)

    def discard(self, connection: Connection) -> None:
        """A connection closed or is being closed: it no longer counts, and a waiter may open another."""
        idle = self._idle.get(connection.origin)
        if idle is not None:
            idle.pop(connection, None)
        if connection.counted:
            connection.counted = False
            self._open -= 1
            self._wake_waiter()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.abort()
                self.discard(connection)

    # -- the pool ------------------------------------------------------------

    def watch(self, connection: Connection) -> None:
        """Fail ``connection``'s request when the upstream stays silent for ``read_timeout``."""
        self.waiting.add(connection)
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self._watch_every, self._look)

    def _look(self) -> None:
        now = self.loop.time()
        for connection in list(self.waiting):
            connection.check_timeout(now, self.read_timeout)
        self._watchdog = self.loop.call_later(self._watch_every, self._look) if self.waiting else None

    def take_idle(self, origin: Origin) -> Connection | None:
        """The most recently used idle connection to ``origin`` that is still fresh, if there is one."""
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            connection, _ = idle.popitem()
            if not connection.closed and now - connection.idle_since < IDLE_SECONDS:
                return connection
            connection.abort()
            self.discard(connection)
        return None

    def send_to(self, connection: Connection, head: bytes, sink: Sink, *, head_only: bool) -> None:
        """Send a bodiless request on an idle connection (``take_idle``); its response goes to ``sink``."""
        connection.begin(head_only=head_only)
        connection.sink = sink
        assert connection.transport is not None
        connection.transport.write(head)

    async def _acquire(self, origin: Origin) -> tuple[Connection, bool]:
        while True:
            connection = self.take_idle(origin)
            if connection is not None:
                return connection, True
            if self._open < self.max_connections:
                return await self._connect(origin), False
            if self._close_idle_elsewhere(origin):
                continue
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_waiter()  # woken, but gone: the turn passes on
                raise

    def _close_idle_elsewhere(self, origin: Origin) -> bool:
        """At the limit, close an idle connection to another origin to make room; True if one was."""
        for other, idle in self._idle.items():
            if other != origin and idle:
                connection, _ = idle.popitem()
                connection.abort()
                self.discard(connection)
                return True
        return False

    async def _connect(self, origin: Origin) -> Connection:
        self._open += 1
        tls = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await self.loop.create_connection(
                    lambda: Connection(self, origin), origin.host, origin.port, ssl=tls
                )
        except BaseException as exc:
            self._open -= 1
            self._wake_waiter()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no connection to {origin!r} within {self.connect_timeout:g} s") from exc
            if isinstance(exc, OSError):  # refused, unreachable, unknown name, TLS failures
                raise UpstreamUnreachable(f"cannot connect to {origin!r}: {exc.strerror or exc}") from exc
            raise
        return connection

    def _wake_waiter(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a task's exception as seen: the caller learns of it another way (its body reader)."""
    if not task.cancelled():
        task.exception()
