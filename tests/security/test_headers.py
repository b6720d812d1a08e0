"""Header hygiene and request framing: a client can neither remove nor forge what fluxauth tells the upstream.

Real servers throughout: fluxauth as ``fluxauth serve`` runs it, a Starlette
upstream that reports every header it received, and a wsgiref (CGI-style)
upstream, where ``X_Fluxauth_Org`` and ``X-Fluxauth-Org`` are one and the
same ``HTTP_X_FLUXAUTH_ORG``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterator

import pytest

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.request import RequestHead, check_framing
from fluxauth.errors import BadRequest
from fluxauth.manage.admin import Admin
from fluxauth.proxy.middleware import FluxAuthMiddleware
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import ProxyFactory
from tests.support.readers import (
    RawResponse,
    StarletteReader,
    WsgiReader,
    basic_value,
    get_raw,
    request_bytes,
    send_raw,
    starlette_reader,
)
from tests.support.servers import Proxy, ServerThread, start_proxy

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

ERA5 = b"/v1/services/tiles/acme/era5/main/x"
PUB = b"/v1/services/tiles/acme/pub/main/x"
SECRET = b"/v1/services/tiles/acme/secret/main/x"


@dataclasses.dataclass
class Keys:
    reader: bytes  # Authorization value of a key that may read acme/era5
    writer: bytes  # ... and one that may write it


@pytest.fixture
def keys(admin: Admin) -> Keys:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    admin.set_visibility("acme", "pub", "public")
    reader = admin.create_key("acme", "reader", repo_grants={"era5": "read"}).token
    writer = admin.create_key("acme", "writer", repo_grants={"era5": "write"}).token
    return Keys(basic_value("acme", reader), basic_value("acme", writer))


@pytest.fixture(scope="module")
def starlette() -> Iterator[StarletteReader]:
    with StarletteReader() as reader:
        yield reader


@pytest.fixture(scope="module")
def wsgi() -> Iterator[WsgiReader]:
    with WsgiReader() as reader:
        yield reader


Start = Callable[..., Proxy]


@pytest.fixture
def start(proxy_factory: ProxyFactory, keys: Keys) -> Start:
    """fluxauth in front of ``upstream``, with the fixture's settings and ``changes``, the keys made first."""

    def run(upstream: str, **changes: object) -> Proxy:
        return proxy_factory(upstream=upstream, **changes)

    return run


def seen_headers(response: RawResponse) -> dict[str, list[str]]:
    """The headers the Starlette upstream received, by lower-case name."""
    assert response.status == 200, response.body
    headers: dict[str, list[str]] = {}
    for name, value in response.json()["headers"]:
        headers.setdefault(name, []).append(value)
    return headers


def cgi_headers(response: RawResponse) -> dict[str, str]:
    """The ``HTTP_*`` variables the wsgiref upstream built (``-`` and ``_`` folded together)."""
    assert response.status == 200, response.body
    return {name: values[0] for name, values in response.json()["headers"].items()}


# -- Connection cannot remove, clients cannot forge ------------------------------


def test_headers_connection_cannot_remove_what_fluxauth_adds(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """Naming fluxauth's headers in Connection (Traefik CVE-2021-32813, CVE-2024-45410) removes nothing fluxauth sets.

    Defence: ``Forwarder.request_headers`` drops what Connection names from the
    client's headers only, then sets X-Fluxauth-* and X-Forwarded-* itself.
    """
    front = start(starlette.url)
    connection = (
        b"keep-alive, X-Fluxauth-Org, X-Fluxauth-Principal, X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host"
    )
    headers = seen_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), (b"Connection", connection)]))
    assert headers["x-fluxauth-org"] == ["acme"]
    assert headers["x-fluxauth-principal"] == ["reader@acme"]
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == ["fluxauth.test"]
    assert "connection" not in headers or "x-fluxauth-org" not in headers["connection"][0].lower()


