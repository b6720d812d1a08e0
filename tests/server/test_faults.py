"""fluxauth's own bugs never pass for a client's or an upstream's fault: a fault injected at each point.

Before (issue 11, item 4): a bug in the hot path ran inside httptools'
parser callback, and the client got ``400 Invalid HTTP request received``
with nothing logged; a bug in the response-header filter on the hot path was
a 502, counted as the upstream's protocol error. Now parser callbacks only
collect; the work runs after the parser returns, and an unexpected exception
is logged with its traceback and answered 500 — or, on the hot path before
anything was sent, the request goes to the ASGI app instead.
"""

from __future__ import annotations

import logging
import socket
import sys
from types import FrameType
from typing import Any

import pytest

import fluxauth.proxy.forward
from fluxauth.server.hotpath import HotPath, Splice
from fluxauth.server.protocol import LimitedHttpToolsProtocol
from fluxauth.upstream.framing import ResponseFraming
from tests.conftest import ProxyFactory
from tests.support.readers import basic_value, read_all
from tests.support.servers import Proxy

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

TILE = b"/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/1/0/0.png"


class Injected(Exception):
    """The fault a test puts into fluxauth's own code."""


def boom(*args: object, **kwargs: object) -> None:
    raise Injected("injected fault")


@pytest.fixture
def proxy(proxy_factory: ProxyFactory) -> Proxy:
    return proxy_factory(trusted_proxies=())


@pytest.fixture
def asgi_only(proxy_factory: ProxyFactory) -> Proxy:
    """fluxauth with the hot path off (an access log is written from the ASGI path)."""
    return proxy_factory(trusted_proxies=(), asgi_only=True)


def get(proxy: Proxy, token: str) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
        sock.sendall(b"GET " + TILE + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: ")
        sock.sendall(basic_value("acme", token) + b"\r\n\r\n")
        return read_all(sock)


# httptools calls these on the protocol from inside feed_data.
PARSER_CALLBACKS = frozenset(
    {"on_message_begin", "on_url", "on_header", "on_headers_complete", "on_body", "on_message_complete"}
)


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def without_date(reply: bytes) -> bytes:
    return b"\r\n".join(line for line in reply.split(b"\r\n") if not line.lower().startswith(b"date:"))


def traced(caplog: pytest.LogCaptureFixture, message: str) -> logging.LogRecord:
    """The one log record with ``message`` and the injected fault's traceback."""
    records = [r for r in caplog.records if message in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    record = records[0]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], Injected)
    assert record.levelno == logging.ERROR
    return record


def warm(proxy: Proxy, token: str) -> None:
    """The credential verified and an upstream connection idle: the next request takes the hot path."""
    assert status_of(get(proxy, token)) == 200
    assert proxy.app.hot_path["forward"] == 0


