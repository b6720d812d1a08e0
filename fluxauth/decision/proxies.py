"""Which peers may speak for the client (``X-Forwarded-For``), as in uvicorn's proxy_headers.

Only addresses in ``trusted_proxies`` are believed. The client is the first
address, from the right of ``X-Forwarded-For``, that is not a trusted proxy;
with no trusted proxies it is simply the peer. Nothing is trusted by default.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from fluxauth.config.settings import Network
from fluxauth.names import host_name


class ProxyTrust:
    def __init__(self, networks: tuple[Network, ...]) -> None:
        self._networks = networks
        self.is_trusted = lru_cache(maxsize=4096)(self._is_trusted)

    def _is_trusted(self, host: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d, which an
        # IPv4 network never contains; compare the IPv4 address it maps.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)

    def client(self, peer: str | None, forwarded_for: bytes | None) -> str:
        """The address that failures are counted against."""
        if peer is None:
            return "unknown"
        if forwarded_for is None or not self.is_trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.decode("latin-1").split(",")]
        for hop in reversed(hops):
            if hop and not self.is_trusted(hop):
                return hop
        return hops[0] or peer


def forwarded_headers(
    trust: ProxyTrust,
    peer: str | None,
    scheme: str,
    host: bytes | None,
    received: dict[bytes, bytes],
    *,
    with_host: bool = True,
) -> list[tuple[bytes, bytes]]:
    """``X-Forwarded-For/Proto/Host`` for the upstream.

    From a trusted proxy, what it said is kept and the peer appended; from
    anyone else, the client's own values are discarded and ours set.
    ``with_host=False`` leaves ``X-Forwarded-Host`` out (routes: the upstream
    is to name its own base, which fluxauth maps back).
    """
    trusted = peer is not None and trust.is_trusted(peer)
    peer_bytes = (peer or "unknown").encode("latin-1")
    chain = received.get(b"x-forwarded-for") if trusted else None
    proto = (received.get(b"x-forwarded-proto") if trusted else None) or scheme.encode("latin-1")
    headers = [
        (b"x-forwarded-for", chain + b", " + peer_bytes if chain else peer_bytes),
        (b"x-forwarded-proto", proto),
    ]
    fhost = (received.get(b"x-forwarded-host") if trusted else None) or host
    if fhost and with_host:
        headers.append((b"x-forwarded-host", fhost))
    return headers


def public_origin(
    trust: ProxyTrust, peer: str | None, scheme: str, host: bytes | None, received: dict[bytes, bytes]
) -> bytes | None:
    """``scheme://host`` as the client used it (a trusted proxy's ``X-Forwarded-Proto/Host`` first), or ``None``.

    ``None`` when no plain host can be told (none sent, or one that is not a
    plain host and port): the caller refuses the request (400) rather than
    write such a value into a document.
    """
    trusted = peer is not None and trust.is_trusted(peer)
    proto = (received.get(b"x-forwarded-proto") if trusted else None) or scheme.encode("latin-1")
    fhost = (received.get(b"x-forwarded-host") if trusted else None) or host
    # A chain of proxies lists its hops: the first is the client's.
    proto = proto.split(b",", 1)[0].strip().lower()
    if proto not in (b"http", b"https") or not fhost:
        return None
    fhost = fhost.split(b",", 1)[0].strip()
    # A host as it may appear in a URL that fluxauth writes into a response
    # (the one rule of fluxauth.names, which the gate checked the Host by):
    # quotes, markup, spaces or userinfo are refused, never written.
    if host_name(fhost) is None:
        return None
    return proto + b"://" + fhost
