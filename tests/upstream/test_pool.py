"""The upstream pool against real TCP servers that answer exactly the bytes each test scripts.

Each server is an ``asyncio.start_server`` on an ephemeral loopback port, in the
test's own event loop: framing edge cases (chunked, until-close, HEAD, 103,
garbage, a connection closed under a request) are written out byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

import pytest

from fluxauth.errors import UpstreamBroken, UpstreamBusy, UpstreamTimeout, UpstreamUnreachable
from fluxauth.timers import ManualTimers
from fluxauth.upstream.origin import Origin
from fluxauth.upstream.pool import UpstreamPool
from fluxauth.upstream.response import HIGH_WATER, Response

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


async def until(condition: Callable[[], bool]) -> None:
    """Let the loop run until ``condition`` holds: the pool's state, which has no event of its own to wait on."""
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the condition never held")


def pool(**options: Any) -> UpstreamPool:
    settings = {"max_connections": 8, "connect_timeout": 2.0, "read_timeout": 2.0, **options}
    return UpstreamPool(**settings)


def request(path: bytes = b"/tile", method: bytes = b"GET", *headers: bytes) -> bytes:
    lines = b"".join(header + b"\r\n" for header in headers)
    return method + b" " + path + b" HTTP/1.1\r\nhost: upstream\r\n" + lines + b"\r\n"


async def fetch(upstream: UpstreamPool, origin: Origin, head: bytes | None = None) -> tuple[int, bytes, Response]:
    response = await upstream.send(origin, head or request(), method="GET")
    body = b""
    while chunk := await response.read():
        body += chunk
    upstream.release(response.connection)
    return response.status, body, response


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
                await upstream.send(
                    scripted.origin, request(b"/up", b"PUT", b"content-length: 7"), body(), method="PUT"
                )
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
            status, body, response = await fetch(upstream, scripted.origin)
            assert (status, body) == (200, b"hello world")
            assert (b"transfer-encoding", b"chunked") in response.headers
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
            status, body, response = await fetch(upstream, scripted.origin)
            assert (status, body) == (200, b"all of it")
            assert response.complete
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
            response = await upstream.send(scripted.origin, request(method=b"HEAD"), method="HEAD")
            assert response.status == 200
            assert (b"content-length", b"12288") in response.headers
            assert await response.read() == b""
            upstream.release(response.connection)
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
            status, body, response = await fetch(pool(), scripted.origin)
            assert (status, body) == (200, b"final")
            assert not any(name == b"link" for name, _ in response.headers)

    run(test)