def test_fault_the_hot_path_runs_after_the_parser_returns(
    proxy: Proxy, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path is entered once ``feed_data`` has returned, never from a parser callback beneath it.

    Before (issue 11, item 4), the hot path ran inside ``on_headers_complete``,
    so an exception of its own came out of httptools as the client's malformed
    request. Looked at for a request alone and for two pipelined in one read.
    """
    warm(proxy, token)
    callers: list[set[str]] = []
    serve = HotPath.serve

    def watched(hot: HotPath, protocol: Any, cycle: Any) -> bool:
        frame: FrameType | None = sys._getframe(1)
        names = set()
        while frame is not None:
            names.add(frame.f_code.co_name)
            frame = frame.f_back
        callers.append(names)
        return serve(hot, protocol, cycle)

    monkeypatch.setattr(HotPath, "serve", watched)
    assert status_of(get(proxy, token)) == 200
    one = b"GET " + TILE + b" HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic_value("acme", token) + b"\r\n"
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
        sock.sendall(one + b"\r\n" + one + b"Connection: close\r\n\r\n")
        assert read_all(sock).count(b"HTTP/1.1 200") == 2
    assert len(callers) == 3
    assert proxy.app.hot_path["forward"] >= 2
    assert [names & PARSER_CALLBACKS for names in callers] == [set()] * 3


def test_fault_in_the_hot_path_decision_goes_to_the_asgi_app(
    proxy: Proxy, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in the hot path's decision, before anything was sent: logged with its traceback, and the app answers."""
    warm(proxy, token)
    proxy.app.gate.decide_now = boom  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        reply = get(proxy, token)
    assert status_of(reply) == 200
    assert reply.partition(b"\r\n\r\n")[2].startswith(b"\x89PNG")
    traced(caplog, "the hot path failed on a request; the ASGI app answers it")
    assert proxy.app.hot_path["fault"] == 1
    assert proxy.app.hot_path["forward"] == 0
    assert proxy.app.forwarder.pool.open_connections <= 1  # the connection it took is not lost


@pytest.mark.parametrize(
    ("module", "name"),
    [(fluxauth.proxy.forward, "upstream_response_headers"), (Splice, "upstream_body")],
    ids=["response-header-filter", "body-relay"],
)
def test_fault_relaying_on_the_hot_path_is_500_not_502(
    proxy: Proxy,
    token: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    module: object,
    name: str,
) -> None:
    """A bug relaying the upstream's answer on the hot path: 500 and the traceback, not the upstream's 502."""
    warm(proxy, token)
    monkeypatch.setattr(module, name, boom)
    with caplog.at_level(logging.ERROR):
        reply = get(proxy, token)
    assert status_of(reply) == 500, reply
    assert reply.endswith(b"Internal Server Error")
    traced(caplog, "fluxauth failed relaying an upstream response on the hot path")
    assert proxy.app.hot_path["forward"] == 1
    assert proxy.app.forwarder.errors["protocol"] == 0
    pool = proxy.app.forwarder.pool
    assert (pool.open_connections, pool.idle_connections) == (0, 0)  # the half-relayed connection was closed


def test_fault_in_the_response_framing_is_500_on_both_paths(
    proxy: Proxy,
    asgi_only: Proxy,
    token: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in the upstream client's own parsing is fluxauth's: 500 on both paths, the same bytes, a traceback."""
    warm(proxy, token)
    assert status_of(get(asgi_only, token)) == 200
    monkeypatch.setattr(ResponseFraming, "feed", boom)
    with caplog.at_level(logging.ERROR):
        hot = get(proxy, token)
        asgi = get(asgi_only, token)
    assert status_of(hot) == status_of(asgi) == 500
    assert without_date(hot) == without_date(asgi)
    traced(caplog, "fluxauth failed relaying an upstream response on the hot path")
    traced(caplog, "Exception in ASGI application")
    assert proxy.app.forwarder.errors["protocol"] == asgi_only.app.forwarder.errors["protocol"] == 0


def test_fault_in_the_asgi_relay_is_500(
    asgi_only: Proxy, token: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the ASGI path's relay: the server's 500, with the traceback."""
    monkeypatch.setattr(fluxauth.proxy.forward, "upstream_response_headers", boom)
    with caplog.at_level(logging.ERROR):
        reply = get(asgi_only, token)
    assert status_of(reply) == 500
    traced(caplog, "Exception in ASGI application")


def test_fault_in_a_parser_callback_is_500_not_the_clients_400(
    proxy: Proxy, token: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a request parser callback is logged and answered 500; uvicorn would answer 400, with no trace."""
    monkeypatch.setattr(LimitedHttpToolsProtocol, "on_message_complete", boom)
    with caplog.at_level(logging.WARNING):
        reply = get(proxy, token)
    assert status_of(reply) == 500, reply
    assert b"connection: close" in reply
    traced(caplog, "fluxauth failed reading a request")
    assert not [r for r in caplog.records if "Invalid HTTP request" in r.getMessage()]
    # What the client sent wrong is still the client's 400.
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
        assert read_all(sock).startswith(b"HTTP/1.1 400")
