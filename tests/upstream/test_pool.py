"""The upstream pool against real TCP servers that answer exactly the bytes each test scripts.

Each server is an ``asyncio.start_server`` on an ephemeral loopback port, in the
test's own event loop: framing edge cases (chunked, until-close, HEAD, 103,
garbage, a connection closed under a request) are written out byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from fluxauth.errors import UpstreamBroken, UpstreamTimeout, UpstreamUnreachable
from fluxauth.upstream.pool import HIGH_WATER, Connection, Origin, UpstreamPool

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
TILE = b"\x89PNG" + b"t" * 12284


def ok(body: bytes = TILE, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(line + b"\r\n" for line in extra) + b"\r\n" + body


class Scripted:
    """A real server whose handler gets each connection and its number (0, 1, ...)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.heads: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def origin(self) -> Origin:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return Origin.from_url(f"http://127.0.0.1:{port}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, number)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.heads.append(head)
        return head


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def pool(**options: Any) -> UpstreamPool:
    settings = {"max_connections": 8, "connect_timeout": 2.0, "read_timeout": 2.0, **options}
    return UpstreamPool(**settings)


def request(path: bytes = b"/tile", method: bytes = b"GET", *headers: bytes) -> bytes:
    lines = b"".join(header + b"\r\n" for header in headers)
    return method + b" " + path + b" HTTP/1.1\r\nhost: upstream\r\n" + lines + b"\r\n"


async def fetch(upstream: UpstreamPool, origin: Origin, head: bytes | None = None) -> tuple[int, bytes, Connection]:
    connection = await upstream.send(origin, head or request())
    body = b""
    while chunk := await connection.read():
        body += chunk
    upstream.release(connection)
    return connection.status, body, connection


def test_upstream_origin_from_url_keeps_credentials_out_of_its_repr() -> None:
    """An upstream URL's userinfo becomes fluxauth's own Basic credentials, and never shows in a repr."""
    origin = Origin.from_url("https://svc:p%40ss@tiles.internal:8443/base/")
    assert (origin.host, origin.port, origin.tls, origin.prefix) == ("tiles.internal", 8443, True, b"/base")
    assert origin.host_header == b"tiles.internal:8443"
    assert origin.authorization == b"Basic " + base64.b64encode(b"svc:p@ss")
    assert "p@ss" not in repr(origin)
    assert "svc" not in repr(origin)
    plain = Origin.from_url("http://127.0.0.1:8001")
    assert (plain.port, plain.tls, plain.prefix, plain.authorization) == (8001, False, b"", None)
    assert Origin.from_url("http://tiles").port == 80


def test_upstream_keeps_one_connection_alive_across_requests() -> None:
    """Sequential requests reuse one keep-alive connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await server.head(reader)
            writer.write(ok())

    async def test() -> None:
        async with Scripted(handler) as scripted:
            nonlocal server
            server = scripted
            upstream = pool()
            for _ in range(5):
                status, body, _ = await fetch(upstream, scripted.origin)
                assert (status, body) == (200, TILE)
            assert scripted.connections == 1
            assert (upstream.open_connections, upstream.idle_connections) == (1, 1)
            await upstream.close()
            assert upstream.open_connections == 0

    server: Scripted
    run(test)


def test_upstream_concurrent_requests_stay_within_max_connections() -> None:
    """Concurrent requests beyond ``max_connections`` wait for a connection instead of opening more."""
    in_flight = 0
    most = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        nonlocal in_flight, most
        while True:
            await reader.readuntil(b"\r\n\r\n")
            in_flight += 1
            most = max(most, in_flight)
            await asyncio.sleep(0.01)  # a slow upstream, so that requests overlap
            in_flight -= 1
            writer.write(ok())

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool(max_connections=2)
            results = await asyncio.gather(*(fetch(upstream, scripted.origin) for _ in range(10)))
            assert [status for status, _, _ in results] == [200] * 10
            assert scripted.connections == 2
            assert most == 2
            assert upstream.open_connections == 2

    run(test)


def test_upstream_stale_connection_is_sent_once_more_on_a_new_one() -> None:
    """A bodiless request on a reused connection that the upstream closes unanswered is retried on a new one."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await server.head(reader)
        writer.write(ok())
        if number == 0:
            await server.head(reader)  # the second request arrives as the upstream gives up on the connection
            return  # closed, unanswered
        while True:
            await server.head(reader)
            writer.write(ok())

    async def test() -> None:
        async with Scripted(handler) as scripted:
            nonlocal server
            server = scripted
            upstream = pool()
            assert (await fetch(upstream, scripted.origin))[0] == 200
            status, body, _ = await fetch(upstream, scripted.origin)
            assert (status, body) == (200, TILE)
            assert scripted.connections == 2
            assert len(scripted.heads) == 3  # the retried request went out twice

    server: Scripted
    run(test)


def test_upstream_request_with_body_is_not_sent_twice() -> None:
    """A request with a body that loses its reused connection fails: its body cannot be replayed."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok())
        if number == 0:
            await reader.readuntil(b"\r\n\r\n")

    async def body() -> AsyncIterator[bytes]:
        yield b"payload"

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            await fetch(upstream, scripted.origin)
            with pytest.raises(UpstreamBroken):
                await upstream.send(scripted.origin, request(b"/up", b"PUT", b"content-length: 7"), body())
            assert scripted.connections == 1

    run(test)


def test_upstream_chunked_response_is_read_whole() -> None:
    """A chunked response is decoded; its connection is reused afterwards."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            status, body, connection = await fetch(upstream, scripted.origin)
            assert (status, body) == (200, b"hello world")
            assert (b"transfer-encoding", b"chunked") in connection.headers
            await fetch(upstream, scripted.origin)
            assert scripted.connections == 1

    run(test)


def test_upstream_body_until_close_ends_with_the_connection() -> None:
    """A response with neither length nor chunks ends when the upstream closes; the connection is not kept."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
        await writer.drain()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            status, body, connection = await fetch(upstream, scripted.origin)
            assert (status, body) == (200, b"all of it")
            assert connection.complete
            assert upstream.idle_connections == 0
            assert upstream.open_connections == 0

    run(test)


def test_upstream_head_response_has_no_body_and_keeps_the_connection() -> None:
    """A HEAD response's Content-Length announces no body; the next request on the connection still parses."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        writer.write(ok()[: ok().index(b"\r\n\r\n") + 4])  # the head alone
        assert head.startswith(b"HEAD ")
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(b"second"))
        await writer.drain()
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            connection = await upstream.send(scripted.origin, request(method=b"HEAD"), head_only=True)
            assert connection.status == 200
            assert (b"content-length", b"12288") in connection.headers
            assert await connection.read() == b""
            upstream.release(connection)
            status, body, _ = await fetch(upstream, scripted.origin)
            assert (status, body) == (200, b"second")
            assert scripted.connections == 1

    run(test)