def test_headers_connection_cannot_strip_the_body_length(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """``Connection: Content-Length`` does not make the upstream see a write without its body.

    Defence: the forwarder sets Content-Length itself from the length
    ``check_framing`` accepted, whatever Connection names.
    """
    front = start(starlette.url)
    body = b"x" * 1000
    data = request_bytes(
        ERA5,
        [(b"Authorization", keys.writer), (b"Content-Length", b"1000"), (b"Connection", b"close, Content-Length")],
        method=b"PUT",
        body=body,
    )
    seen = send_raw(front.port, data).json()
    assert seen["body_length"] == 1000
    assert seen["body_sha256"] == hashlib.sha256(body).hexdigest()


SPELLINGS = [
    b"X-Fluxauth-Org",
    b"x-fluxauth-org",
    b"X-FLUXAUTH-ORG",
    b"X_Fluxauth_Org",
    b"x_fluxauth_org",
    b"X-Fluxauth_Org",
]


def test_headers_forged_identity_never_reaches_a_cgi_upstream(start: Start, wsgi: WsgiReader, keys: Keys) -> None:
    """A forged X-Fluxauth-Org, however spelled, is not what a CGI-style upstream reads.

    Defence: ``forward.dropped_header`` compares names with ``_`` read as
    ``-``. wsgiref, CGI, PHP and Rack fold both into ``HTTP_X_FLUXAUTH_ORG``
    and join duplicates with a comma: without it the upstream reads
    ``evil,acme``. nginx drops underscored headers by default for this reason.
    """
    front = start(wsgi.url)
    for name in SPELLINGS:
        forged = [(name, b"evil"), (name.replace(b"Org", b"Principal").replace(b"org", b"principal"), b"admin@evil")]
        signed_in = cgi_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), *forged]))
        assert signed_in["HTTP_X_FLUXAUTH_ORG"] == "acme", name
        assert signed_in["HTTP_X_FLUXAUTH_PRINCIPAL"] == "reader@acme", name
        anonymous = cgi_headers(get_raw(front.port, PUB, forged))
        assert "HTTP_X_FLUXAUTH_ORG" not in anonymous, name
        assert anonymous["HTTP_X_FLUXAUTH_PRINCIPAL"] == "anonymous", name


def test_headers_forwarded_family_from_an_untrusted_peer_is_replaced(
    start: Start, wsgi: WsgiReader, keys: Keys
) -> None:
    """X-Forwarded-*, RFC 7239 Forwarded and client-IP headers from a client are replaced or dropped.

    Defence: ``proxies.forwarded_headers`` believes only ``trusted_proxies``;
    ``forward._DROPPED_REQUEST`` drops Forwarded, X-Real-IP, True-Client-IP and
    the like, in any spelling.
    """
    front = start(wsgi.url)
    spoofed = [
        (b"X-Forwarded-For", b"6.6.6.6"),
        (b"X_Forwarded_For", b"7.7.7.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"evil.example"),
        (b"X-Forwarded-Port", b"443"),
        (b"X-Forwarded-Prefix", b"/admin"),
        (b"X-Forwarded-Server", b"evil"),
        (b"Forwarded", b"for=6.6.6.6;proto=https;host=evil.example"),
        (b"X-Real-IP", b"6.6.6.6"),
        (b"True-Client-IP", b"6.6.6.6"),
        (b"X-Client-IP", b"6.6.6.6"),
        (b"X-Cluster-Client-IP", b"6.6.6.6"),
    ]
    seen = cgi_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), *spoofed]))
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert seen["HTTP_X_FORWARDED_PROTO"] == "http"
    assert seen["HTTP_X_FORWARDED_HOST"] == "fluxauth.test"
    for name in ("FORWARDED", "X_REAL_IP", "TRUE_CLIENT_IP", "X_CLIENT_IP", "X_CLUSTER_CLIENT_IP"):
        assert f"HTTP_{name}" not in seen, name
    for name in ("X_FORWARDED_PORT", "X_FORWARDED_PREFIX", "X_FORWARDED_SERVER"):
        assert f"HTTP_{name}" not in seen, name


