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
    EchoUpstream,
    RawResponse,
    StarletteReader,
    WsgiReader,
    basic_value,
    get_raw,
    read_all,
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

    Defence: ``headers.dropped_before_forwarding`` compares names with ``_`` read as
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
    ``headers.PROXY_CLAIMS`` drops Forwarded, X-Forwarded, X-Real-IP,
    True-Client-IP, CF-Connecting-IP and the like, in any spelling.
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
        (b"X-Forwarded", b"for=6.6.6.6;proto=https;host=evil.example"),
        (b"CF-Connecting-IP", b"6.6.6.6"),
        (b"Fastly-Client-IP", b"6.6.6.6"),
        (b"X-Original-Forwarded-For", b"6.6.6.6"),
        (b"X-Scheme", b"https"),
        (b"X-Url-Scheme", b"https"),
        (b"Front-End-Https", b"on"),
    ]
    seen = cgi_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), *spoofed]))
    assert seen["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert seen["HTTP_X_FORWARDED_PROTO"] == "http"
    assert seen["HTTP_X_FORWARDED_HOST"] == "fluxauth.test"
    for name in ("FORWARDED", "X_REAL_IP", "TRUE_CLIENT_IP", "X_CLIENT_IP", "X_CLUSTER_CLIENT_IP", "X_FORWARDED"):
        assert f"HTTP_{name}" not in seen, name
    for name in ("CF_CONNECTING_IP", "FASTLY_CLIENT_IP", "X_ORIGINAL_FORWARDED_FOR", "X_SCHEME", "X_URL_SCHEME"):
        assert f"HTTP_{name}" not in seen, name
    assert "HTTP_FRONT_END_HTTPS" not in seen
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
    (b"X-Original-Path", SECRET),
    (b"X-Envoy-Original-Path", SECRET),
    (b"X-Envoy-Original-Url", b"http://fluxauth.test" + SECRET),
    (b"X-Script-Name", b"/v1/services/tiles/acme/secret/main"),
    (b"X-Forwarded-Uri", SECRET),
    (b"Destination", b"http://fluxauth.test" + SECRET),
    (b"X-HTTP-Method-Override", b"DELETE"),
    (b"X-HTTP-Method", b"DELETE"),
    (b"X-Method-Override", b"DELETE"),
    (b"X-Original-Method", b"DELETE"),
    (b"X_HTTP_Method_Override", b"DELETE"),
    (b"X-Original-Host", b"evil.example"),
    (b"X-Host", b"evil.example"),
    (b"X_Original_Host", b"evil.example"),
]


def test_headers_path_method_and_host_overrides_are_dropped(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """Headers that make frameworks serve another path (Symfony CVE-2018-14773), method or host are never forwarded.

    Defence: ``headers.TARGETS``: a GET decided as a read of acme/era5 must not
    become a read of acme/secret or a DELETE upstream, a MOVE must not write to
    a second target (Destination), nor may the upstream write URLs naming a
    host fluxauth did not check. ``Via`` is kept (it names proxies, not targets).
    """
    front = start(starlette.url)
    for header in OVERRIDES:
        headers = seen_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), header]))
        assert header[0].decode().lower().replace("_", "-") not in headers, header
        assert header[0].decode().lower() not in headers, header
    via = seen_headers(get_raw(front.port, ERA5, [(b"Authorization", keys.reader), (b"Via", b"1.1 cdn")]))
    assert via["via"] == ["1.1 cdn"]


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
    assert framing_refusal(head) == status


def framing_refusal(head: RequestHead) -> int | None:
    """The status ``check_framing`` refuses ``head`` with, or None."""
    try:
        check_framing(head, max_url_length=8192)
    except BadRequest as exc:
        return exc.status
    return None


@pytest.mark.parametrize(
    ("method", "status"),
    [
        ("GET", None),
        ("HEAD", None),
        ("PROPFIND", None),
        ("TRACE", 501),
        ("CONNECT", 501),
        ("trace", 501),
        ("Connect", 501),
    ],
)
def test_check_framing_refuses_trace_and_connect(method: str, status: int | None) -> None:
    """TRACE and CONNECT in any case are 501 (h11 lets ``trace`` through; llhttp refuses it itself)."""
    assert framing_refusal(RequestHead(method, b"/v1/services/tiles/acme/era5/main/x")) == status