def test_upstream_interim_103_is_skipped() -> None:
    """An interim 103 Early Hints is not taken for the answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n" + ok(b"final"))
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            status, body, connection = await fetch(pool(), scripted.origin)
            assert (status, body) == (200, b"final")
            assert not any(name == b"link" for name, _ in connection.headers)

    run(test)


def test_upstream_silent_upstream_times_out() -> None:
    """An upstream that sends nothing for ``read_timeout`` fails the request (504 upstream of here)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # never answers

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool(read_timeout=0.2)
            with pytest.raises(UpstreamTimeout):
                await upstream.send(scripted.origin, request())
            assert upstream.open_connections == 0

    run(test)


def test_upstream_stalling_mid_body_times_out() -> None:
    """A body that stops arriving fails the read, not only a head that never comes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok()[:-100])  # all but the last 100 bytes
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool(read_timeout=0.2)
            connection = await upstream.send(scripted.origin, request())
            assert len(await connection.read()) > 0
            with pytest.raises(UpstreamTimeout):
                await connection.read()
            upstream.release(connection)

    run(test)


def test_upstream_refused_connection_is_unreachable() -> None:
    """Nobody listening: ``UpstreamUnreachable`` (502), and the failed attempt is not counted as open."""

    async def test() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        upstream = pool()
        with pytest.raises(UpstreamUnreachable):
            await upstream.send(Origin.from_url(f"http://127.0.0.1:{port}"), request())
        assert upstream.open_connections == 0

    run(test)


def test_upstream_garbage_is_a_broken_response() -> None:
    """What is not HTTP fails with ``UpstreamBroken`` (502) and closes the connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            with pytest.raises(UpstreamBroken):
                await upstream.send(scripted.origin, request())
            assert upstream.open_connections == 0

    run(test)


