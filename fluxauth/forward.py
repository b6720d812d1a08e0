"""Forwarding to the upstream: one aiohttp session per process, bodies streamed both ways.

aiohttp rather than httpx carries upstream traffic: httpx's pool collapses under
concurrency (encode/httpx#3215; DESIGN.md §5). What reaches the upstream:

- the raw path and query exactly as decided on (``encoded=True``: no re-quoting);
- no hop-by-hop headers (RFC 9110 §7.6.1), nor any header named in
  ``Connection`` — a client could otherwise have a proxy strip the headers the
  upstream relies on (Traefik CVE-2021-32813, CVE-2024-45410);
- no ``Authorization`` and no client-sent ``X-Fluxauth-*``, ``X-Forwarded-*``,
  ``Forwarded`` or ``X-Real-IP``; fluxauth sets ``X-Fluxauth-Org``,
  ``X-Fluxauth-Principal`` and ``X-Forwarded-For/Proto/Host`` itself.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from fluxauth.histogram import Histogram
from fluxauth.policy import Principal
from fluxauth.proxies import ProxyTrust, forwarded_headers
from fluxauth.request import Scope
from fluxauth.responses import Headers, Receive, Send, send_json
from fluxauth.settings import Settings

log = logging.getLogger("fluxauth.forward")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Request headers that never reach the upstream as the client sent them.
_DROPPED_REQUEST = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"expect",
    b"forwarded",
    b"x-real-ip",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-port",
    b"x-forwarded-prefix",
}
_KEPT_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
_CHUNK = 64 * 1024


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(part.strip().lower() for part in value.split(b","))
    return named


class Forwarder:
    """Sends decided requests upstream and streams the answers back."""

    def __init__(self, settings: Settings, trust: ProxyTrust) -> None:
        self.settings = settings
        self.trust = trust
        self._session: aiohttp.ClientSession | None = None
        self._bases = {p: settings.upstream_for(p).rstrip("/") for p in settings.protocols}
        self.latency = Histogram()  # until the upstream's response headers
        self.errors: Counter[str] = Counter()

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self.settings.upstream_max_connections,
            limit_per_host=0,
            ttl_dns_cache=300,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.settings.upstream_connect_timeout,
                sock_read=self.settings.upstream_read_timeout,
            ),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def request_headers(self, scope: Scope, principal: Principal | None) -> CIMultiDict[str]:
        """What the upstream receives, built from what the client sent."""
        received: list[tuple[bytes, bytes]] = scope["headers"]
        dropped = _DROPPED_REQUEST | _connection_named(received)
        headers: CIMultiDict[str] = CIMultiDict()
        kept: dict[bytes, bytes] = {}
        host: bytes | None = None
        for name, value in received:
            if name == b"host":
                host = value
            if name in _KEPT_FORWARDED:
                kept[name] = kept[name] + b", " + value if name in kept else value
            if name in dropped or name.startswith(b"x-fluxauth-"):
                continue
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        client = scope.get("client")
        for name, value in forwarded_headers(
            self.trust, client[0] if client else None, scope.get("scheme", "http"), host, kept
        ):
            headers[name.decode("latin-1")] = value.decode("latin-1")
        if principal is not None:
            headers["X-Fluxauth-Org"] = principal.org
            headers["X-Fluxauth-Principal"] = principal.label
        else:
            headers["X-Fluxauth-Principal"] = "anonymous"
        return headers

    def url(self, protocol: str, raw_path: bytes, query: bytes) -> URL:
        """The upstream URL: its base, then the path and query exactly as received (both ASCII)."""
        target = self._bases[protocol] + raw_path.decode("ascii")
        if query:
            target += "?" + query.decode("ascii")
        return URL(target, encoded=True)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        protocol: str,
        raw_path: bytes,
        principal: Principal | None,
        extra_headers: Headers,
    ) -> None:
        """Forward one request and stream the response; answer 502/504 if the upstream fails first."""
        assert self._session is not None, "Forwarder.start() was not awaited"
        headers = self.request_headers(scope, principal)
        has_body = headers.get("content-length", "0") != "0" or any(
            name == b"transfer-encoding" for name, _ in scope["headers"]
        )
        started = False
        sent_at = time.perf_counter()
        try:
            async with self._session.request(
                scope["method"],
                self.url(protocol, raw_path, scope.get("query_string", b"")),
                headers=headers,
                data=_request_body(receive) if has_body else None,
                allow_redirects=False,
                compress=None,
            ) as upstream:
                self.latency.observe(time.perf_counter() - sent_at)
                response_headers = _response_headers(upstream.raw_headers) + extra_headers
                await send({"type": "http.response.start", "status": upstream.status, "headers": response_headers})
                started = True
                if scope["method"] != "HEAD":
                    async for chunk in upstream.content.iter_chunked(_CHUNK):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
        except (TimeoutError, aiohttp.ServerTimeoutError):
            self.errors["timeout"] += 1
            if started:
                log.warning("upstream timed out mid-response for %s", protocol)
                return  # the server closes the connection: the client sees a truncated body
            await send_json(
                send, 504, {"error": "upstream_timeout", "detail": "the upstream did not answer in time"}, extra_headers
            )
        except aiohttp.ClientError as exc:
            self.errors["connection" if isinstance(exc, aiohttp.ClientConnectorError) else "protocol"] += 1
            if started:
                log.warning("upstream failed mid-response for %s: %s", protocol, type(exc).__name__)
                return
            await send_json(
                send, 502, {"error": "bad_gateway", "detail": "the upstream cannot be reached"}, extra_headers
            )
        except _ClientGone:
            return


class _ClientGone(Exception):
    """The client disconnected while its request body was being forwarded."""


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        body = message.get("body", b"")
        if body:
            yield body
        if not message.get("more_body", False):
            return


def _response_headers(raw: tuple[tuple[bytes, bytes], ...]) -> Headers:
    named = _connection_named(list(raw))
    return [
        (name.lower(), value) for name, value in raw if name.lower() not in HOP_BY_HOP and name.lower() not in named
    ]
