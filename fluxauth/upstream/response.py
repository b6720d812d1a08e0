"""A response read by pulling (``await read()``): the ASGI path's adapter over the connection's push sink."""

from __future__ import annotations

import asyncio

from fluxauth.types import Headers
from fluxauth.upstream.connection import Connection
from fluxauth.upstream.framing import Head

# Response bytes buffered before the upstream is paused (a slow client reads
# them): the same bound as uvicorn's request bodies.
HIGH_WATER = 64 * 1024


class Response:
    """One upstream response as it arrives: ``head`` waits for its head, ``read`` for its body's next bytes."""

    __slots__ = ("_buffered", "_chunks", "_failure", "_waiter", "complete", "connection", "headers", "status")

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.status = 0
        self.headers: Headers = []
        self.complete = False  # the whole response arrived (``read`` may still hold the last of it)
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._failure: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- the sink (connection.Sink) -------------------------------------------

    def upstream_head(self, head: Head) -> None:
        self.status = head.status
        self.headers = head.headers
        self._wake()

    def upstream_body(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        if self._buffered > HIGH_WATER:
            self.connection.pause_reading()
        self._wake()

    def upstream_end(self) -> None:
        self.complete = True
        self._wake()

    def upstream_failed(self, failure: BaseException) -> None:
        if self._failure is None:
            self._failure = failure
        self._wake()

    upstream_fault = upstream_failed  # raised in the reader's task, whose server logs it and answers 500

    # -- the reader's side ------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def head(self) -> None:
        """Wait for the response's head; raises what failed it first."""
        while not self.status:
            if self._failure is not None:
                raise self._failure
            await self._wait()

    async def read(self) -> bytes:
        """The body bytes that arrived since the last call, waiting for some; ``b""`` at the end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._failure is not None:
                raise self._failure
            await self._wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._buffered = 0
        self.connection.resume_reading()
        return data