def test_headers_middleware_hides_forged_identity_and_overrides(store_path: str, clock: FakeClock, keys: Keys) -> None:
    """In front of an in-process app, FluxAuthMiddleware hides forged identity and override headers, any spelling.

    Defence: ``headers.hidden_from_app`` (``_`` read as ``-``): the same
    ``TARGETS`` as the forwarder drops, ``X-Envoy-Original-Path`` among them.
    The client's X-Forwarded-* reach the app as the server passed them
    (``decision/headers.py`` says why).
    """
    settings = Settings(store=store_path, argon2_profile="cheapest")
    app = FluxAuthMiddleware(starlette_reader(), settings=settings, store=SQLiteStore(store_path), clock=clock)
    sent = [
        (b"Authorization", keys.reader),
        (b"X_Fluxauth_Org", b"evil"),
        (b"X-Fluxauth-Principal", b"admin@evil"),
        *OVERRIDES,
        (b"X-Forwarded-Proto", b"https"),
    ]
    with ServerThread(app) as server:
        headers = seen_headers(get_raw(server.port, ERA5, sent))
    assert headers["x-fluxauth-org"] == ["acme"]
    assert headers["x-fluxauth-principal"] == ["reader@acme"]
    for name in ("authorization", "x_fluxauth_org", *(name.decode().lower() for name, _ in OVERRIDES)):
        assert name not in headers, name
    assert headers["x-forwarded-proto"] == ["https"]


# -- what a client can read back: TRACE, CONNECT, echoed credentials ---------------------

UPSTREAM_PASSWORD = "s3cret-upstream-password"
UPSTREAM_BASIC = basic_value("fluxauth", UPSTREAM_PASSWORD)


@pytest.fixture
def echo() -> Iterator[EchoUpstream]:
    with EchoUpstream() as upstream:
        yield upstream


def with_credentials(url: str) -> str:
    """``url`` with fluxauth's own credentials to the upstream in its userinfo (``--upstream http://user:pass@...``)."""
    return url.replace("http://", f"http://fluxauth:{UPSTREAM_PASSWORD}@")


def leaks(reply: bytes) -> bool:
    """Whether ``reply`` holds fluxauth's credentials to the upstream in any form they were sent."""
    return any(part in reply for part in (UPSTREAM_PASSWORD.encode(), UPSTREAM_BASIC.split(b" ")[1]))


@pytest.mark.parametrize("method", [b"TRACE", b"CONNECT"])
def test_headers_trace_and_connect_are_refused_never_forwarded(
    start: Start, echo: EchoUpstream, keys: Keys, method: bytes
) -> None:
    """TRACE and CONNECT get 501 and are never forwarded: an echoing upstream cannot hand back fluxauth's credentials.

    The attack: a key that may write sends ``TRACE``; fluxauth forwarded it,
    and the upstream echoed the request it got, ``authorization: Basic ...``
    (fluxauth's own, from ``--upstream http://user:pass@...``) included.
    Defence: ``request.REFUSED_METHODS`` in ``check_framing`` (folded to upper
    case: some servers fold methods; llhttp itself refuses ``trace``, see
    ``test_check_framing_table``), before any credential is looked at.
    """
    front = start(with_credentials(echo.url))
    target = SECRET if method == b"CONNECT" else ERA5
    data = request_bytes(target, [(b"Authorization", keys.writer)], method=method)
    pipelined = request_bytes(ERA5, [(b"Authorization", keys.writer)])
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        # Kept alive, a request behind it: the refusal closes the connection (what
        # follows a CONNECT is tunnel bytes), so the second is never answered either.
        sock.sendall(data.replace(b"Connection: close\r\n", b"") + pipelined)
        reply = read_all(sock)  # times out (fails) if the server keeps the connection
    assert reply.startswith(b"HTTP/1.1 501 "), reply[:200]
    assert reply.count(b"HTTP/1.1 ") == 1
    assert b'"error":"not_implemented"' in reply
    assert not leaks(reply)
    assert echo.received == []


