"""Tests for fluxauth.decision.proxies: only trusted proxies may speak for the client."""

from __future__ import annotations

import ipaddress

import pytest

from fluxauth.decision.proxies import ProxyTrust, forwarded_headers, public_origin

NOBODY = ProxyTrust(())
LOOPBACK = ProxyTrust((ipaddress.ip_network("127.0.0.1/32"),))
INTERNAL = ProxyTrust(
    (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
)


@pytest.mark.parametrize(
    ("trust", "host", "trusted"),
    [
        (NOBODY, "127.0.0.1", False),
        (LOOPBACK, "127.0.0.1", True),
        (LOOPBACK, "127.0.0.2", False),
        (INTERNAL, "10.1.2.3", True),
        (INTERNAL, "11.1.2.3", False),
        (INTERNAL, "fd00::1", True),
        (INTERNAL, "fe80::1", False),
        (INTERNAL, "::ffff:10.1.2.3", True),
        (INTERNAL, "::ffff:11.1.2.3", False),
        (INTERNAL, "localhost", False),
        (INTERNAL, "10.1.2.3:8080", False),
        (INTERNAL, "", False),
        (INTERNAL, "unknown", False),
    ],
)
def test_proxy_trust_is_trusted(trust: ProxyTrust, host: str, trusted: bool) -> None:
    """An address is trusted only if it lies in a configured network; names never are."""
    assert trust.is_trusted(host) is trusted


@pytest.mark.parametrize(
    ("trust", "peer", "forwarded_for", "client"),
    [
        # Nothing trusted: the peer is the client, whatever it claims.
        pytest.param(NOBODY, "203.0.113.7", None, "203.0.113.7", id="no-proxies-no-header"),
        pytest.param(NOBODY, "203.0.113.7", b"1.2.3.4", "203.0.113.7", id="no-proxies-header-ignored"),
        pytest.param(NOBODY, None, b"1.2.3.4", "unknown", id="no-peer"),
        # An untrusted peer's X-Forwarded-For is ignored.
        pytest.param(LOOPBACK, "203.0.113.7", b"1.2.3.4", "203.0.113.7", id="untrusted-peer"),
        pytest.param(INTERNAL, "203.0.113.7", b"10.0.0.1", "203.0.113.7", id="untrusted-peer-claims-internal"),
        # A trusted peer speaks for the client.
        pytest.param(LOOPBACK, "127.0.0.1", None, "127.0.0.1", id="trusted-peer-no-header"),
        pytest.param(LOOPBACK, "127.0.0.1", b"198.51.100.1", "198.51.100.1", id="trusted-peer-one-hop"),
        pytest.param(LOOPBACK, "127.0.0.1", b" 198.51.100.1 ", "198.51.100.1", id="whitespace"),
        # The rightmost untrusted hop: what the first trusted proxy saw; earlier hops may be forged.
        pytest.param(LOOPBACK, "127.0.0.1", b"6.6.6.6, 198.51.100.1", "198.51.100.1", id="forged-left-hop"),
        pytest.param(
            INTERNAL, "127.0.0.1", b"6.6.6.6, 198.51.100.1, 10.0.0.2, 10.0.0.3", "198.51.100.1", id="proxy-chain"
        ),
        pytest.param(INTERNAL, "10.0.0.3", b"198.51.100.1,10.0.0.2", "198.51.100.1", id="no-spaces"),
        pytest.param(INTERNAL, "10.0.0.3", b"2001:db8::1, fd00::2", "2001:db8::1", id="ipv6"),
        pytest.param(INTERNAL, "127.0.0.1", b"198.51.100.1, , 10.0.0.2", "198.51.100.1", id="empty-hop-skipped"),
        # Every hop trusted: the leftmost is as far as anyone can see.
        pytest.param(INTERNAL, "127.0.0.1", b"10.0.0.1, 10.0.0.2", "10.0.0.1", id="all-trusted"),
        pytest.param(INTERNAL, "127.0.0.1", b"", "127.0.0.1", id="empty-header"),
    ],
)
def test_proxy_trust_client(trust: ProxyTrust, peer: str | None, forwarded_for: bytes | None, client: str) -> None:
    """The client is the peer, or behind trusted proxies the rightmost hop that is not one of them."""
    assert trust.client(peer, forwarded_for) == client


RECEIVED = {
    b"x-forwarded-for": b"198.51.100.1",
    b"x-forwarded-proto": b"https",
    b"x-forwarded-host": b"maps.example.org",
}


@pytest.mark.parametrize(
    ("trust", "peer", "received", "expected"),
    [
        pytest.param(
            NOBODY,
            "203.0.113.7",
            RECEIVED,
            [
                (b"x-forwarded-for", b"203.0.113.7"),
                (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"proxy.example"),
            ],
            id="no-proxies-ignores-client-values",
        ),
        pytest.param(
            LOOPBACK,
            "203.0.113.7",
            RECEIVED,
            [
                (b"x-forwarded-for", b"203.0.113.7"),
                (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"proxy.example"),
            ],
            id="untrusted-peer-ignored",
        ),
        pytest.param(
            LOOPBACK,
            "127.0.0.1",
            RECEIVED,
            [
                (b"x-forwarded-for", b"198.51.100.1, 127.0.0.1"),
                (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-host", b"maps.example.org"),
            ],
            id="trusted-peer-kept-and-appended",
        ),
        pytest.param(
            LOOPBACK,
            "127.0.0.1",
            {},
            [
                (b"x-forwarded-for", b"127.0.0.1"),
                (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"proxy.example"),
            ],
            id="trusted-peer-without-headers",
        ),
        pytest.param(
            NOBODY,
            None,
            RECEIVED,
            [
                (b"x-forwarded-for", b"unknown"),
                (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-host", b"proxy.example"),
            ],
            id="no-peer",
        ),
    ],
)
def test_forwarded_headers(
    trust: ProxyTrust,
    peer: str | None,
    received: dict[bytes, bytes],
    expected: list[tuple[bytes, bytes]],
) -> None:
    """X-Forwarded-* from a trusted proxy are kept and the peer appended; anyone else's are replaced."""
    assert forwarded_headers(trust, peer, "http", b"proxy.example", received) == expected


def test_forwarded_headers_without_host_sends_no_forwarded_host() -> None:
    """With no Host to report, no X-Forwarded-Host is invented."""
    headers = dict(forwarded_headers(NOBODY, "203.0.113.7", "https", None, {}))
    assert b"x-forwarded-host" not in headers
    assert headers[b"x-forwarded-proto"] == b"https"


def test_forwarded_headers_for_a_route_leave_out_the_host() -> None:
    """A route's upstream names its own base: no X-Forwarded-Host, even from a trusted proxy."""
    received = {b"x-forwarded-host": b"maps.example.org", b"x-forwarded-proto": b"https"}
    headers = forwarded_headers(LOOPBACK, "127.0.0.1", "http", b"fluxauth:8000", received, with_host=False)
    assert headers == [(b"x-forwarded-for", b"127.0.0.1"), (b"x-forwarded-proto", b"https")]


PUBLIC_ORIGINS = [
    # trust, peer, scheme, Host, forwarded headers -> the origin a client used
    (NOBODY, "10.0.0.1", "http", b"fluxauth.example:8000", {}, b"http://fluxauth.example:8000"),
    (NOBODY, "10.0.0.1", "https", b"fluxauth.example", {}, b"https://fluxauth.example"),
    # An untrusted peer's own forwarding headers are ignored.
    (NOBODY, "10.0.0.1", "http", b"a:1", {b"x-forwarded-proto": b"https", b"x-forwarded-host": b"evil"}, b"http://a:1"),
    # A trusted TLS proxy: https and its public host.
    (
        LOOPBACK,
        "127.0.0.1",
        "http",
        b"127.0.0.1:8000",
        {b"x-forwarded-proto": b"https", b"x-forwarded-host": b"maps.example.org"},
        b"https://maps.example.org",
    ),
    (LOOPBACK, "127.0.0.1", "http", b"maps.example.org", {b"x-forwarded-proto": b"HTTPS"}, b"https://maps.example.org"),
    # A chain of proxies: the first hop is the client's.
    (
        LOOPBACK,
        "127.0.0.1",
        "http",
        b"x",
        {b"x-forwarded-proto": b"https, http", b"x-forwarded-host": b"a.example, b"},
        b"https://a.example",
    ),
    (NOBODY, "10.0.0.1", "http", b"[::1]:8000", {}, b"http://[::1]:8000"),
    # Nothing that cannot be written plainly into a document.
    (NOBODY, "10.0.0.1", "http", None, {}, None),
    (NOBODY, "10.0.0.1", "http", b"", {}, None),
    (NOBODY, "10.0.0.1", "http", b'a"><script>', {}, None),
    (NOBODY, "10.0.0.1", "http", b"user@host", {}, None),
    (NOBODY, "10.0.0.1", "http", b"a b", {}, None),
    (NOBODY, "10.0.0.1", "http", b"host:port", {}, None),
    (NOBODY, "10.0.0.1", "http", b"-host", {}, None),
    (LOOPBACK, "127.0.0.1", "http", b"a", {b"x-forwarded-proto": b"javascript"}, None),
    (LOOPBACK, "127.0.0.1", "http", b"a", {b"x-forwarded-host": b"a/b"}, None),
]


@pytest.mark.parametrize(("trust", "peer", "scheme", "host", "received", "origin"), PUBLIC_ORIGINS)
def test_public_origin(
    trust: ProxyTrust, peer: str, scheme: str, host: bytes | None, received: dict[bytes, bytes], origin: bytes | None
) -> None:
    """The scheme and host a client used, as trusted_proxies tell them; None for what cannot be written."""
    assert public_origin(trust, peer, scheme, host, received) == origin
