"""Tests for fluxauth.decision.hosts: which Host (and trusted X-Forwarded-Host) a request may name."""

from __future__ import annotations

import pytest

from fluxauth.decision.hosts import HostRules
from fluxauth.errors import BadHost

PUBLIC = ("maps.example.org", "*.tiles.example.org", "[::1]")


@pytest.mark.parametrize(
    ("public", "host", "forwarded", "http_11", "refused"),
    [
        ((), b"anything.example:8000", None, True, None),
        ((), None, None, False, None),  # HTTP/1.0 may leave Host out
        ((), None, None, True, "an HTTP/1.1 request needs a Host header"),
        ((), b"", None, True, "the Host header is not one host[:port]"),
        ((), b"", None, False, "the Host header is not one host[:port]"),
        ((), b"fa evil.example", None, True, "the Host header is not one host[:port]"),
        ((), b"fa", b"maps.example.org", True, None),
        ((), b"fa", b"a, b", True, "X-Forwarded-Host is not one host[:port]"),
        ((), b"fa", b"a,b", True, "X-Forwarded-Host is not one host[:port]"),  # two headers, joined
        ((), b"fa evil", b"maps.example.org", True, "the Host header is not one host[:port]"),
        (PUBLIC, b"maps.example.org", None, True, None),
        (PUBLIC, b"MAPS.example.org.:443", None, True, None),
        (PUBLIC, b"a.tiles.example.org", None, True, None),
        (PUBLIC, b"tiles.example.org", None, True, "this host is not served here"),
        (PUBLIC, b"eviltiles.example.org", None, True, "this host is not served here"),
        (PUBLIC, b"[::1]:8000", None, True, None),
        (PUBLIC, b"127.0.0.1", None, True, "this host is not served here"),
        (PUBLIC, b"127.0.0.1:8000", b"maps.example.org", True, None),  # behind a trusted proxy: its host counts
        (PUBLIC, b"maps.example.org", b"evil.example", True, "this host is not served here"),
        (PUBLIC, None, None, False, "this host is not served here"),
    ],
)
def test_host_rules_table(
    public: tuple[str, ...], host: bytes | None, forwarded: bytes | None, http_11: bool, refused: str | None
) -> None:
    """Each Host / trusted X-Forwarded-Host pair, with and without ``public_hosts``: allowed, or why not."""
    rules = HostRules(public)
    if refused is None:
        rules.check(host, forwarded, http_11=http_11)
        return
    with pytest.raises(BadHost) as caught:
        rules.check(host, forwarded, http_11=http_11)
    assert (caught.value.status, caught.value.error, caught.value.detail) == (400, "bad_host", refused)
