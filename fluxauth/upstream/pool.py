"""The upstream client: keep-alive HTTP/1.1 connections in one pool per process, shared fairly, responses streamed.

Not aiohttp, first chosen over httpx: through the same
minimal proxy under uvicorn, aiohttp's client ran at 0.53x of this one (4,188
vs 7,960 requests/s for a 12 KiB tile; ``loadtests/minimal_proxies.py``, run by
``bench.py --with-minimal``). fluxauth's needs are narrow — a few origins fixed
by the settings, requests it has framed itself, responses relayed as bytes —
and aiohttp's generality (URL objects, multidicts, cookie jars, tracing, one
task and several futures per request) was most of the hot path's cost.

The package: ``framing.py`` turns bytes into response events (no I/O),
``connection.py`` is one connection's state machine, ``response.py`` the pull
adapter the ASGI path reads, and this module the pool that owns the
connections, who holds them and who waits for one.

What a request does, in order: it gets a connection — an idle one of its
origin and partition (below) that is still fresh and clean, or a new one
while fewer than ``max_connections`` are open (closing an idle one elsewhere
to make room), or it waits its turn, for at most ``connect_timeout`` in all
(waiting for a connection is part of connecting) before ``UpstreamBusy``
(503); then its head (and body) go out and its response is read to its end.
The connection goes back to the pool only if both sides keep it alive, the
response was read to its end, nothing came after it, and no request body was
sent on it (the upstream may have left it unread: CL.0 smuggling).

Sharing, so that no client can hold the pool (SECURITY.md):

- one client (address, or IPv6 /64) holds at most ``client_share`` of
  ``max_connections`` at once; beyond it its requests wait for its own;
- a connection freed goes to the waiter whose partition holds the fewest;
- idle connections are reused only within their partition — the org whose
  request a connection last carried (anonymous requests, which only ever
  read public data, are a partition of their own). Bytes an upstream sends
  late, after a response was framed (a HEAD body 50 ms after the head, a
  second answer), reach the next request on that connection, and nothing
  tells them from its answer: so the next request is one of the same org.

A bodiless request of an idempotent method (RFC 9110 §9.2.2) that fails on a
reused connection before any byte of an answer arrives is sent once more on a
new connection: the upstream closed the idle connection as the request went
out (RFC 9112 §9.3.1; nginx's ``proxy_next_upstream error`` does the same).
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
from collections.abc import AsyncIterator, Hashable

from fluxauth.errors import UpstreamBroken, UpstreamBusy, UpstreamTimeout, UpstreamUnreachable
from fluxauth.timers import TimerHandle, Timers, timeout_at
from fluxauth.upstream.connection import Connection, Phase, Sink
from fluxauth.upstream.framing import MAX_HEADER_BYTES
from fluxauth.upstream.origin import Origin
from fluxauth.upstream.response import Response

# Idle connections older than this are closed rather than reused: below
# uvicorn's 5 s keep-alive, the shortest default among common upstream servers
# (nginx 75 s, Go 90 s), so the upstream rarely closes one as we send on it.
IDLE_SECONDS = 4.0
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class _Room:
    """A grant to open a new connection, counted as open already."""


_ROOM = _Room()
Grant = Connection | _Room


class _Waiter:
    __slots__ = ("client", "future", "order", "origin", "partition")

    def __init__(
        self, origin: Origin, partition: Hashable, client: Hashable, future: asyncio.Future[Grant], order: int
    ) -> None:
        self.origin = origin
        self.partition = partition
        self.client = client
        self.future = future
        self.order = order


class UpstreamPool:
    """Keep-alive connections to the upstreams: at most ``max_connections`` open, shared fairly."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        max_header_bytes: int = MAX_HEADER_BYTES,
        client_share: float = 1.0,
        timers: Timers | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self.client_limit = max(1, int(max_connections * client_share))  # connections one client may hold
        self._timers = timers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tls: ssl.SSLContext | None = None
        self._open = 0  # connections open or being opened
        self._idle: dict[tuple[Origin, Hashable], dict[Connection, None]] = {}  # most recently used last
        self._idle_count = 0
        self._busy: set[Connection] = set()  # taken and not released
        self._held: dict[Hashable, int] = {}  # connections in use (or being opened) by client
        self._load: dict[Hashable, int] = {}  # ... by partition
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()
        # Busy connections are looked at by one watchdog for all of them: a
        # timer per request costs more than the request's parsing. A silent
        # upstream fails between read_timeout and 1.25 times it.
        self._watch_every = min(1.0, read_timeout / 4)
        self._watchdog: TimerHandle | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def timers(self) -> Timers:
        timers = self._timers
        if timers is None:
            timers = self._timers = self.loop
        return timers

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return self._idle_count

    @property
    def waiting(self) -> int:
        """Requests waiting for a connection."""
        return len(self._waiters)

    def held_by(self, client: Hashable) -> int:
        """Connections in use by ``client``."""
        return self._held.get(client, 0)

    # -- the two ways of sending ---------------------------------------------------

    async def send(
        self,
        origin: Origin,
        head: bytes,
        body: AsyncIterator[bytes] | None = None,
        *,
        method: str,
        chunked: bool = False,
        partition: Hashable = None,
        client: Hashable = None,
    ) -> Response:
        """Send ``head`` (then ``body``) and return once the response's head has arrived.

        The caller reads the body with ``Response.read`` and hands the
        connection to ``release`` in the end, read to its end or not. Raises an
        ``UpstreamError``: ``UpstreamBusy`` or ``UpstreamUnreachable`` (nothing
        was sent), ``UpstreamTimeout`` or ``UpstreamBroken``.
        """
        retry = body is None and method in IDEMPOTENT
        while True:
            connection, reused = await self._acquire(origin, partition, client)
            response = Response(connection)
            connection.begin(response, head, head_only=method == "HEAD")
            if body is not None:
                connection.write_body(body, chunked=chunked)
            try:
                await response.head()
            except UpstreamBroken:
                self.release(connection)
                if retry and reused and not connection.started:
                    retry = False
                    continue
                raise
            except BaseException:
                self.release(connection)
                raise
            return response

    def take_idle(self, origin: Origin, partition: Hashable = None, client: Hashable = None) -> Connection | None:
        """An idle connection to ``origin`` for ``partition`` that is fresh and clean, if there is one at once."""
        if client is not None and self._held.get(client, 0) >= self.client_limit:
            return None
        return self._reuse(origin, partition, client)

    def send_to(self, connection: Connection, head: bytes, sink: Sink, *, head_only: bool) -> None:
        """Send a bodiless request on a connection from ``take_idle``; its response goes to ``sink``."""
        connection.begin(sink, head, head_only=head_only)

    def release(self, connection: Connection) -> None:
        """Take a connection back: pooled if it can serve another request, else closed."""
        if connection not in self._busy:
            return  # released already
        self._busy.discard(connection)
        self._count(connection.partition, connection.client, -1)
        if connection.end():
            connection.idle_since = self.timers.time()
            self._idle.setdefault((connection.origin, connection.partition), {})[connection] = None
            self._idle_count += 1
        else:
            self._uncount(connection)
        if self._waiters:
            self._wake()

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.abort()
                self._closed(connection)

    # -- who gets a connection -------------------------------------------------------

    def _grant(self, origin: Origin, partition: Hashable, client: Hashable) -> Grant | None:
        """A connection (or room to open one) for a request, counted as theirs; ``None`` if they must wait."""
        if client is not None and self._held.get(client, 0) >= self.client_limit:
            return None
        connection = self._reuse(origin, partition, client)
        if connection is not None:
            return connection
        if self._open >= self.max_connections and not self._close_idle_elsewhere():
            return None
        self._open += 1
        self._count(partition, client, 1)
        return _ROOM

    def _reuse(self, origin: Origin, partition: Hashable, client: Hashable) -> Connection | None:
        """An idle connection of ``partition``'s that is fresh and clean, taken and counted as ``client``'s."""
        connection = self._pop_idle(origin, partition)
        if connection is not None:
            self._take(connection, partition, client)
            self._count(partition, client, 1)
        return connection

    def _take(self, connection: Connection, partition: Hashable, client: Hashable) -> None:
        connection.partition = partition
        connection.client = client
        self._busy.add(connection)
        if self._watchdog is None:
            self._watchdog = self.timers.call_at(self.timers.time() + self._watch_every, self._look)

    def _count(self, partition: Hashable, client: Hashable, delta: int) -> None:
        load = self._load.get(partition, 0) + delta
        if load:
            self._load[partition] = load
        else:
            del self._load[partition]
        if client is not None:
            held = self._held.get(client, 0) + delta
            if held:
                self._held[client] = held
            else:
                del self._held[client]

    def _pop_idle(self, origin: Origin, partition: Hashable) -> Connection | None:
        idle = self._idle.get((origin, partition))
        if not idle:
            return None
        fresh_since = self.timers.time() - IDLE_SECONDS
        while idle:
            connection, _ = idle.popitem()
            self._idle_count -= 1
            if connection.idle_since > fresh_since and connection.clean:
                return connection
            connection.abort()
            self._uncount(connection)
        return None

    def _close_idle_elsewhere(self) -> bool:
        """At the limit, close the least recently used idle connection (of another origin or partition)."""
        for idle in self._idle.values():
            if idle:
                connection = next(iter(idle))
                del idle[connection]
                self._idle_count -= 1
                connection.abort()
                self._uncount(connection)
                return True
        return False

    async def _acquire(self, origin: Origin, partition: Hashable, client: Hashable) -> tuple[Connection, bool]:
        timers = self.timers
        deadline = timers.time() + self.connect_timeout
        grant = self._grant(origin, partition, client)
        if grant is None:
            waiter = _Waiter(origin, partition, client, self.loop.create_future(), next(self._order))
            self._waiters.append(waiter)
            try:
                async with timeout_at(timers, deadline):
                    grant = await waiter.future
            except BaseException as exc:
                self._forget(waiter)
                if isinstance(exc, TimeoutError):
                    raise UpstreamBusy(
                        f"no connection to {origin!r} was free within {self.connect_timeout:g} s"
                    ) from None
                raise
        if isinstance(grant, Connection):
            return grant, True
        try:
            async with timeout_at(timers, deadline):
                connection = await self._connect(origin)
        except BaseException as exc:
            self._open -= 1
            self._count(partition, client, -1)
            self._wake()
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"no connection to {origin!r} within {self.connect_timeout:g} s") from exc
            if isinstance(exc, OSError):  # refused, unreachable, unknown name, TLS failures
                raise UpstreamUnreachable(f"cannot connect to {origin!r}: {exc.strerror or exc}") from exc
            raise
        self._take(connection, partition, client)
        return connection, False

    def _forget(self, waiter: _Waiter) -> None:
        """A waiter gave up (timed out, cancelled): out of the queue, and what it was granted meanwhile goes back."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            return
        future = waiter.future
        if not future.done() or future.cancelled():
            return
        grant = future.result()
        self._count(waiter.partition, waiter.client, -1)
        if isinstance(grant, Connection):
            self._busy.discard(grant)
            self._idle.setdefault((grant.origin, grant.partition), {})[grant] = None
            self._idle_count += 1
        else:
            self._open -= 1
        self._wake()

    def _wake(self) -> None:
        """Hand what is free to the waiters who may take it: fewest held by their partition first, then in order."""
        waiters = self._waiters
        while waiters:
            if self._open >= self.max_connections and not self._idle_count:
                return
            best: _Waiter | None = None
            rank = (0, 0)
            for waiter in waiters:
                if waiter.future.done():  # cancelled, gone soon (_forget)
                    continue
                if waiter.client is not None and self._held.get(waiter.client, 0) >= self.client_limit:
                    continue
                mine = (self._load.get(waiter.partition, 0), waiter.order)
                if best is None or mine < rank:
                    best, rank = waiter, mine
            if best is None:
                return
            grant = self._grant(best.origin, best.partition, best.client)
            if grant is None:
                return
            waiters.remove(best)
            best.future.set_result(grant)

    # -- connections ----------------------------------------------------------------

    async def _connect(self, origin: Origin) -> Connection:
        tls = None
        if origin.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        _, connection = await self.loop.create_connection(
            lambda: Connection(
                origin, timers=self.timers, max_header_bytes=self.max_header_bytes, on_closed=self._closed
            ),
            origin.host,
            origin.port,
            ssl=tls,
        )
        return connection

    def _uncount(self, connection: Connection) -> None:
        if connection.counted:
            connection.counted = False
            self._open -= 1

    def _closed(self, connection: Connection) -> None:
        """A connection closed (either side): it no longer counts, and a waiter may open another."""
        idle = self._idle.get((connection.origin, connection.partition))
        if idle is not None and connection in idle:
            del idle[connection]
            self._idle_count -= 1
        self._uncount(connection)
        self._wake()

    def _look(self) -> None:
        now = self.timers.time()
        for connection in list(self._busy):
            if connection.phase is Phase.WAITING or connection.phase is Phase.BODY:
                connection.check_timeout(now, self.read_timeout)
        self._watchdog = self.timers.call_at(now + self._watch_every, self._look) if self._busy else None