def test_headers_forwarded_family_from_a_trusted_proxy_is_kept(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """Behind a trusted proxy its X-Forwarded-For/Proto/Host are passed on, the peer appended."""
    front = start(starlette.url, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    sent = [
        (b"X-Forwarded-For", b"198.51.100.7"),
        (b"X-Forwarded-Proto", b"https"),
        (b"X-Forwarded-Host", b"maps.example"),
    ]
    headers = seen_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), *sent]))
    assert headers["x-forwarded-for"] == ["198.51.100.7, 127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["https"]
    assert headers["x-forwarded-host"] == ["maps.example"]


OVERRIDES = [
    (b"X-Original-URL", SECRET),
    (b"X-Rewrite-URL", SECRET),
    (b"X-Original-URI", SECRET),
    (b"X-Envoy-Original-Path", SECRET),
    (b"X-Forwarded-Uri", SECRET),
    (b"X-HTTP-Method-Override", b"DELETE"),
    (b"X-HTTP-Method", b"DELETE"),
    (b"X-Method-Override", b"DELETE"),
    (b"X_HTTP_Method_Override", b"DELETE"),
]


def test_headers_path_and_method_overrides_are_dropped(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """Headers that make frameworks serve another path (Symfony CVE-2018-14773) or method never reach the upstream.

    Defence: ``forward._DROPPED_REQUEST``: a GET decided as a read of acme/era5
    must not become a read of acme/secret or a DELETE upstream.
    """
    front = start(starlette.url)
    for header in OVERRIDES:
        headers = seen_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), header]))
        assert header[0].decode().lower().replace("_", "-") not in headers, header
        assert header[0].decode().lower() not in headers, header


def test_headers_h2c_upgrade_is_not_forwarded(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """An ``Upgrade: h2c`` request (h2c smuggling) reaches the upstream as plain HTTP/1.1, without the upgrade.

    Defence: hop-by-hop headers and those named in Connection are dropped.
    """
    front = start(starlette.url)
    upgrade = [
        (b"Connection", b"Upgrade, HTTP2-Settings"),
        (b"Upgrade", b"h2c"),
        (b"HTTP2-Settings", b"AAMAAABkAARAAAAAAAIAAAAA"),
    ]
    headers = seen_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), *upgrade]))
    for name in ("upgrade", "http2-settings"):
        assert name not in headers


# -- Authorization ------------------------------------------------------------------