def test_headers_forward_auth_refuses_trace(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """A proxy asking forward-auth about a TRACE is told 501 (nginx: 403 with X-Fluxauth-Status 501): never allowed."""
    front = start(starlette.url, trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),))
    for family, status in (
        ((b"X-Forwarded-Uri", b"X-Forwarded-Method"), 501),
        ((b"X-Original-URI", b"X-Original-Method"), 403),
    ):
        uri, method = family
        response = get_raw(
            front.port, b"/_fluxauth/auth", [(uri, ERA5), (method, b"TRACE"), (b"Authorization", keys.writer)]
        )
        assert response.status == status
        assert response.header("x-fluxauth-status") == "501"
        assert response.header("x-fluxauth-principal") is None


def test_headers_upstream_credentials_reflected_in_headers_never_reach_the_client(
    start: Start, echo: EchoUpstream, keys: Keys
) -> None:
    """An upstream that reflects fluxauth's Authorization into a response header: the header is dropped, both paths.

    Defence: ``Forwarder.response_headers`` drops any response header that
    holds the Basic value, ``user:password`` or the password of fluxauth's
    own upstream credentials. (A body that echoes them cannot be filtered:
    SECURITY.md.)
    """
    front = start(with_credentials(echo.url))
    for _ in range(2):  # the ASGI path (the credential is verified), then the hot path
        data = request_bytes(ERA5, [(b"Authorization", keys.reader)]).replace(b"Connection: close\r\n", b"")
        response = send_raw(front.port, data)
        assert response.status == 200
        assert response.header("x-seen-authorization") is None
        assert not any(leaks(value.encode("latin-1")) for _, value in response.headers)
    assert front.app.hot_path["forward"] == 1
    assert all(b"authorization: " + UPSTREAM_BASIC in request for request in echo.received)  # it was sent


# -- shared caches in front: CDN cache rules ---------------------------------------------------

CDN_RULES = [
    (b"Surrogate-Control", b"max-age=86400"),
    (b"CDN-Cache-Control", b"max-age=86400"),
    (b"Cloudflare-CDN-Cache-Control", b"max-age=86400"),
    (b"Akamai-CDN-Cache-Control", b"max-age=86400"),
    (b"Edge-Control", b"cache-maxage=1d"),
    (b"X-Accel-Expires", b"86400"),
    (b"Cache-Control", b"public, s-maxage=86400, max-age=60"),
]


def test_headers_cdn_cache_rules_are_dropped_from_authenticated_answers(start: Start, keys: Keys) -> None:
    """Surrogate-Control, CDN-Cache-Control and kin are dropped from an answer for one key; public answers keep them.

    CDNs obey these before Cache-Control (RFC 9213), so a CDN in front would
    serve one key's tile to anyone despite ``private``. Defence:
    ``headers.upstream_response_headers`` drops them on authenticated answers
    (the ASGI path and the hot path), as it replaces ``public``/``s-maxage``.
    """
    with EchoUpstream(CDN_RULES) as upstream:
        front = start(upstream.url)
        for _ in range(2):  # the ASGI path, then the hot path
            data = request_bytes(ERA5, [(b"Authorization", keys.reader)]).replace(b"Connection: close\r\n", b"")
            private = send_raw(front.port, data)
            names = {name.lower() for name, _ in private.headers}
            assert not names & {name.decode().lower() for name, _ in CDN_RULES if name != b"Cache-Control"}, names
            assert private.header("cache-control") == "private, max-age=60"
        assert front.app.hot_path["forward"] == 1
        public = get_raw(front.port, PUB)
        assert {(name.lower(), value) for name, value in public.headers} >= {
            (name.decode().lower(), value.decode()) for name, value in CDN_RULES
        }


# -- the Host -----------------------------------------------------------------------------

BAD_HOSTS = [
    b"fa evil.example",
    b"user:pass@fa",
    b"fa@evil.example",
    b"fa\xe9",
    b"",
    b"fa:99999",
    b"fa:0",
    b"fa:",
    b"fa,evil.example",
    b"fa/..",
    b'fa"><script>',
    b"[::g]",
    b".fa",
    b"fa..example",
]


