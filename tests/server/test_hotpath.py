"""The hot path end to end: ``fluxauth serve``'s protocol, a real upstream, cached credentials.

Each test warms the credential with one request (verified by the ASGI path),
then checks that what follows is answered without the app
(``FluxAuthApp.hot_path``) and exactly as the ASGI path would answer it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.demo.upstream import big_body_sha256
from fluxauth.manage.admin import Admin
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import Proxy, ProxyFactory, basic, http
from tests.support.clients import wrong_secret
from tests.support.readers import basic_value, read_all
from tests.support.servers import ServerThread

TILE = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/1/0/0.png"
ECHO = "/v1/services/tiles/acme/era5/main/_echo/x?variables=t2m"


@pytest.fixture
def token(token: str, admin: Admin) -> str:
    """conftest's org and read key (``make_acme``), its WMS made public."""
    admin.enable_service("acme", "wms", is_public=True)
    return token


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, settings: Settings) -> Proxy:
    return proxy_factory(dataclasses.replace(settings, trusted_proxies=()))


def warm(proxy: Proxy, token: str, target: str = TILE) -> httpx.Response:
    """One request that verifies the credential (ASGI path) and leaves an idle upstream connection."""
    response = http.get(proxy.url + target, headers=basic("acme", token))
    assert response.status_code == 200
    assert proxy.app.hot_path["forward"] == 0
    return response


def test_splice_cached_request_skips_the_app_and_answers_the_same(proxy: Proxy, token: str) -> None:
    """A cached tile is relayed by the hot path, with the same status, body and headers as the ASGI path's."""
    first = warm(proxy, token)
    second = http.get(proxy.url + TILE, headers=basic("acme", token))
    assert proxy.app.hot_path["forward"] == 1
    assert (second.status_code, second.content) == (200, first.content)
    assert second.content.startswith(b"\x89PNG")
    assert second.headers["cache-control"] == first.headers["cache-control"] == "private, max-age=60"

    def shown(response: httpx.Response) -> list[tuple[str, str]]:
        return sorted((k, v) for k, v in response.headers.multi_items() if k != "date")

    assert shown(second) == shown(first)
    assert len(first.headers.get_list("date")) == len(second.headers.get_list("date")) == 1


def test_splice_sends_the_upstream_the_same_request(proxy: Proxy, token: str) -> None:
    """The upstream receives byte for byte the head the ASGI path sends: no credentials, fluxauth's identity."""
    headers = {**basic("acme", token), "X-Fluxauth-Org": "evil", "Accept": "image/png"}
    by_app = http.get(proxy.url + ECHO, headers=headers).json()
    by_hot_path = http.get(proxy.url + ECHO, headers=headers).json()
    assert proxy.app.hot_path["forward"] == 1
    assert by_hot_path == by_app
    received = dict(by_hot_path["headers"])
    assert "authorization" not in received
    assert received["x-fluxauth-org"] == "acme"
    assert received["x-fluxauth-principal"] == "maps@acme"
    assert by_hot_path["query_string"] == "variables=t2m"


def test_splice_head_request_has_the_length_and_no_body(proxy: Proxy, token: str) -> None:
    """HEAD on the hot path: the upstream's Content-Length, no body, and the connection stays usable."""
    full = warm(proxy, token)
    with httpx.Client(base_url=proxy.url, headers=basic("acme", token)) as client:
        head = client.head(TILE)
        again = client.get(TILE)
    assert proxy.app.hot_path["forward"] == 2
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(full.content))
    assert head.content == b""
    assert again.content == full.content


def test_splice_public_service_is_relayed_anonymously(proxy: Proxy, token: str) -> None:
    """A public service needs no credentials, and the hot path forwards it as ``anonymous``."""
    target = "/v1/services/wms/acme/gfs/main/_echo/wms"
    assert http.get(proxy.url + target).status_code == 200  # opens the upstream connection
    received = dict(http.get(proxy.url + target).json()["headers"])
    assert proxy.app.hot_path["forward"] == 1
    assert received["x-fluxauth-principal"] == "anonymous"
    assert "x-fluxauth-org" not in received


def test_splice_refusals_are_left_to_the_app(proxy: Proxy, token: str) -> None:
    """Wrong secrets, missing credentials and bad paths are answered by the app, as before."""
    warm(proxy, token)
    assert http.get(proxy.url + TILE).status_code == 401
    assert http.get(proxy.url + TILE, headers=basic("acme", wrong_secret(token))).status_code == 401
    assert http.get(proxy.url + "/v1/services/tiles/acme/era5/main/a/%2e%2e/b").status_code == 400
    assert http.get(proxy.url + "/v1/services/tiles/nobody/era5/main/x").status_code == 404
    assert proxy.app.hot_path["forward"] == 0


