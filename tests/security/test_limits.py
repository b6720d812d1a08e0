"""Limits: request head size and time, URL length, request body size and pace, slow readers, slowloris.

Against fluxauth as ``fluxauth serve`` runs it (``LimitedHttpToolsProtocol``).
The timeouts are the real defaults, and no test sleeps through them: the
connections' timers are driven (``ManualTimers``), so that a 10 s head
timeout takes no 10 s and its outcome does not hang on how busy the machine
is. The last test runs the real ``fluxauth serve`` command to show the
command line wires them in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fluxauth.manage.admin import Admin
from fluxauth.timers import ManualTimers
from tests.conftest import ProxyFactory
from tests.support.readers import (
    StarletteReader,
    basic_value,
    read_all,
    read_response,
    request_bytes,
    send_raw,
)
from tests.support.servers import Proxy, free_port, running_process

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

ECHO = b"/v1/services/tiles/acme/era5/main/_echo"


@dataclasses.dataclass
class Keys:
    reader: bytes
    writer: bytes


@pytest.fixture
def keys(admin: Admin) -> Keys:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    return Keys(
        basic_value("acme", admin.create_key("acme", "reader", permissions=["read"]).token),
        basic_value("acme", admin.create_key("acme", "writer", permissions=["write"]).token),
    )


Start = Callable[..., Proxy]


@pytest.fixture
def start(proxy_factory: ProxyFactory, keys: Keys) -> Start:
    """fluxauth with the fixture's settings and ``changes``, the keys made first."""
    return proxy_factory


@pytest.fixture
def starlette() -> Iterator[StarletteReader]:
    with StarletteReader() as reader:
        yield reader


# -- the request head -------------------------------------------------------------


def test_limits_url_longer_than_max_url_length_is_414(start: Start, keys: Keys) -> None:
    """A target longer than ``max_url_length`` (path and query) is 414; one at the limit is served.

    Defence: ``request.check_framing``.
    """
    front = start(max_url_length=1024)
    at_limit = ECHO + b"/" + b"a" * (1024 - len(ECHO) - 1)
    assert send_raw(front.port, request_bytes(at_limit, [(b"Authorization", keys.reader)])).status == 200
    over = send_raw(front.port, request_bytes(at_limit + b"a", [(b"Authorization", keys.reader)]))
    assert over.status == 414
    assert over.json()["error"] == "uri_too_long"
    query = send_raw(front.port, request_bytes(ECHO + b"?q=" + b"a" * 1024, [(b"Authorization", keys.reader)]))
    assert query.status == 414


def test_limits_header_larger_than_max_header_bytes_is_431(start: Start, keys: Keys) -> None:
    """A head over ``max_header_bytes`` is 431, whether it arrives whole or never ends.

    Defence: ``LimitedHttpToolsProtocol``; uvicorn with httptools alone reads a
    200 MB header into memory (in quadratic time) and hands it to the app.
    """
    front = start(max_header_bytes=8192)
    whole = request_bytes(ECHO, [(b"Authorization", keys.reader), (b"X-Big", b"a" * 9000)])
    assert send_raw(front.port, whole).status == 431
    many = request_bytes(ECHO, [(b"X-H%d" % index, b"v" * 20) for index in range(400)])
    assert send_raw(front.port, many).status == 431
    fits = request_bytes(ECHO, [(b"Authorization", keys.reader), (b"X-Big", b"a" * 7000)])
    assert send_raw(front.port, fits).status == 200

    # An endless header: the server answers and hangs up long before 64 MiB.
    sent = 0
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(b"GET " + ECHO + b" HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        try:
            while sent < 64 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = read_all(sock)
    print(f"endless header: the server hung up after {sent // 1024} KiB were sent")
    assert reply.startswith(b"HTTP/1.1 431")
    assert sent < 16 * 1024 * 1024


def test_limits_slow_request_head_is_408_and_closed(start: Start) -> None:
    """A head not complete within ``client_header_timeout`` is answered 408 and the connection closed.

    Defence: ``LimitedHttpToolsProtocol``'s head timer; uvicorn alone keeps
    such a connection, and one that never sends a byte, open for ever.
    """
    timers = ManualTimers()
    front = start(timers=timers)  # client_header_timeout: the default 10 s
    for opening in (b"GET " + ECHO + b" HTTP/1.1\r\nHost: x\r\nX-Slow: a", b""):
        with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
            sock.sendall(opening)
            front.server.settle(sock)
            timers.advance(9.9)
            assert still_open(sock)
            timers.advance(0.2)
            reply = read_all(sock)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:100]