def test_upstream_silent_upstream_times_out() -> None:
    """An upstream that sends nothing for ``read_timeout`` fails the request (504 upstream of here)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.read()  # never answers

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool(read_timeout=0.2)
            with pytest.raises(UpstreamTimeout):
                await upstream.send(scripted.origin, request(), method="GET")
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
            response = await upstream.send(scripted.origin, request(), method="GET")
            assert len(await response.read()) > 0
            with pytest.raises(UpstreamTimeout):
                await response.read()
            upstream.release(response.connection)

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
            await upstream.send(Origin.from_url(f"http://127.0.0.1:{port}"), request(), method="GET")
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
                await upstream.send(scripted.origin, request(), method="GET")
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
            response = await upstream.send(
                scripted.origin, request(b"/c/0", b"PUT", framing), parts(), method="PUT", chunked=chunked
            )
            assert (response.status, await response.read()) == (200, b"stored")
            upstream.release(response.connection)
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
            response = await upstream.send(
                scripted.origin, request(b"/big", b"PUT", b"content-length: 100"), endless(), method="PUT"
            )
            assert response.status == 413
            assert await response.read() == b""
            upstream.release(response.connection)
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
            response = await upstream.send(scripted.origin, request(), method="GET")
            await asyncio.sleep(0.3)  # the upstream writes as fast as it can; nobody reads
            first = await response.read()
            assert len(first) < HIGH_WATER + 1024 * 1024
            total = len(first)
            while chunk := await response.read():
                total += len(chunk)
            assert total == size
            upstream.release(response.connection)

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
            response = await upstream.send(scripted.origin, request(), method="GET")
            upstream.release(response.connection)
            assert response.connection.closed
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
            status, _, response = await fetch(upstream, scripted.origin)
            assert status == 200
            for _ in range(20):
                if response.connection.closed:
                    break
                await asyncio.sleep(0.01)
            assert response.connection.closed
            assert upstream.idle_connections == 0

    run(test)


# -- hardening: reuse only when provably clean, fair shares, bounded waits ----------------------------


class Threaded:
    """A raw upstream in a thread of its own: it can write while the test's event loop is blocked.

    ``handler(conn, number)`` serves each connection; ``late`` tells a handler
    when to send what it holds back, ``sent`` tells the test it was sent.
    """

    def __init__(self, handler: Callable[[socket.socket, int], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.origin = Origin.from_url(f"http://127.0.0.1:{self.listener.getsockname()[1]}")
        self.handler = handler
        self.connections = 0
        self.late = threading.Event()
        self.sent = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            number = self.connections
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn, contextlib.suppress(OSError):
            self.handler(conn, number)

    def close(self) -> None:
        self.listener.close()


def read_head(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_upstream_late_bytes_waiting_unread_are_caught_at_reuse() -> None:
    """Bytes that reached the socket after a response, before the loop read them, keep the connection from reuse.

    The attack (issue 10, item 5): a HEAD or 204 body, or a second answer,
    sent 50 ms after a framed response. The test's loop is blocked while the
    upstream sends them, so only the look at the socket at reuse can see them.
    """

    def handler(conn: socket.socket, number: int) -> None:
        read_head(conn)
        conn.sendall(ok(b"first"))
        if number == 0:
            server.late.wait(5)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")  # nobody asked for it
            server.sent.set()
        while True:
            read_head(conn)
            conn.sendall(ok(b"fresh"))

    async def test() -> None:
        upstream = pool()
        assert (await fetch(upstream, server.origin))[:2] == (200, b"first")
        server.late.set()
        assert server.sent.wait(5)  # blocks the loop: the bytes wait in the socket, unread
        assert upstream.take_idle(server.origin) is None
        assert await fetch(upstream, server.origin) != (200, b"secret")
        assert (await fetch(upstream, server.origin))[:2] == (200, b"fresh")
        assert server.connections == 2

    server = Threaded(handler)
    try:
        run(test)
    finally:
        server.close()


def test_upstream_reuse_is_partitioned_by_org() -> None:
    """A connection that carried org A's answer is reused for A's next request, never for B's."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok(b"connection %d" % number))

    async def fetch_for(upstream: UpstreamPool, origin: Origin, org: str | None) -> bytes:
        response = await upstream.send(origin, request(), method="GET", partition=org)
        body = b""
        while chunk := await response.read():
            body += chunk
        upstream.release(response.connection)
        return body

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            assert await fetch_for(upstream, scripted.origin, "acme") == b"connection 0"
            assert await fetch_for(upstream, scripted.origin, "other") == b"connection 1"
            assert await fetch_for(upstream, scripted.origin, "acme") == b"connection 0"
            assert await fetch_for(upstream, scripted.origin, None) == b"connection 2"  # anonymous: its own
            assert await fetch_for(upstream, scripted.origin, "other") == b"connection 1"
            assert scripted.connections == 3
            assert upstream.take_idle(scripted.origin, "third") is None

    run(test)


@pytest.mark.parametrize(
    ("method", "retried"),
    [("GET", True), ("HEAD", True), ("PUT", True), ("DELETE", True), ("POST", False), ("PATCH", False)],
)
def test_upstream_only_idempotent_requests_are_sent_again(method: str, retried: bool) -> None:
    """A bodiless request dropped unanswered on a reused connection is retried only if its method is idempotent.

    RFC 9110 §9.2.2: the upstream may have acted on a POST before it dropped
    the connection; sending it again would act twice.
    """
    arrived: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        if number == 0:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(ok(b""))
            arrived.append(await reader.readuntil(b"\r\n\r\n"))
            return  # acted on it, perhaps; closed unanswered
        arrived.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(ok(b"done"))
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            await fetch(upstream, scripted.origin)
            head = request(b"/act", method.encode())
            if retried:
                response = await upstream.send(scripted.origin, head, method=method)
                assert response.status == 200
                upstream.release(response.connection)
                assert len(arrived) == 2
            else:
                with pytest.raises(UpstreamBroken):
                    await upstream.send(scripted.origin, head, method=method)
                assert len(arrived) == 1

    run(test)