def host_request(host: bytes | None, *headers: tuple[bytes, bytes], version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"GET " + ERA5 + b" " + version]
    if host is not None:
        lines.append(b"Host: " + host)
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


@pytest.mark.parametrize("host", BAD_HOSTS)
def test_headers_host_must_be_one_host_and_port(
    start: Start, starlette: StarletteReader, keys: Keys, host: bytes
) -> None:
    """A Host that is not one ``host[:port]`` is 400 (``bad_host``) and nothing is forwarded.

    The attack: fluxauth passed the Host on as X-Forwarded-Host, from which
    upstreams write the URLs in TileJSON and capabilities; ``fa evil.example``
    or ``user:pass@fa`` made a document that a shared cache kept for everyone.
    Defence: ``hosts.HostRules`` in the gate (RFC 9112 §3.2).
    """
    front = start(starlette.url)
    before = starlette.requests
    response = send_raw(front.port, host_request(host, (b"Authorization", keys.reader)))
    assert response.status == 400, host
    assert response.json()["error"] == "bad_host"
    assert host.decode("latin-1") not in response.body.decode("latin-1") or not host
    assert starlette.requests == before


def test_headers_host_is_required_on_http_11_only(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """No Host on HTTP/1.1 is 400; HTTP/1.0 may leave it out (and the upstream is then told no host)."""
    front = start(starlette.url)
    assert send_raw(front.port, host_request(None, (b"Authorization", keys.reader))).status == 400
    old = send_raw(front.port, host_request(None, (b"Authorization", keys.reader), version=b"HTTP/1.0"))
    assert "x-forwarded-host" not in seen_headers(old)


def test_headers_public_hosts_allow_only_the_names_listed(start: Start, starlette: StarletteReader, keys: Keys) -> None:
    """With ``public_hosts``, only those names (any port, any case, a trailing dot) and ``*.`` subdomains pass."""
    front = start(starlette.url, public_hosts=("maps.example.org", "*.tiles.example.org"))
    reader = (b"Authorization", keys.reader)
    for host in (b"maps.example.org", b"MAPS.example.org.:8443", b"a.tiles.example.org", b"b.a.tiles.example.org"):
        response = send_raw(front.port, host_request(host, reader))
        assert seen_headers(response)["x-forwarded-host"] == [host.decode()], host
    for host in (b"evil.example", b"tiles.example.org", b"maps.example.org.evil", b"127.0.0.1"):
        response = send_raw(front.port, host_request(host, reader))
        assert (response.status, response.json()["error"]) == (400, "bad_host"), host
    assert send_raw(front.port, host_request(None, reader, version=b"HTTP/1.0")).status == 400


def test_headers_trusted_x_forwarded_host_gets_the_same_check(
    start: Start, starlette: StarletteReader, keys: Keys
) -> None:
    """A trusted proxy's X-Forwarded-Host must be one valid host in ``public_hosts``; a client's own is replaced."""
    reader = (b"Authorization", keys.reader)
    behind = start(
        starlette.url, public_hosts=("maps.example.org",), trusted_proxies=(ipaddress.ip_network("127.0.0.1/32"),)
    )
    response = send_raw(
        behind.port, host_request(b"127.0.0.1:8000", reader, (b"X-Forwarded-Host", b"maps.example.org"))
    )
    assert seen_headers(response)["x-forwarded-host"] == ["maps.example.org"]
    for forwarded in (b"evil.example", b"maps.example.org, evil.example", b"user:pass@maps.example.org", b""):
        response = send_raw(behind.port, host_request(b"127.0.0.1:8000", reader, (b"X-Forwarded-Host", forwarded)))
        assert (response.status, response.json()["error"]) == (400, "bad_host"), forwarded
    twice = host_request(
        b"maps.example.org", reader, (b"X-Forwarded-Host", b"maps.example.org"), (b"X-Forwarded-Host", b"evil.example")
    )
    assert send_raw(behind.port, twice).status == 400
    direct = start(starlette.url, public_hosts=("maps.example.org",))
    response = send_raw(direct.port, host_request(b"maps.example.org", reader, (b"X-Forwarded-Host", b"evil.example")))
    assert seen_headers(response)["x-forwarded-host"] == ["maps.example.org"]
