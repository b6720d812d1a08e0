"""Tests for fluxauth.decision.cors: preflights answered for allowed origins, refused for others."""

from __future__ import annotations

import pytest

from fluxauth.decision.cors import Cors

MAPS = "https://maps.example.org"
ALLOWED = Cors((MAPS, "http://localhost:5173"), max_age=600)
ANY = Cors(("*",), max_age=60)
NONE = Cors((), max_age=600)


@pytest.mark.parametrize(
    ("cors", "method", "origin", "request_method", "expected"),
    [
        (ALLOWED, "OPTIONS", MAPS.encode(), b"GET", "allowed"),
        (ALLOWED, "OPTIONS", b"http://localhost:5173", b"PUT", "allowed"),
        (ALLOWED, "OPTIONS", b"https://evil.example", b"GET", "denied"),
        (ALLOWED, "OPTIONS", b"https://maps.example.org.evil.example", b"GET", "denied"),
        (ALLOWED, "OPTIONS", b"http://maps.example.org", b"GET", "denied"),
        (ALLOWED, "OPTIONS", b"https://maps.example.org:8443", b"GET", "denied"),
        (ALLOWED, "OPTIONS", b"https://maps.example.org/", b"GET", "denied"),
        (ALLOWED, "OPTIONS", b"null", b"GET", "denied"),
        (NONE, "OPTIONS", MAPS.encode(), b"GET", "denied"),
        (ANY, "OPTIONS", b"https://anywhere.example", b"GET", "allowed"),
        # Not a preflight: a plain OPTIONS, or another method with an Origin.
        (ALLOWED, "OPTIONS", None, b"GET", "none"),
        (ALLOWED, "OPTIONS", MAPS.encode(), None, "none"),
        (ALLOWED, "OPTIONS", None, None, "none"),
        (ALLOWED, "GET", MAPS.encode(), b"GET", "none"),
        (ALLOWED, "POST", b"https://evil.example", b"POST", "none"),
    ],
)
def test_cors_preflight(
    cors: Cors, method: str, origin: bytes | None, request_method: bytes | None, expected: str
) -> None:
    """OPTIONS with Origin and Access-Control-Request-Method is a preflight; its origin decides."""
    assert cors.preflight(method, origin, request_method) == expected


@pytest.mark.parametrize(
    ("cors", "origin", "allowed"),
    [
        (ALLOWED, MAPS.encode(), True),
        (ALLOWED, b"https://MAPS.example.org", False),
        (ALLOWED, b"https://evil.example", False),
        (ALLOWED, None, False),
        (ANY, b"https://anywhere.example", True),
        (ANY, None, False),
        (NONE, MAPS.encode(), False),
    ],
)
def test_cors_allows(cors: Cors, origin: bytes | None, allowed: bool) -> None:
    """Only a listed origin (or any, with ``*``) is allowed, compared exactly."""
    assert cors.allows(origin) is allowed


def test_cors_preflight_headers_echo_origin_with_vary() -> None:
    """The allowed origin is echoed (never ``*``) with Vary, the methods and the max age."""
    headers = dict(ANY.preflight_headers(b"https://anywhere.example", None))
    assert headers[b"access-control-allow-origin"] == b"https://anywhere.example"
    assert b"Origin" in headers[b"vary"]
    assert headers[b"access-control-max-age"] == b"60"
    for method in (b"GET", b"HEAD", b"PUT", b"DELETE"):
        assert method in headers[b"access-control-allow-methods"]


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        pytest.param(None, b"authorization", id="none"),
        pytest.param(b"", b"authorization", id="empty"),
        pytest.param(b"x-map-version", b"authorization, x-map-version", id="one"),
        pytest.param(b"authorization, content-type", b"authorization, authorization, content-type", id="two"),
        pytest.param(b"  x-a ,x-b  ", b"authorization, x-a ,x-b", id="spaces"),
        pytest.param(b"x-a,\tx-b", b"authorization, x-a,\tx-b", id="tab"),
        pytest.param(b"x-a,\r\nx-b", b"authorization", id="CRLF"),
        pytest.param(b"x-a,\nSet-Cookie: a=b", b"authorization", id="LF-injection"),
        pytest.param(b"x-a,\x0bx-b", b"authorization", id="VT"),
        pytest.param(b"x-a, <script>", b"authorization", id="not-a-token"),
        pytest.param("x-é".encode(), b"authorization", id="non-ascii"),
        pytest.param(b"x-a,,x-b", b"authorization", id="empty-item"),
    ],
)
def test_cors_preflight_headers_allow_headers(requested: bytes | None, allowed: bytes) -> None:
    """Authorization is always allowed; asked-for headers are echoed only if they are a plain token list."""
    headers = dict(ALLOWED.preflight_headers(MAPS.encode(), requested))
    assert headers[b"access-control-allow-headers"] == allowed
    assert all(b"\r" not in value and b"\n" not in value for value in headers.values())


def test_cors_response_headers_for_allowed_origin() -> None:
    """An allowed origin is echoed with the headers a map may read, and Vary: Origin."""
    headers = dict(ALLOWED.response_headers(MAPS.encode()))
    assert headers[b"access-control-allow-origin"] == MAPS.encode()
    assert headers[b"vary"] == b"Origin"
    for name in (b"Content-Type", b"ETag", b"Retry-After"):
        assert name in headers[b"access-control-expose-headers"]


@pytest.mark.parametrize(
    ("cors", "origin"),
    [(ALLOWED, b"https://evil.example"), (ALLOWED, None), (ANY, None)],
)
def test_cors_response_headers_only_vary_for_other_origin(cors: Cors, origin: bytes | None) -> None:
    """With CORS configured, a request from another origin gets only ``Vary: Origin``.

    Without it a cache could hand the header-less answer to an allowed page.
    """
    assert cors.response_headers(origin) == [(b"vary", b"Origin")]


def test_cors_response_headers_none_when_not_configured() -> None:
    """Without allowed origins, responses do not vary by Origin and carry no CORS headers."""
    assert NONE.response_headers(MAPS.encode()) == []