def test_upstream_wait_for_a_connection_is_bounded_by_the_connect_timeout() -> None:
    """With every connection busy, a request waits at most ``connect_timeout`` for one, then ``UpstreamBusy``.

    Before, a victim waited 39 s (and for ever) behind ``upstream_max_connections = 8``
    slow requests. The timers are driven: no real wait.
    """
    release = asyncio.Event()
    arrived = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.set()
        await release.wait()
        writer.write(ok(b"late"))
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            timers = ManualTimers()
            upstream = pool(max_connections=1, connect_timeout=5.0, read_timeout=600.0, timers=timers)
            holder = asyncio.create_task(upstream.send(scripted.origin, request(), method="GET"))
            await arrived.wait()
            victim = asyncio.create_task(upstream.send(scripted.origin, request(), method="GET"))
            await until(lambda: bool(upstream.waiting))
            timers.advance(4.9)
            await asyncio.sleep(0)
            assert not victim.done()
            timers.advance(0.2)
            with pytest.raises(UpstreamBusy):
                await victim
            assert upstream.waiting == 0
            release.set()
            response = await holder
            upstream.release(response.connection)
            assert (upstream.open_connections, upstream.idle_connections) == (1, 1)

    run(test)


def test_upstream_one_client_holds_at_most_its_share() -> None:
    """One client cannot take more than ``client_share`` of the connections; another still gets one at once."""
    release = asyncio.Event()
    arrived: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        arrived.append(number)
        await release.wait()
        writer.write(ok(b"x"))
        await reader.read()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            timers = ManualTimers()
            upstream = pool(max_connections=8, client_share=0.25, timers=timers, read_timeout=600.0)
            attacker = [
                asyncio.create_task(upstream.send(scripted.origin, request(), method="GET", client="198.51.100.7"))
                for _ in range(6)
            ]
            await until(lambda: upstream.waiting >= 4 and len(arrived) >= 2)
            assert upstream.held_by("198.51.100.7") == 2
            assert upstream.open_connections == 2
            victim = asyncio.create_task(upstream.send(scripted.origin, request(), method="GET", client="203.0.113.9"))
            await until(lambda: upstream.held_by("203.0.113.9") != 0)
            release.set()
            response = await victim
            assert response.status == 200
            upstream.release(response.connection)
            timers.advance(10)  # the attacker's waiters give up
            results = await asyncio.gather(*attacker, return_exceptions=True)
            assert sum(isinstance(result, UpstreamBusy) for result in results) >= 2
            for result in results:
                if isinstance(result, Response):
                    upstream.release(result.connection)

    run(test)


def test_upstream_freed_connection_goes_to_the_partition_holding_fewest() -> None:
    """Behind a flood of one org's requests, another org's waiter gets the next connection freed."""
    gates: list[asyncio.Event] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            gate = asyncio.Event()
            gates.append(gate)
            await gate.wait()
            writer.write(ok(b"x"))

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool(max_connections=2, read_timeout=600.0)
            flood = [
                asyncio.create_task(upstream.send(scripted.origin, request(), method="GET", partition="anon"))
                for _ in range(5)
            ]
            await until(lambda: len(gates) >= 2 and upstream.waiting >= 3)
            other = asyncio.create_task(upstream.send(scripted.origin, request(), method="GET", partition="acme"))
            await until(lambda: upstream.waiting >= 4)
            gates[0].set()
            await until(lambda: any(task.done() for task in flood))
            done = next(task for task in flood if task.done())
            upstream.release(done.result().connection)  # back in the pool, under "anon"
            await until(lambda: len(gates) >= 3)
            assert not other.done()
            gates[2].set()
            response = await other
            assert response.status == 200
            upstream.release(response.connection)
            for task in flood:
                task.cancel()
            for gate in gates:
                gate.set()
            await asyncio.gather(*flood, return_exceptions=True)

    run(test)


