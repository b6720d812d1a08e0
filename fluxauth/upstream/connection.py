"""One upstream connection: a small state machine that sends a request and hands its response to a sink.

A connection is always in one ``Phase``::

    IDLE ──begin──▶ WAITING ──head──▶ BODY ──end──▶ DONE ──released, clean──▶ IDLE
      │                │                 │             │
      └────────────────┴─── failure, bytes nobody asked for, released early ──▶ CLOSED

Bytes are turned into events by ``ResponseFraming`` (no I/O there); what
follows from each event — the sink's work — runs after the parser returns.
There is one way of consuming a response: a ``Sink`` that is pushed the head,
the body pieces and the end. The hot path's relay is one (``server/hotpath.py``);
``Response`` (``upstream/response.py``) is the other, a pull adapter for the
ASGI path that buffers what arrives until it is read.
"""

from __future__ import annotations

import asyncio
import enum
import select
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Protocol, cast

from fluxauth.errors import UpstreamBroken, UpstreamError, UpstreamTimeout
from fluxauth.timers import Timers
from fluxauth.upstream.framing import Event, Head, ResponseFraming
from fluxauth.upstream.origin import Origin

if TYPE_CHECKING:
    from collections.abc import Hashable


class Phase(enum.Enum):
    IDLE = "idle"  # open, nothing asked of it: new, or back in the pool
    WAITING = "waiting"  # a request went out; its final response head has not arrived
    BODY = "body"  # the head arrived; the body is arriving
    DONE = "done"  # the whole response arrived; the caller has not released the connection yet
    CLOSED = "closed"  # closed or being closed: never used again


# The phases as module globals: in Python 3.11 reading an enum member off its
# class costs five times reading a global, and a response reads a dozen.
IDLE, WAITING, BODY, DONE, CLOSED = Phase.IDLE, Phase.WAITING, Phase.BODY, Phase.DONE, Phase.CLOSED


class Sink(Protocol):
    """Takes a response as it arrives. Called from the connection's callbacks, never from inside the parser."""

    def upstream_head(self, head: Head) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_end(self) -> None: ...

    def upstream_failed(self, failure: UpstreamError) -> None:
        """The upstream failed the response (timeout, broken off, unreadable); the connection is closed."""

    def upstream_fault(self, exc: Exception) -> None:
        """fluxauth's own code raised ``exc`` while handling the response (a sink callback, the framing): a bug.

        The connection is closed. Not the upstream's fault: answered 500, not 502.
        """