def test_limits_idle_keep_alive_connection_is_closed(start: Start, keys: Keys) -> None:
    """Between requests a connection may stay quiet for ``timeout_keep_alive`` (5 s), then it is closed.

    Defence: ``LimitedHttpToolsProtocol``'s one timer per connection, which
    keeps uvicorn's keep-alive bound without uvicorn's timer per response.
    """
    timers = ManualTimers()
    front = start(timers=timers)
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        for _ in range(3):  # each answer starts the idle wait again
            sock.sendall(b"GET /_fluxauth/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
            timers.advance(4)
            assert still_open(sock)
        timers.advance(1.1)
        assert sock.recv(65536) == b""  # closed by the server


@pytest.mark.parametrize("filler", [b"\r\n", b"\n", b"\r\n\r\n\r\n"], ids=["crlf", "lf", "crlf-x3"])
def test_limits_bare_crlf_between_requests_does_not_hold_the_connection(start: Start, filler: bytes) -> None:
    """A CRLF (or LF) after a response, then silence: closed at the keep-alive timeout, as silence alone is.

    The attack (issue 10, item 2): llhttp swallows CR and LF between requests
    without beginning one, and any byte ended the idle wait, so nothing ever
    closed the connection (200 held for 40 s, 3 for 150 s, against 5 s; with
    512 descriptors, 493 of them made the server refuse everyone). Defence:
    the idle wait ends when a request begins (``on_message_begin``), not at a
    byte. Neither does a trickle of CRLFs extend it.
    """
    timers = ManualTimers()
    front = start(timers=timers)
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(b"GET /_fluxauth/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        for _ in range(4):
            sock.sendall(filler)
            front.server.settle(sock)
            timers.advance(1)
            assert still_open(sock)
        timers.advance(1.1)
        assert read_all(sock) == b""  # closed at 5 s, with no answer owed
    print(
        f"{filler!r} after a response, then silence: closed at the 5 s keep-alive timeout (driven time)"
        " (before: never; 200 such connections held for 40 s, 3 for 150 s)"
    )
    # A head begun after the CRLF has the head's own deadline: 408 at 10 s from its first byte.
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(b"GET /_fluxauth/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(filler)
        front.server.settle(sock)
        timers.advance(3)
        sock.sendall(b"GET /_fluxauth/healthz HTTP/1.1\r\n")
        front.server.settle(sock)
        timers.advance(9.9)
        assert still_open(sock)
        timers.advance(0.2)
        assert read_all(sock).startswith(b"HTTP/1.1 408")


def test_limits_trickled_pipelined_head_still_times_out(start: Start, keys: Keys) -> None:
    """A head begun behind a request, then trickled a byte at a time, is 408 at its own deadline.

    Each byte ends the keep-alive wait, so only the head's deadline (from its
    first byte) bounds it; a trickle must not reset it.
    """
    timers = ManualTimers()
    front = start(timers=timers)
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(b"GET /_fluxauth/healthz HTTP/1.1\r\nHost: x\r\n\r\nGET " + ECHO + b" HTTP/1.1\r\n")
        reply = b""
        for _ in range(12):  # 12 s of trickle, past the 10 s deadline
            with contextlib.suppress(OSError):
                sock.sendall(b"X")
            front.server.settle(sock)
            timers.advance(1)
        reply = read_all(sock)
    assert b"HTTP/1.1 200" in reply
    assert b"HTTP/1.1 408" in reply


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither closed ``sock`` nor written to it (looked at without waiting)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(timeout)
    return False


def test_limits_slowloris_does_not_hold_the_server(start: Start, keys: Keys) -> None:
    """Three hundred connections trickling their heads do not slow real requests, and are dropped at the timeout.

    uvicorn alone serves the real requests just as fast (one event loop, idle
    sockets cost nothing but a descriptor) but keeps the slow connections for
    ever, until descriptors run out. Defence: ``client_header_timeout``.
    """
    timers = ManualTimers()
    front = start(timers=timers)  # client_header_timeout: the default 10 s
    state = front.server.server.server_state
    slow: list[socket.socket] = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", front.port), timeout=5)
        sock.sendall(b"GET " + ECHO + b" HTTP/1.1\r\nHost: x\r\n")
        slow.append(sock)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.is_set():
            for sock in slow:
                with contextlib.suppress(OSError):
                    sock.send(b"X")
            stop.wait(0.05)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while len(state.connections) < 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(state.connections) >= 300
        latencies = []
        with httpx.Client(base_url=front.url) as client:
            for _ in range(30):
                started = time.perf_counter()
                assert client.get(ECHO.decode(), headers={"Authorization": keys.reader.decode()}).status_code == 200
                latencies.append(time.perf_counter() - started)
        timers.advance(10.1)  # the head timeout, for every one of them at once
        deadline = time.monotonic() + 5
        while len(state.connections) > 5 and time.monotonic() < deadline:
            time.sleep(0.05)  # the descriptors are released as the loop closes them
        remaining = len(state.connections)
    finally:
        stop.set()
        thread.join()
        for sock in slow:
            sock.close()
    print(
        f"300 slowloris connections: real requests median {statistics.median(latencies) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms; slow connections left after the timeout: {remaining}"
    )
    assert statistics.median(latencies) < 0.05
    assert remaining <= 5


# -- the request body -----------------------------------------------------------------


def test_limits_declared_body_over_the_limit_is_413_unforwarded(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """A Content-Length over ``max_request_body`` is 413 before a byte of the body is read or anything is forwarded.


    Defence: ``request.check_body_size`` in ``FluxAuthApp.http``; the
    connection closes instead of waiting for the body.
    """
    front = start(upstream=starlette.url, max_request_body=1000)
    head = request_bytes(ECHO, [(b"Authorization", keys.writer), (b"Content-Length", b"1001")], method=b"PUT")
    with socket.create_connection(("127.0.0.1", front.port), timeout=3) as sock:
        sock.sendall(head.replace(b"Connection: close\r\n", b""))  # and no body at all
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 413")
    assert b'"error":"too_large"' in reply
    assert starlette.requests == 0
    fits = request_bytes(ECHO, [(b"Authorization", keys.writer), (b"Content-Length", b"1000")], method=b"PUT")
    assert send_raw(front.port, fits + b"x" * 1000).status == 200
    assert [len(body) for _, _, _, body in starlette.received] == [1000]


def test_limits_streamed_body_over_the_limit_is_cut_off(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """A chunked body that grows past ``max_request_body`` is cut off: 413, and the upstream never gets it whole.

    Defence: ``forward._BodyReader``'s count.
    """
    front = start(upstream=starlette.url, max_request_body=100_000)
    chunks = b"".join(b"%x\r\n%s\r\n" % (10_000, b"z" * 10_000) for _ in range(20)) + b"0\r\n\r\n"
    head = request_bytes(ECHO, [(b"Authorization", keys.writer), (b"Transfer-Encoding", b"chunked")], method=b"PUT")
    response = send_raw(front.port, head + chunks)
    assert response.status == 413
    assert starlette.received == []
    small = b"".join(b"%x\r\n%s\r\n" % (10_000, b"z" * 10_000) for _ in range(10)) + b"0\r\n\r\n"
    assert send_raw(front.port, head + small).status == 200
    assert [len(body) for _, _, _, body in starlette.received] == [100_000]


# The tests of a body's timeouts wait for the body's first timer (due 30 s on) before they move the
# time: the key is verified in a thread and the upstream connection is made first, in real time, and
# time moved meanwhile would not count towards the body's limits (or would run out the 5 s connect
# deadline instead: a 504). The forwarder's watch on the client (send_timeout) is armed before the
# connection is made, so it must not be due at the same time, or the wait would find it instead.
BODY_WAIT = 30


def test_limits_stalled_body_is_408(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """A client that stops sending its body for ``client_body_timeout`` gets 408; the upstream gets no request.

    Defence: ``forward._BodyReader``'s pause limit (uvicorn has none).
    """
    timers = ManualTimers()
    # client_body_timeout: the default 30 s; send_timeout (the default 30 s too) moved apart (BODY_WAIT)
    front = start(timers=timers, upstream=starlette.url, send_timeout=45.0)
    head = request_bytes(ECHO, [(b"Authorization", keys.writer), (b"Content-Length", b"100")], method=b"PUT")
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(head + b"only ten b")
        timers.wait_armed(timers.now + BODY_WAIT)  # the body's pause limit, armed once the key is verified
        timers.advance(29.9)
        assert still_open(sock)
        timers.advance(0.2)
        reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"paused for more than 30 s" in reply
    assert starlette.received == []
    assert front.app.forwarder.errors["client_timeout"] == 1


def test_limits_trickled_body_is_408_at_its_pace(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """A body that trickles (1 byte every 10 s of a million) gets 408 once behind ``client_body_min_rate``.

    The attack (issue 10, item 1): ``client_body_timeout`` bounded only the
    pause between two pieces, so 256 such requests from one address held the
    upstream pool as long as they liked (a million bytes at one per 10 s:
    115 days). Defence: ``forward._BodyReader`` gives a body
    ``client_body_timeout`` plus a second per ``client_body_min_rate`` (500)
    bytes, as Apache's mod_reqtimeout ``body=...,MinRate=500``; the upstream
    connection it held is closed.
    """
    timers = ManualTimers()
    front = start(timers=timers, upstream=starlette.url, send_timeout=45.0)  # apart from the body's 30 s (BODY_WAIT)
    head = request_bytes(ECHO, [(b"Authorization", keys.writer), (b"Content-Length", b"1000000")], method=b"PUT")
    pool = front.app.forwarder.pool
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(head)
        timers.wait_armed(timers.now + BODY_WAIT)  # the body's first wait, armed once the key is verified
        seconds = 0
        while seconds < 120 and still_open(sock):
            sock.sendall(b"x")
            front.server.settle(sock)
            timers.advance(10)
            seconds += 10
        reply = read_all(sock)
    print(f"a body trickled at 1 byte / 10 s: 408 after {seconds} s (before: never, for 115 days)")
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"slower than 500 bytes/s" in reply
    assert seconds <= 40
    assert starlette.received == []  # the upstream never took the part for a whole request
    assert (pool.open_connections, pool.idle_connections) == (0, 0)


def test_limits_client_that_does_not_read_is_dropped(start: Start, keys: Keys) -> None:
    """A client that leaves a large response unread for ``send_timeout`` is disconnected (slow read).

    Defence: ``Forwarder._send``; without it the request, and its upstream
    connection, would wait for the client for ever.
    """
    front = start(send_timeout=0.3)
    size = 48 * 1024 * 1024
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", front.port))
        target = b"/v1/services/tiles/acme/era5/main/_big/%d" % size
        sock.sendall(request_bytes(target, [(b"Authorization", keys.reader)]))
        deadline = time.monotonic() + 5
        while front.app.forwarder.errors["client_stalled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        received = len(read_all(sock))
    print(f"slow reader: disconnected after {received // 1024} KiB of {size // 1024} KiB")
    assert front.app.forwarder.errors["client_stalled"] == 1
    assert received < size


# -- the command line ---------------------------------------------------------------------


def test_limits_fluxauth_serve_applies_them(tmp_path: Path, store_path: str, keys: Keys) -> None:
    """``fluxauth serve`` runs the limited protocol with the settings' limits and the redacting log format."""
    port = free_port()
    env = {
        **os.environ,
        "FLUXAUTH_STORE": store_path,
        "FLUXAUTH_ARGON2_PROFILE": "cheapest",
        "FLUXAUTH_MAX_HEADER_BYTES": "4096",
        "FLUXAUTH_CLIENT_HEADER_TIMEOUT": "0.3",
        "FLUXAUTH_UPSTREAM": "http://svc:upstream-password-123@127.0.0.1:9",
        "FLUXAUTH_LOG_LEVEL": "debug",
    }
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "fluxauth", "serve", "--port", str(port)]
    with running_process(command, port, log, env=env):
        big = request_bytes(ECHO, [(b"X-Big", b"a" * 5000)])
        assert send_raw(port, big).status == 431
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET " + ECHO + b" HTTP/1.1\r\n")
            assert read_all(sock).startswith(b"HTTP/1.1 408")
    output = log.read_text()
    assert "fluxauth started: upstream http://***@127.0.0.1:9" in output
    assert "upstream-password-123" not in output