def test_upstream_connection_is_not_reused_after_a_request_body() -> None:
    """An upstream that answers without reading the body would parse it as the next request: the connection goes.

    The CL.0 smuggling of issue 10, item 3: the body held a whole request with
    forged identity headers; on a reused connection the next client got its answer.
    The upstream answers in order, each request once the one after it arrived:
    no byte of the smuggled request's answer reaches the idle connection to
    give it away, so only the rule that a connection which carried a body is
    not reused keeps it from the next request.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        if number == 0:
            post = await reader.readuntil(b"\r\n\r\n")  # a body is never read: it is "the next request"
            writer.write(ok(b"answer to " + post.split(b" ")[1]))
            smuggled_head = await reader.readuntil(b"\r\n\r\n")
            following = await reader.readuntil(b"\r\n\r\n")  # only if the connection was reused
            for head in (smuggled_head, following):
                writer.write(ok(b"answer to " + head.split(b" ")[1]))
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(ok(b"answer to " + head.split(b" ")[1]))

    smuggled = b"GET /v1/services/tiles/other/secret/main/y HTTP/1.1\r\nhost: u\r\nx-fluxauth-org: other\r\n\r\n"

    async def body() -> AsyncIterator[bytes]:
        yield smuggled

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            framing = b"content-length: %d" % len(smuggled)
            response = await upstream.send(
                scripted.origin, request(b"/x", b"POST", framing), body(), method="POST", partition="acme"
            )
            while await response.read():
                pass
            upstream.release(response.connection)
            assert upstream.idle_connections == 0
            assert (await fetch(upstream, scripted.origin))[:2] == (200, b"answer to /tile")
            assert scripted.connections == 2

    run(test)


def test_upstream_response_head_is_bounded() -> None:
    """An upstream's 200,001 headers (20.5 MB, accepted before) are ``UpstreamBroken`` once past the limit."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\n")
        with contextlib.suppress(ConnectionError):
            for n in range(200_001):
                writer.write(b"x-h%06d: %s\r\n" % (n, b"v" * 90))
                if n % 1000 == 0:
                    await writer.drain()
            writer.write(b"content-length: 0\r\n\r\n")
            await writer.drain()

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool(max_header_bytes=64 * 1024)
            with pytest.raises(UpstreamBroken, match="head is longer than 65536"):
                await upstream.send(scripted.origin, request(), method="GET")
            assert upstream.open_connections == 0

    run(test)


def test_upstream_sink_fault_is_not_the_upstreams_failure() -> None:
    """A sink that raises (fluxauth's bug) is told so by ``upstream_fault``, not ``upstream_failed``; no 502 kind."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(ok())
        await reader.read()

    class Buggy:
        def __init__(self) -> None:
            self.fault: Exception | None = None
            self.failure: Exception | None = None

        def upstream_head(self, head: object) -> None:
            raise KeyError("injected")

        def upstream_body(self, data: bytes) -> None: ...

        def upstream_end(self) -> None: ...

        def upstream_failed(self, failure: Exception) -> None:
            self.failure = failure

        def upstream_fault(self, exc: Exception) -> None:
            self.fault = exc

    async def test() -> None:
        async with Scripted(handler) as scripted:
            upstream = pool()
            await fetch(upstream, scripted.origin)
            connection = upstream.take_idle(scripted.origin)
            assert connection is not None
            sink = Buggy()
            upstream.send_to(connection, request(), sink, head_only=False)
            await until(lambda: sink.fault is not None or sink.failure is not None)
            assert isinstance(sink.fault, KeyError)
            assert sink.failure is None
            assert connection.closed
            upstream.release(connection)
            assert upstream.open_connections == 0

    run(test)


def test_upstream_silence_while_the_body_is_sent_is_not_a_timeout() -> None:
    """``read_timeout`` starts once the whole request went out: an upload slower than it is no 504."""
    more = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: int) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(10)
        writer.write(ok(b"stored"))
        await reader.read()

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await more.wait()
        yield b"secnd"

    async def test() -> None:
        async with Scripted(handler) as scripted:
            timers = ManualTimers()
            upstream = pool(read_timeout=2.0, timers=timers)
            sending = asyncio.create_task(
                upstream.send(scripted.origin, request(b"/up", b"PUT", b"content-length: 10"), body(), method="PUT")
            )
            await asyncio.sleep(0.05)
            timers.advance(30)  # the watchdog looks, many times; the body is still on its way
            assert not sending.done()
            more.set()
            response = await sending
            assert (response.status, await response.read()) == (200, b"stored")
            upstream.release(response.connection)

    run(test)