def test_splice_big_response_streams_whole(proxy: Proxy, token: str) -> None:
    """Megabytes through the hot path arrive whole (the upstream paused and resumed as the client reads)."""
    size = 8 * 1024 * 1024
    target = f"/v1/services/tiles/acme/era5/main/_big/{size}"
    warm(proxy, token)
    with http.stream("GET", proxy.url + target, headers=basic("acme", token)) as response:
        digest = hashlib.sha256()
        for chunk in response.iter_bytes():
            digest.update(chunk)
            time.sleep(0.0005)  # a reader slower than loopback
    assert proxy.app.hot_path["forward"] == 1
    assert digest.hexdigest() == big_body_sha256(size)


def test_splice_client_that_stops_reading_is_dropped(
    proxy_factory: ProxyFactory, settings: Settings, token: str
) -> None:
    """A client that leaves a hot-path response unread for ``send_timeout`` is disconnected, the upstream too."""
    proxy = proxy_factory(dataclasses.replace(settings, send_timeout=0.3))
    warm(proxy, token)
    size = 48 * 1024 * 1024
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", proxy.server.port))
        head = f"GET /v1/services/tiles/acme/era5/main/_big/{size} HTTP/1.1\r\nHost: x\r\n"
        sock.sendall(head.encode() + b"Authorization: " + basic_value("acme", token) + b"\r\n\r\n")
        deadline = time.monotonic() + 5
        while proxy.app.forwarder.errors["client_stalled"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        received = len(read_all(sock))
    assert proxy.app.hot_path["forward"] == 1
    assert proxy.app.forwarder.errors["client_stalled"] == 1
    assert received < size
    assert proxy.app.forwarder.pool.idle_connections == 0  # the half-read upstream connection was closed


def test_splice_client_gone_mid_response_closes_the_upstream_connection(proxy: Proxy, token: str) -> None:
    """A client that hangs up mid-body takes the upstream connection with it: its rest would be misread."""
    warm(proxy, token)
    pool = proxy.app.forwarder.pool
    with socket.create_connection(("127.0.0.1", proxy.server.port)) as sock:
        sock.sendall(
            b"GET /v1/services/tiles/acme/era5/main/_big/33554432 HTTP/1.1\r\nHost: x\r\nAuthorization: "
            + basic_value("acme", token)
            + b"\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    deadline = time.monotonic() + 5
    while pool.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.app.hot_path["forward"] == 1
    assert (pool.open_connections, pool.idle_connections) == (0, 0)


def test_splice_pipelined_requests_are_answered_in_order(proxy: Proxy, token: str) -> None:
    """Requests pipelined on one connection get their answers in order, whichever path serves them."""
    warm(proxy, token)
    auth = b"Authorization: " + basic_value("acme", token) + b"\r\n"
    requests = b"".join(
        b"GET /v1/services/tiles/acme/era5/main/_echo/%d HTTP/1.1\r\nHost: x\r\n%s\r\n" % (n, auth) for n in range(5)
    )
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
        last = b"GET /v1/services/tiles/acme/era5/main/_echo/last HTTP/1.1\r\nHost: x\r\n"
        sock.sendall(requests + last + auth + b"Connection: close\r\n\r\n")
        data = read_all(sock)
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in _responses(data)]
    assert [body["raw_path"].rsplit("/", 1)[1] for body in bodies] == ["0", "1", "2", "3", "4", "last"]
    assert proxy.app.hot_path["forward"] >= 1


def _responses(data: bytes) -> list[bytes]:
    """Split back-to-back responses with Content-Length."""
    parts = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        length_line = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        length = int(length_line.split(b":")[1])
        parts.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return parts


class _Chunked:
    """An upstream whose answers have no length: uvicorn sends them chunked."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for part in (b"tile ", b"in ", b"pieces"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.001)
        await send({"type": "http.response.body", "body": b""})


def test_splice_chunked_upstream_is_chunked_to_the_client(
    proxy_factory: ProxyFactory, settings: Settings, token: str
) -> None:
    """An upstream answer without a length reaches the client chunked, and whole."""
    with ServerThread(_Chunked()) as chunked:
        proxy = proxy_factory(dataclasses.replace(settings, upstream=chunked.url))
        warm(proxy, token)
        response = http.get(proxy.url + TILE, headers=basic("acme", token))
    assert proxy.app.hot_path["forward"] == 1
    assert response.content == b"tile in pieces"
    assert response.headers["transfer-encoding"] == "chunked"


def test_splice_slow_upstream_is_504(proxy_factory: ProxyFactory, settings: Settings, token: str) -> None:
    """An upstream silent for ``upstream_read_timeout`` gets the client a 504 from the hot path too."""
    proxy = proxy_factory(dataclasses.replace(settings, upstream_read_timeout=0.2))
    warm(proxy, token)
    response = http.get(proxy.url + "/v1/services/tiles/acme/era5/main/_slow/2000", headers=basic("acme", token))
    assert proxy.app.hot_path["forward"] == 1
    assert response.status_code == 504
    assert response.json()["error"] == "upstream_timeout"
    assert proxy.app.forwarder.errors["timeout"] == 1


class _ClosesIdle:
    """A raw upstream that answers once per connection, then drops it unanswered on the next request.

    The race every keep-alive client meets: the upstream closes an idle
    connection just as a request goes out on it.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 4\r\n\r\ntile")
            conn.recv(65536)  # the next request: dropped

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def closes_idle() -> Iterator[_ClosesIdle]:
    upstream = _ClosesIdle()
    yield upstream
    upstream.close()


def test_splice_stale_upstream_connection_goes_back_to_the_app(
    proxy_factory: ProxyFactory, settings: Settings, token: str, closes_idle: _ClosesIdle
) -> None:
    """A reused connection the upstream dropped unanswered: the app sends the request again; the client sees 200."""
    proxy = proxy_factory(dataclasses.replace(settings, upstream=f"http://127.0.0.1:{closes_idle.port}"))
    warm(proxy, token)
    response = http.get(proxy.url + TILE, headers=basic("acme", token))
    assert (response.status_code, response.content) == (200, b"tile")
    assert proxy.app.hot_path["handed_back"] == 1
    assert proxy.app.hot_path["forward"] == 0
    assert closes_idle.connections == 2
    assert proxy.app.outcomes[200] == 2


def test_splice_forward_auth_allowed_from_memory(proxy_factory: ProxyFactory, settings: Settings, token: str) -> None:
    """forward-auth's 200 for a cached credential comes from the hot path, with the same headers as the app's."""
    proxy = proxy_factory(dataclasses.replace(settings, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),)))
    asked = {**basic("acme", token), "X-Original-URI": TILE, "X-Original-Method": "GET"}
    first = http.get(proxy.url + "/_fluxauth/auth", headers=asked)
    second = http.get(proxy.url + "/_fluxauth/auth", headers=asked)
    assert first.status_code == second.status_code == 200
    assert proxy.app.hot_path["auth"] == 1
    for name in ("x-fluxauth-org", "x-fluxauth-principal", "content-length", "cache-control", "content-type"):
        assert second.headers[name] == first.headers[name]
    assert second.headers["x-fluxauth-principal"] == "maps@acme"
    # Refusals stay with the app: no credentials, or an untrusted peer naming the target.
    assert http.get(proxy.url + "/_fluxauth/auth", headers={**asked, "Authorization": ""}).status_code == 401
    assert proxy.app.hot_path["auth"] == 1


