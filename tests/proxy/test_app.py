"""The standalone proxy end to end: real uvicorn, real upstream, real store, injected clock."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin, IssuedToken
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import Proxy, ProxyFactory, basic
from tests.support.load import burst
from tests.support.servers import ServerThread, free_port

TILE = "/v1/services/tiles/acme/era5/main/surface/tiles/WebMercatorQuad/3/2/4"
ECHO = "/v1/services/tiles/acme/era5/main/_echo/x"


@dataclasses.dataclass
class World:
    reader: IssuedToken
    writer: IssuedToken
    granted: IssuedToken
    outsider: IssuedToken


@pytest.fixture
def world(admin: Admin) -> World:
    admin.create_org("acme")
    admin.create_org("beta")
    admin.enable_service("acme", "tiles")
    admin.enable_service("acme", "wms")
    admin.enable_service("beta", "tiles", is_public=True)
    return World(
        reader=admin.create_key("acme", "reader", permissions=["read"]),
        writer=admin.create_key("acme", "writer", permissions=["write"]),
        granted=admin.create_key("acme", "granted", repo_grants={"era5": "read"}),
        outsider=admin.create_key("beta", "viewer", permissions=["read"]),
    )


@pytest.fixture
def client(proxy: Proxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        yield client


def auth(issued: IssuedToken, username: str | None = None) -> dict[str, str]:
    return basic(username or issued.key.org, issued.token)


def test_app_tile_with_key_is_forwarded(world: World, client: httpx.Client) -> None:
    """A reader's key fetches a real PNG tile through the proxy."""
    response = client.get(TILE, headers=auth(world.reader))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("path", "who", "username", "status"),
    [
        (TILE, None, None, 401),
        (TILE, "reader", None, 200),
        (TILE, "granted", None, 200),
        ("/v1/services/tiles/acme/gfs/main/tiles/0/0/0", "granted", None, 403),
        (TILE, "outsider", None, 403),
        (TILE, "reader", "beta", 401),  # username is not the key's org
        ("/v1/services/edr/acme/era5/main/edr/position", "reader", None, 404),  # protocol not enabled
        ("/v1/services/tiles/nobody/era5/main/tiles/0/0/0", "reader", None, 404),
        ("/v1/services/nope/acme/era5/main/x", "reader", None, 404),
        ("/elsewhere", "reader", None, 404),
        ("/v1/services/tiles/acme/era5/main/%2e%2e/%2e%2e/x", "reader", None, 400),
        ("/v1/services/tiles/acme/era5/main/a%2Fb", "reader", None, 400),
        ("/v1/services/tiles/beta/any/main/tiles/0/0/0", None, None, 200),  # public service
    ],
)
def test_app_decision_over_the_wire(
    world: World, client: httpx.Client, path: str, who: str | None, username: str | None, status: int
) -> None:
    """The decision table's rows, as a client sees them."""
    headers = auth(getattr(world, who), username) if who else {}
    response = client.get(path, headers=headers)
    assert response.status_code == status, response.text
    if status >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}


def test_app_401_carries_basic_challenge(world: World, client: httpx.Client) -> None:
    """A 401 asks for Basic credentials in the realm fluxauth, UTF-8."""
    response = client.get(TILE)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="fluxauth", charset="UTF-8"'


def test_app_wrong_secret_is_401_and_never_echoed(world: World, client: httpx.Client) -> None:
    """A wrong secret for a real token id is refused, and the body does not repeat it."""
    wrong = world.reader.token[:-6] + "AAAAAA"
    response = client.get(TILE, headers=basic("acme", wrong))
    assert response.status_code == 401
    assert wrong not in response.text
    assert world.reader.token_id not in response.text