def test_headers_two_authorization_headers_are_400_in_any_order(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """Two Authorization headers are ambiguous (servers disagree on which wins): 400, nothing forwarded."""
    front = start(starlette.url)
    before = starlette.requests
    other = basic_value("acme", "ema_0123456789abcdef_" + "A" * 40)
    for pair in ([keys.reader, other], [other, keys.reader], [keys.reader, keys.reader]):
        response = get_raw(front.port, ERA5, [(b"Authorization", value) for value in pair])
        assert response.status == 400
        assert response.json()["error"] == "bad_request"
    assert starlette.requests == before


SCHEMES = [
    b"Bearer abc", b'Digest username="acme"', b"Negotiate YIIB", b"NTLM TlRMTVNTUAAB",
    b"Basic", b"Basic ", b"Basic Og==", b"basic " + b"A" * 2000, b"Basic " + b"QUJD" * 3000,
]  # fmt: skip


def test_headers_other_schemes_and_garbage_are_401_with_challenge(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """Any other scheme or a malformed Basic value: 401 with the Basic challenge, never forwarded."""
    front = start(starlette.url)
    before = starlette.requests
    for value in SCHEMES:
        response = get_raw(front.port, ERA5, [(b"Authorization", value)])
        assert response.status == 401, value[:40]
        assert response.header("www-authenticate") == 'Basic realm="fluxauth", charset="UTF-8"'
    assert starlette.requests == before


def test_headers_credentials_never_reach_the_upstream(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """Neither Authorization nor Proxy-Authorization (also as Proxy_Authorization) is forwarded."""
    front = start(starlette.url)
    sent = [
        (b"Authorization", keys.reader),
        (b"Proxy-Authorization", keys.reader),
        (b"Proxy_Authorization", keys.reader),
    ]
    headers = seen_headers(get_raw(front.port, ERA5, sent))
    assert not {"authorization", "proxy-authorization", "proxy_authorization"} & set(headers)
    assert all(keys.reader.decode() not in value for values in headers.values() for value in values)


# -- request framing ----------------------------------------------------------------

BODY_TARGET = b"/v1/services/tiles/acme/era5/main/upload"
SMUGGLED = b"GET " + SECRET + b" HTTP/1.1\r\nHost: upstream\r\n\r\n"
FRAMING = {
    "cl-and-te": [(b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")],
    "te-and-cl": [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"4")],
    "cl-and-te-identity": [(b"Content-Length", b"4"), (b"Transfer-Encoding", b"identity")],
    "two-cl-same": [(b"Content-Length", b"4"), (b"Content-Length", b"4")],
    "two-cl-different": [(b"Content-Length", b"4"), (b"Content-Length", b"40")],
    "cl-list": [(b"Content-Length", b"4, 4")],
    "cl-plus": [(b"Content-Length", b"+4")],
    "cl-hex": [(b"Content-Length", b"0x4")],
    "te-gzip-chunked": [(b"Transfer-Encoding", b"gzip, chunked")],
    "te-chunked-gzip": [(b"Transfer-Encoding", b"chunked, gzip")],
    "te-twice": [(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")],
    "te-xchunked": [(b"Transfer-Encoding", b"xchunked")],
    "te-space-before-colon": [(b"Transfer-Encoding ", b"chunked")],
    "obs-fold": [(b"X-A", b"a\r\n b"), (b"Content-Length", b"4")],
    "two-hosts": [(b"Host", b"other.example")],
}
CHUNKED_SMUGGLE = b"%x\r\n%s\r\n0\r\n\r\n" % (len(SMUGGLED), SMUGGLED)


# What h11 repairs as RFC 9110 §8.6 and RFC 9112 §5.2 allow (identical lengths merged, obs-fold
# unfolded): no longer ambiguous, so forwarded with exactly the declared body.
H11_REPAIRS = {"two-cl-same", "cl-list", "obs-fold"}


@pytest.mark.parametrize("server", ["httptools", "h11"])
def test_headers_ambiguous_framing_is_refused_never_forwarded(
    start: Start, settings: Settings, store_path: str, clock: FakeClock, starlette: StarletteReader, keys: Keys,
    server: str,
) -> None:  # fmt: skip
    """CL.TE, TE.CL, CL.CL, unknown transfer codings, obs-fold, two Hosts: 400 (or 501), nothing reaches the upstream.

    Under httptools most are refused by llhttp before fluxauth; under h11 (and
    other ASGI servers) they reach the app, and ``request.check_framing`` in
    the gate refuses them. Either way the request for acme/secret smuggled in
    the body never reaches the upstream.
    """
    if server == "h11":
        front = start_proxy(dataclasses.replace(settings, upstream=starlette.url), store_path, clock, http="h11")
    else:
        front = start(starlette.url)
    try:
        for case, headers in FRAMING.items():
            before = len(starlette.received)
            data = request_bytes(BODY_TARGET, [(b"Authorization", keys.writer), *headers], method=b"POST")
            try:
                status = send_raw(front.port, data + CHUNKED_SMUGGLE, timeout=5).status
            except (ConnectionError, TimeoutError):
                status = 0  # the server hung up: nothing was forwarded either
            forwarded = starlette.received[before:]
            if server == "h11" and case in H11_REPAIRS:
                assert status == 200, case
                assert [(method, len(body)) for method, _, _, body in forwarded] == [("POST", 4)], case
            else:
                assert status in (0, 400, 501), (case, status)
                assert forwarded == [], case
        assert all(b"secret" not in path for _, path, _, _ in starlette.received)
    finally:
        if server == "h11":
            front.server.stop()


def test_headers_framing_refusal_comes_from_fluxauth_under_h11(
    settings: Settings, store_path: str, clock: FakeClock, starlette: StarletteReader, keys: Keys
) -> None:
    """Under a server that lets CL+TE through (uvicorn's h11), fluxauth itself answers 400 with its own JSON.

    Defence: ``request.check_framing`` (without it the request is forwarded,
    with the client's Content-Length, to the upstream).
    """
    front = start_proxy(dataclasses.replace(settings, upstream=starlette.url), store_path, clock, http="h11")
    try:
        data = request_bytes(
            BODY_TARGET,
            [(b"Authorization", keys.writer), (b"Content-Length", b"4"), (b"Transfer-Encoding", b"chunked")],
            method=b"POST",
        )
        response = send_raw(front.port, data + CHUNKED_SMUGGLE)
        assert response.status == 400
        assert response.json() == {"error": "bad_request", "detail": "both Transfer-Encoding and Content-Length"}
        duplicate = request_bytes(
            BODY_TARGET, [(b"Authorization", keys.writer), (b"Content-Length", b"4"), (b"Content-Length", b"5")]
        )
        assert send_raw(front.port, duplicate + b"abcd").status == 400
    finally:
        front.server.stop()


def test_headers_refused_body_is_not_read_and_the_connection_closes(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """A refused request's body is never waited for: the answer says Connection: close and the server hangs up.

    Defence: ``FluxAuthApp.http`` adds ``connection: close`` to refusals of
    requests with a body. Without it uvicorn answers, then keeps the
    connection open reading (and discarding) whatever body the client sends.
    """
    front = start(starlette.url)
    head = request_bytes(SECRET, [(b"Authorization", keys.reader), (b"Content-Length", b"1000000")], method=b"PUT")
    with socket.create_connection(("127.0.0.1", front.port), timeout=2) as sock:
        sock.sendall(head.replace(b"Connection: close\r\n", b""))  # keep-alive, body never sent
        reply = b""
        while chunk := sock.recv(65536):  # times out (fails) if the server waits for the body
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403")
    assert b"connection: close" in reply.lower()


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([], None),
        ([(b"content-length", b"0")], None),
        ([(b"content-length", b"12")], None),
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"transfer-encoding", b" Chunked ")], None),
        ([(b"content-length", b"4"), (b"transfer-encoding", b"chunked")], 400),
        ([(b"content-length", b"4"), (b"content-length", b"4")], 400),
        ([(b"content-length", b"4, 4")], 400),
        ([(b"content-length", b"-1")], 400),
        ([(b"content-length", b"")], 400),
        ([(b"content-length", b"1" * 20)], 400),
        ([(b"transfer-encoding", b"gzip, chunked")], 501),
        ([(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")], 501),
        ([(b"transfer-encoding", b"identity")], 501),
        ([(b"host", b"a"), (b"host", b"b")], 400),
    ],
)
def test_check_framing_table(headers: list[tuple[bytes, bytes]], status: int | None) -> None:
    """``check_framing`` on the headers an ASGI server hands over, whichever server it is."""
    head = RequestHead("POST", b"/v1/services/tiles/acme/era5/main/x")
    head.add_headers(headers)
    try:
        check_framing(head, max_url_length=8192)
    except BadRequest as exc:
        refused: int | None = exc.status
    else:
        refused = None
    assert refused == status


def test_headers_middleware_hides_forged_identity_and_overrides(store_path: str, clock: FakeClock, keys: Keys) -> None:
    """In front of an in-process app, FluxAuthMiddleware hides forged identity and override headers, any spelling.

    Defence: ``middleware._hidden_from_app`` (``_`` read as ``-``).
    """
    settings = Settings(store=store_path, argon2_profile="cheapest")
    app = FluxAuthMiddleware(starlette_reader(), settings=settings, store=SQLiteStore(store_path), clock=clock)
    sent = [
        (b"Authorization", keys.reader),
        (b"X_Fluxauth_Org", b"evil"),
        (b"X-Fluxauth-Principal", b"admin@evil"),
        (b"X-Original-URL", SECRET),
        (b"X_HTTP_Method_Override", b"DELETE"),
    ]
    with ServerThread(app) as server:
        headers = seen_headers(get_raw(server.port, ERA5, sent))
    assert headers["x-fluxauth-org"] == ["acme"]
    assert headers["x-fluxauth-principal"] == ["reader@acme"]
    for name in ("authorization", "x_fluxauth_org", "x-original-url", "x_http_method_override"):
        assert name not in headers, name