class Connection(asyncio.Protocol):
    """One keep-alive connection to an origin, reused by one request after another."""

    def __init__(
        self, origin: Origin, *, timers: Timers, max_header_bytes: int, on_closed: Callable[[Connection], None]
    ) -> None:
        self.origin = origin
        self._timers = timers
        self._on_closed = on_closed
        self._framing = ResponseFraming(max_header_bytes=max_header_bytes)
        self.transport: asyncio.Transport | None = None
        self._poll: select.poll | None = None
        self.phase = IDLE
        self.sink: Sink | None = None
        # Whether the connection may serve another request once DONE: the
        # response allowed it and nothing about the exchange was odd.
        self.keep = False
        self.idle_since = 0.0
        self.last_active = 0.0  # when the upstream last sent something, or we last wrote to it
        self.partition: Hashable = None  # whose request it carries (the pool's reuse partition)
        self.client: Hashable = None  # which client's (the pool's fair share)
        self.counted = True  # among the pool's open connections
        self._read_paused = False
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None

    # -- asyncio protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self._poll = select.poll()
            self._poll.register(sock.fileno(), select.POLLIN)

    def data_received(self, data: bytes) -> None:
        phase = self.phase
        if phase is not WAITING and phase is not BODY:
            # Bytes nobody asked for (while idle, or past a whole response):
            # the connection cannot be trusted with another request.
            self.keep = False
            self.abort()
            return
        self.last_active = self._timers.time()
        try:
            events = self._framing.feed(data)
        except UpstreamError as failure:
            self._fail(failure)
            return
        except Exception as exc:  # fluxauth's own (the framing's): never the upstream's 502
            self._fault(exc)
            return
        if self._framing.surplus:
            self.keep = False
        self._deliver(events)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        phase = self.phase
        if phase is WAITING or phase is BODY:
            self.keep = False
            try:
                if exc is not None:
                    raise UpstreamBroken("the upstream connection broke mid-response")
                events = self._framing.feed_eof()  # the end of a body that lasts until the connection's
            except UpstreamError as failure:
                self._fail(failure)
            else:
                self._deliver(events)
        self.phase = CLOSED
        self._on_closed(self)
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- the response, as events ---------------------------------------

    def _deliver(self, events: list[Event]) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            for event in events:
                if type(event) is bytes:
                    sink.upstream_body(event)
                elif type(event) is Head:
                    self.phase = BODY
                    self.keep = self.keep and event.keep_alive
                    sink.upstream_head(event)
                else:
                    self.phase = DONE
                    sink.upstream_end()  # may release this connection, even to another request
                    return
                if self.sink is not sink:  # released (or closed) by the sink meanwhile
                    return
        except Exception as exc:  # a sink's bug: fluxauth's own, never the upstream's 502
            if self.sink is sink:
                self._fault(exc)
            else:
                raise

    def _fail(self, failure: UpstreamError) -> None:
        """The upstream failed the response: close, and tell the sink (once)."""
        phase = self.phase
        self.abort()
        sink = self.sink
        if sink is not None and (phase is WAITING or phase is BODY):
            sink.upstream_failed(failure)

    def _fault(self, exc: Exception) -> None:
        self.abort()
        sink = self.sink
        if sink is not None:
            sink.upstream_fault(exc)

    # -- one request -------------------------------------------------------

    def begin(self, sink: Sink, head: bytes, *, head_only: bool) -> None:
        """Send a request head on this (idle) connection; its response goes to ``sink``."""
        assert self.phase is IDLE
        assert self.transport is not None
        self._framing.start(head_only=head_only)
        self.phase = WAITING
        self.sink = sink
        self.keep = True
        self.last_active = self._timers.time()
        self.transport.write(head)

    def end(self) -> bool:
        """The request is over, whatever became of it; ``True`` if the connection may serve another."""
        self.sink = None
        writer = self._writer
        if writer is not None:
            self._writer = None
            if not writer.done():
                # Answered before the body was all sent: what the upstream makes
                # of the rest is unknown.
                self.keep = False
                writer.cancel()
        if self.phase is DONE and self.keep:
            self.phase = IDLE
            return True
        self.abort()
        return False

    @property
    def closed(self) -> bool:
        return self.phase is CLOSED

    @property
    def started(self) -> bool:
        """Some byte of the response arrived: a request that failed before cannot have been answered."""
        return self._framing.started

    @property
    def clean(self) -> bool:
        """Idle, open, and nothing waits unread in its socket (looked at as httpcore and aiohttp do at reuse).

        Bytes that arrived while idle close the connection when the loop reads
        them; this catches those the loop has not read yet.
        """
        return self.phase is IDLE and not (self._poll is not None and self._poll.poll(0))

    def pause_reading(self) -> None:
        """The reader cannot take more for now (a slow client)."""
        if not self._read_paused and self.transport is not None and self.phase is not CLOSED:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None and self.phase is not CLOSED:
            self._read_paused = False
            self.last_active = self._timers.time()  # the upstream's time starts again now
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.phase is not CLOSED:
            self.phase = CLOSED
            if self.transport is not None:
                self.transport.abort()

    def check_timeout(self, now: float, read_timeout: float) -> None:
        """Fail the request if the upstream sent nothing for ``read_timeout`` once it had the whole request.

        Neither a pause of ours (a slow client) nor the time a request body
        takes to arrive counts: the client's own timeouts bound that.
        """
        if (
            (self.phase is WAITING or self.phase is BODY)
            and not self._read_paused
            and (self._writer is None or self._writer.done())
            and now - self.last_active >= read_timeout
        ):
            self._fail(UpstreamTimeout(f"the upstream sent nothing for {read_timeout:g} s"))

    # -- writing a body ----------------------------------------------------

    def write_body(self, body: AsyncIterator[bytes], *, chunked: bool) -> None:
        """Stream a request body beside the wait for the response (an upstream may answer before the end).

        The connection is not reused afterwards: whether the upstream read
        the body, or left it to be parsed as the next request (CL.0
        smuggling), cannot be told from its answer.
        """
        self.keep = False
        self._writer = asyncio.get_running_loop().create_task(self._write_body(body, chunked))
        self._writer.add_done_callback(_retrieve)

    async def _write_body(self, body: AsyncIterator[bytes], chunked: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            async for chunk in body:
                if self.closed:
                    return
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.last_active = self._timers.time()
                while self._write_paused and not self.closed:
                    self._drained = asyncio.get_running_loop().create_future()
                    await self._drained
        except Exception:
            # The client's body broke off (gone, too slow, too large): the
            # upstream must not take what it got for a whole request.
            self._fail(UpstreamBroken("the request body broke off"))
            raise
        if not self.closed:
            if chunked:
                transport.write(b"0\r\n\r\n")
            self.last_active = self._timers.time()  # the upstream's time to answer starts now


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a task's exception as seen: the caller learns of it another way (its body reader)."""
    if not task.cancelled():
        task.exception()
