"""The host a request names: a valid ``host[:port]``, and one this deployment serves (``public_hosts``).

Upstreams write absolute URLs (TileJSON, WMS capabilities, OGC API links)
from the host they are told, ``X-Forwarded-Host``, which fluxauth sets from
the client's ``Host`` (or a trusted proxy's ``X-Forwarded-Host``). Unchecked,
``Host: fa evil.example``, ``Host: user:pass@fa`` or raw non-ASCII bytes were
passed on as they came, and a shared cache in front would keep the poisoned
document for everyone. So:

- ``Host`` must be one plain ``host[:port]`` (RFC 9112 §3.2: a missing Host on
  HTTP/1.1, or an invalid one, is a 400): a DNS-style name (``_`` allowed, as
  container names have it), an IPv4 address or an IPv6 literal, and a port
  from 1 to 65535 (``fluxauth.names.host_name``); nothing else — no userinfo,
  spaces, commas, quotes or bytes outside ASCII. An empty Host names no host
  and is refused too. HTTP/1.0 may leave Host out.
- A trusted proxy's ``X-Forwarded-Host`` gets the same check, and must be one
  host, not a list (readers disagree on which entry of a list is the client's).
- With ``public_hosts`` set, the host the upstream is told (the trusted
  proxy's, else ``Host``) must be one of them, compared without the port and
  a trailing dot, case-insensitively: like Django's ``ALLOWED_HOSTS`` and
  Starlette's ``TrustedHostMiddleware``. ``*.example.org`` allows every name
  under ``example.org`` (not ``example.org`` itself). Empty: any valid host.

Checked by the gate for compute paths and forward-auth, so the middleware
gets it too; the internal endpoints (``healthz``, ``readyz``, ``metrics``)
forward nothing and are not checked, so that probes by address keep working.
"""

from __future__ import annotations

from functools import lru_cache

from fluxauth.errors import BadHost
from fluxauth.names import host_name


class HostRules:
    """The checks above for one deployment's ``public_hosts``; verdicts memoized (every request pays one)."""

    def __init__(self, public_hosts: tuple[str, ...]) -> None:
        self._exact = frozenset(p.encode("ascii") for p in public_hosts if not p.startswith("*."))
        self._suffixes = tuple(p[1:].encode("ascii") for p in public_hosts if p.startswith("*."))
        self._any = not public_hosts
        self._verdict = lru_cache(maxsize=4096)(self._judge)

    def check(self, host: bytes | None, forwarded_host: bytes | None, *, http_11: bool) -> None:
        """Raise ``BadHost`` unless ``host`` (and a trusted proxy's ``forwarded_host``, if given) pass.

        ``forwarded_host`` is the caller's to give only when the peer is a
        trusted proxy: from anyone else it is dropped, never believed.
        """
        detail = self._verdict(host, forwarded_host, http_11)
        if detail is not None:
            raise BadHost(detail)

    def _judge(self, host: bytes | None, forwarded_host: bytes | None, http_11: bool) -> str | None:
        if host is None:
            if http_11:
                return "an HTTP/1.1 request needs a Host header"
        elif host_name(host) is None:
            return "the Host header is not one host[:port]"
        told = host
        if forwarded_host is not None:
            if host_name(forwarded_host) is None:
                return "X-Forwarded-Host is not one host[:port]"
            told = forwarded_host
        if self._any:
            return None
        name = None if told is None else host_name(told)
        if name is None or not (name in self._exact or name.endswith(self._suffixes)):
            return "this host is not served here"
        return None