def test_app_upstream_receives_identity_not_credentials(world: World, client: httpx.Client) -> None:
    """The upstream sees X-Fluxauth-*, X-Forwarded-*, and no Authorization or spoofed identity."""
    response = client.get(
        ECHO + "?a=1&b=%2F",
        headers={
            **auth(world.reader),
            "X-Fluxauth-Org": "evil",
            "X-Fluxauth-Principal": "admin@evil",
            "X-Forwarded-For": "6.6.6.6",
            "Connection": "keep-alive, X-Custom",
            "X-Custom": "dropped because Connection names it",
            "X-Kept": "yes",
        },
    )
    assert response.status_code == 200
    seen = response.json()
    headers = {}
    for name, value in seen["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    assert "authorization" not in headers
    assert headers["x-fluxauth-org"] == ["acme"]
    assert headers["x-fluxauth-principal"] == ["reader@acme"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"][0].startswith("127.0.0.1:")
    assert "x-custom" not in headers
    assert headers["x-kept"] == ["yes"]
    assert seen["raw_path"] == ECHO
    assert seen["query_string"] == "a=1&b=%2F"


def test_app_streams_large_bodies_both_ways(world: World, client: httpx.Client) -> None:
    """A 12 MiB upload and an 8 MiB download pass through intact."""
    upload = hashlib.sha256(b"seed").digest() * (12 * 1024 * 1024 // 32)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(upload), 1 << 20):
            yield upload[start : start + (1 << 20)]

    sent = client.put(ECHO, content=chunks(), headers=auth(world.writer))
    assert sent.status_code == 200
    assert sent.json()["body_sha256"] == hashlib.sha256(upload).hexdigest()
    assert sent.json()["body_length"] == len(upload)

    size = 8 * 1024 * 1024
    with client.stream("GET", f"/v1/services/tiles/acme/era5/main/_big/{size}", headers=auth(world.reader)) as got:
        digest = hashlib.sha256()
        for chunk in got.iter_raw():
            digest.update(chunk)
        assert got.status_code == 200
        assert digest.hexdigest() == got.headers["x-body-sha256"]


def test_app_write_needs_write_permission(world: World, client: httpx.Client) -> None:
    """PUT is a write: a reader is refused, a writer is forwarded."""
    assert client.put(ECHO, content=b"x", headers=auth(world.reader)).status_code == 403
    assert client.put(ECHO, content=b"x", headers=auth(world.writer)).status_code == 200


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"Bearer abc",
        b"Basic",
        b"Basic !!!notbase64",
        b"Basic " + base64.b64encode(b"no-colon"),
        b"Basic " + base64.b64encode(b"\xff\xfe:\xff"),
        b"Basic " + base64.b64encode(b"acme:not-a-token"),
        b"Basic " + b"A" * 16384,
    ],
)
def test_app_malformed_authorization_is_401_never_500(world: World, proxy: Proxy, value: bytes) -> None:
    """Each malformed Authorization header gets 401 (or 400), never a 500."""
    status = _raw_status(proxy.server.port, [(b"Authorization", value)])
    assert status in (400, 401)


def test_app_two_authorization_headers_are_400(world: World, proxy: Proxy) -> None:
    """Two Authorization headers are ambiguous: 400."""
    one = b"Basic " + base64.b64encode(f"acme:{world.reader.token}".encode())
    assert _raw_status(proxy.server.port, [(b"Authorization", one), (b"Authorization", one)]) == 400


def _raw_status(port: int, headers: list[tuple[bytes, bytes]], path: bytes = TILE.encode()) -> int:
    """Send a request byte for byte (httpx would normalize the headers) and return the status."""
    request = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    request += b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


def test_app_key_expiry_follows_the_injected_clock(world: World, proxy: Proxy, client: httpx.Client) -> None:
    """A cached key stops working the moment it expires, without waiting for the cache TTL."""
    assert client.get(TILE, headers=auth(world.reader)).status_code == 200
    proxy.clock.advance(365 * 86400 - 1)
    assert client.get(TILE, headers=auth(world.reader)).status_code == 200
    proxy.clock.advance(2)
    response = client.get(TILE, headers=auth(world.reader))
    assert response.status_code == 401
    assert response.json()["detail"] == "the key has expired"


def test_app_rotation_grace_old_and_new_tokens(world: World, admin: Admin, proxy: Proxy, client: httpx.Client) -> None:
    """After rotation both tokens work during the grace period; the old one never after it."""
    old = world.reader
    assert client.get(TILE, headers=auth(old)).status_code == 200
    new = admin.rotate_key("acme", "reader", grace=2 * 3600)
    proxy.server.call(proxy.app.gate.poll_changes())
    assert client.get(TILE, headers=auth(old)).status_code == 200
    assert client.get(TILE, headers=auth(new)).status_code == 200
    proxy.clock.advance(2 * 3600 - 1)
    assert client.get(TILE, headers=auth(old)).status_code == 200
    proxy.clock.advance(1)
    refused = client.get(TILE, headers=auth(old))
    assert refused.status_code == 401
    assert refused.json()["detail"] == "the token has been rotated out or revoked"
    assert client.get(TILE, headers=auth(new)).status_code == 200


def test_app_deleted_key_is_refused_within_a_second(world: World, store_path: str, client: httpx.Client) -> None:
    """A key deleted from another process is refused by the running server within 1 s (change feed)."""
    assert client.get(TILE, headers=auth(world.reader)).status_code == 200
    other = SQLiteStore(store_path)  # the command line's own connection
    Admin(other, Settings(store=store_path, argon2_profile="cheapest")).delete_key("acme", "reader")
    other.close()
    deleted_at = time.monotonic()
    while client.get(TILE, headers=auth(world.reader)).status_code == 200:
        assert time.monotonic() - deleted_at < 1.5, "still allowed 1.5 s after deletion"
        time.sleep(0.02)
    print(f"deleted key refused after {time.monotonic() - deleted_at:.3f} s")


def test_app_permission_and_visibility_changes_apply(
    world: World, admin: Admin, proxy: Proxy, client: httpx.Client
) -> None:
    """Visibility and public flags changed by an operator reach the running server."""
    gfs = "/v1/services/tiles/acme/gfs/main/tiles/0/0/0"
    assert client.get(gfs, headers=auth(world.outsider)).status_code == 403
    admin.set_visibility("acme", "gfs", "authenticated")
    proxy.server.call(proxy.app.gate.poll_changes())
    assert client.get(gfs, headers=auth(world.outsider)).status_code == 200
    assert client.get(gfs).status_code == 401
    admin.set_visibility("acme", "gfs", "public")
    proxy.server.call(proxy.app.gate.poll_changes())
    assert client.get(gfs).status_code == 200
    admin.disable_service("acme", "tiles")
    proxy.server.call(proxy.app.gate.poll_changes())
    assert client.get(gfs).status_code == 404


def test_app_concurrent_new_token_is_verified_once(world: World, proxy: Proxy) -> None:
    """200 concurrent requests with a never-seen token cause exactly one argon2 verification."""

    assert proxy.app.gate.stats.verifications == 0
    statuses = asyncio.run(burst(proxy.url + TILE, headers=auth(world.reader), count=200, concurrency=200))
    assert statuses == [200] * 200
    assert proxy.app.gate.stats.verifications == 1


def test_app_cors_preflight_is_answered_not_forwarded(world: World, client: httpx.Client) -> None:
    """A MapLibre preflight from an allowed origin gets 204 with Authorization allowed."""
    response = client.options(
        TILE,
        headers={
            "Origin": "https://maps.example.org",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "https://maps.example.org"
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert "GET" in response.headers["access-control-allow-methods"]
    actual = client.get(TILE, headers={**auth(world.reader), "Origin": "https://maps.example.org"})
    assert actual.headers["access-control-allow-origin"] == "https://maps.example.org"
    assert "Origin" in actual.headers["vary"]
    refused = client.get(TILE, headers={"Origin": "https://maps.example.org"})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://maps.example.org"


def test_app_cors_preflight_from_other_origin_is_refused(world: World, client: httpx.Client) -> None:
    """A preflight from an origin that is not allowed is refused without CORS headers."""
    response = client.options(ECHO, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


def test_app_upstream_refused_is_502(world: World, proxy_factory: ProxyFactory, settings: Settings) -> None:
    """An upstream that refuses connections gives 502 quickly."""
    proxy = proxy_factory(dataclasses.replace(settings, upstream=f"http://127.0.0.1:{free_port()}"))
    with httpx.Client(base_url=proxy.url) as client:
        response = client.get(TILE, headers=auth(world.reader))
    assert response.status_code == 502
    assert response.json()["error"] == "bad_gateway"


def test_app_upstream_too_slow_is_504(world: World, proxy_factory: ProxyFactory, settings: Settings) -> None:
    """An upstream slower than the read timeout gives 504."""
    proxy = proxy_factory(dataclasses.replace(settings, upstream_read_timeout=0.2))
    with httpx.Client(base_url=proxy.url) as client:
        response = client.get("/v1/services/tiles/acme/era5/main/_slow/3000", headers=auth(world.reader))
    assert response.status_code == 504


def test_app_per_protocol_upstream(
    world: World, proxy_factory: ProxyFactory, settings: Settings, upstream: ServerThread
) -> None:
    """A protocol with its own upstream goes there; the others to the default."""
    proxy = proxy_factory(
        dataclasses.replace(settings, upstream=f"http://127.0.0.1:{free_port()}", upstreams={"tiles": upstream.url})
    )
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get(TILE, headers=auth(world.reader)).status_code == 200
        wms = client.get("/v1/services/wms/acme/gfs/main/wms?service=WMS", headers=auth(world.reader))
        assert wms.status_code == 502


def test_app_health_and_readiness(proxy: Proxy, client: httpx.Client) -> None:
    """healthz answers; readyz says whether the store answers."""
    assert client.get("/_fluxauth/healthz").json() == {"status": "ok"}
    ready = client.get("/_fluxauth/readyz")
    assert ready.status_code == 200
    assert ready.json()["store"] is True


def test_app_readyz_503_when_store_is_gone(store_path: str, proxy_factory: ProxyFactory, settings: Settings) -> None:
    """readyz answers 503 when the store cannot be opened."""
    broken = dataclasses.replace(settings, store=store_path)
    proxy = proxy_factory(broken)
    proxy.app.gate.store.store._backend.path = "/nonexistent/dir/store.db"  # type: ignore[union-attr, attr-defined]
    proxy.app.gate.store.store.close()  # type: ignore[union-attr]
    with httpx.Client(base_url=proxy.url) as client:
        assert client.get("/_fluxauth/readyz").status_code == 503


def test_app_last_used_is_recorded_in_batches(
    world: World, proxy: Proxy, client: httpx.Client, store: SQLiteStore
) -> None:
    """Requests do not write the store; a flush records last_used_at once."""
    changes_before = store.last_change()
    for _ in range(5):
        assert client.get(TILE, headers=auth(world.reader)).status_code == 200
    assert store.get_key("acme", "reader").last_used_at is None
    proxy.server.call(proxy.app.gate.flush_last_used())
    assert store.get_key("acme", "reader").last_used_at == proxy.clock()
    assert store.last_change() == changes_before


def test_app_metrics_count_decisions(world: World, client: httpx.Client) -> None:
    """The metrics endpoint counts decisions and verifications."""
    client.get(TILE, headers=auth(world.reader))
    client.get(TILE)
    text = client.get("/_fluxauth/metrics").text
    assert 'fluxauth_decisions_total{status="200"} 1.0' in text
    assert 'fluxauth_decisions_total{status="401"} 1.0' in text
    assert "fluxauth_verifications_total 1.0" in text
    assert world.reader.token not in text
    assert json.dumps(world.reader.token_id) not in text


def test_app_authenticated_answers_are_private(world: World, client: httpx.Client) -> None:
    """An upstream's ``Cache-Control: public`` becomes ``private`` for a key's request; public reads keep it."""
    keyed = client.get(TILE, headers=auth(world.reader))
    assert keyed.headers["cache-control"] == "private, max-age=60"
    anonymous = client.get("/v1/services/tiles/beta/any/main/tiles/0/0/0")
    assert anonymous.status_code == 200
    assert anonymous.headers["cache-control"] == "public, max-age=60"