def test_splice_not_taken_while_an_access_log_is_written(settings: Settings, clock: FakeClock, token: str) -> None:
    """With uvicorn's access log on, every request goes through the app, which the log is written from."""
    app = FluxAuthApp(settings, SQLiteStore(settings.store), clock=clock)
    with ServerThread(app, access_log=True, log_level="info") as server:
        for _ in range(3):
            assert http.get(server.url + TILE, headers=basic("acme", token)).status_code == 200
    assert app.hot_path["forward"] == 0
    assert app.outcomes[200] == 3


@pytest.mark.parametrize(("version", "connection"), [(b"HTTP/1.1", b"Connection: close\r\n"), (b"HTTP/1.0", b"")])
def test_splice_connection_close_is_honoured(proxy: Proxy, token: str, version: bytes, connection: bytes) -> None:
    """A client that will not keep the connection (``Connection: close``, HTTP/1.0) gets the answer, then EOF."""
    warm(proxy, token)
    request = b"GET " + TILE.encode() + b" " + version + b"\r\nHost: x\r\n" + connection
    request += b"Authorization: " + basic_value("acme", token) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10) as sock:
        sock.sendall(request)
        reply = read_all(sock)  # returns only because the server closes
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"\r\nconnection: close" in head.lower()
    assert body.startswith(b"\x89PNG")
    assert proxy.app.hot_path["forward"] == 1