@pytest.mark.parametrize("chunked", [True, False])
def test_upstream_request_body_is_streamed(chunked: bool) -> None:
    """A body arrives whole, chunk-encoded when its length was not declared."""
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if chunked:
            body = b""
            while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) > 0:
                body += await reader.readexactly(size)
                await reader.readexactly(2)
            await reader.readexactly(2)
        else:
            body = await reader.readexactly(int(head.split(b"content-length: ")[1].split(b"\r\n")[0]))
        received.append(body)
        writer.write(ok(b"stored"))
        await reader.read()

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"zarr ", b"chunk ", b"bytes"):
            await asyncio.sleep(0)
            yield part

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            framing = b"transfer-encoding: chunked" if chunked else b"content-length: 16"
            connection = await upstream.send(
                scripted.origin, request(b"/c/0", b"PUT", framing), parts(), chunked=chunked
            )
            assert (connection.status, await connection.read()) == (200, b"stored")
            upstream.release(connection)
            assert received == [b"zarr chunk bytes"]

    run(test)


def test_upstream_answer_before_the_body_ends_closes_the_connection() -> None:
    """An upstream that answers before the whole body was sent (a 413, say) does not get the connection back."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
        await reader.read()

    release = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"first part"
        await release.wait()
        yield b"never sent"

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            connection = await upstream.send(
                scripted.origin, request(b"/big", b"PUT", b"content-length: 100"), endless()
            )
            assert connection.status == 413
            assert await connection.read() == b""
            upstream.release(connection)
            assert upstream.idle_connections == 0
            assert upstream.open_connections == 0

    run(test)


def test_upstream_slow_reader_pauses_the_upstream() -> None:
    """A response nobody reads is buffered only up to about ``HIGH_WATER``, then the upstream is paused."""
    size = 8 * 1024 * 1024

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(b"x" * size))
        await writer.drain()
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            connection = await upstream.send(scripted.origin, request())
            await asyncio.sleep(0.3)  # the upstream writes as fast as it can; nobody reads
            first = await connection.read()
            assert len(first) < HIGH_WATER + 1024 * 1024
            total = len(first)
            while chunk := await connection.read():
                total += len(chunk)
            assert total == size
            upstream.release(connection)

    run(test)


def test_upstream_response_left_unread_closes_its_connection() -> None:
    """Released before its end, a response's connection is closed: its rest would read as the next answer."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok(b"y" * 1024 * 1024))
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            connection = await upstream.send(scripted.origin, request())
            upstream.release(connection)
            assert connection.closed
            assert (upstream.open_connections, upstream.idle_connections) == (0, 0)

    run(test)


def test_upstream_bytes_on_an_idle_connection_close_it() -> None:
    """An upstream that sends what nobody asked for loses the connection before anyone reuses it."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok() + b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # a second, unasked answer
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            status, _, connection = await fetch(upstream, scripted.origin)
            assert status == 200
            for _ in range(20):
                if connection.closed:
                    break
                await asyncio.sleep(0.01)
            assert connection.closed
            assert upstream.idle_connections == 0

    run(test)
