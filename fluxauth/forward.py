"""Forwarding to the upstream: one aiohttp session per process, bodies streamed both ways.

aiohttp rather than httpx carries upstream traffic: httpx's pool collapses under
concurrency (encode/httpx#3215; DESIGN.md §5). What reaches the upstream:

- the raw path and query exactly as decided on (``encoded=True``: no re-quoting);
- no hop-by-hop headers (RFC 9110 §7.6.1), nor any header named in
  ``Connection`` — a client could otherwise have a proxy strip the headers the
  upstream relies on (Traefik CVE-2021-32813, CVE-2024-45410);
- no ``Authorization`` and no client-sent ``X-Fluxauth-*``, ``X-Forwarded-*``,
  ``Forwarded`` or ``X-Real-IP``; fluxauth sets ``X-Fluxauth-Org``,
  ``X-Fluxauth-Principal`` and ``X-Forwarded-For/Proto/Host`` itself;
- none of the headers that make some frameworks read another path or method
  than the one decided on (``X-Original-URL``, ``X-Rewrite-URL``: Symfony
  CVE-2018-14773; ``X-HTTP-Method-Override``: a GET decided as a read would
  become a DELETE), nor client-IP headers an upstream might believe;
- header names are compared with ``_`` read as ``-``: CGI, WSGI, PHP and Rack
  turn both into ``_`` (``X_Fluxauth_Org`` is ``HTTP_X_FLUXAUTH_ORG``, the very
  key of ``X-Fluxauth-Org``), which is why nginx drops such headers by default;
- framing of fluxauth's own: ``Content-Length`` is the one fluxauth checked
  (``request.check_framing``), whatever ``Connection`` names; a body longer than
  ``max_request_body`` is cut off (413), a client that pauses longer than
  ``client_body_timeout`` in its body or leaves the response unread longer than
  ``send_timeout`` is disconnected.
"""

from __future__ import annotations

import asyncio
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
from fluxauth.request import RequestHead, Scope
from fluxauth.responses import Headers, Message, Receive, Send, send_json
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
# Request headers that never reach the upstream as the client sent them
# (compared after ``_`` -> ``-``; every ``x-forwarded-*`` and ``x-fluxauth-*`` too).
_DROPPED_REQUEST = HOP_BY_HOP | {
    b"host",
    b"authorization",
    b"content-length",  # set by fluxauth from the length it checked
    b"expect",
    b"forwarded",
    b"x-real-ip",
    # Read by some frameworks as the real path or method (IIS, Symfony, Laravel,
    # Express method-override, Envoy): the upstream would serve what was not decided.
    b"x-original-url",
    b"x-original-uri",
    b"x-rewrite-url",
    b"x-envoy-original-path",
    b"x-http-method-override",
    b"x-http-method",
    b"x-method-override",
    # Client addresses that upstreams and their frameworks believe.
    b"true-client-ip",
    b"x-client-ip",
    b"x-cluster-client-ip",
    b"client-ip",
}
_DROPPED_PREFIXES = (b"x-fluxauth-", b"x-forwarded-")
_KEPT_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
_CHUNK = 64 * 1024


def dropped_header(name: bytes) -> bool:
    """Whether a client's header ``name`` (lower case) never reaches the upstream, however it is spelled."""
    normal = name.replace(b"_", b"-")
    return normal in _DROPPED_REQUEST or normal.startswith(_DROPPED_PREFIXES)


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(part.strip().lower() for part in value.split(b","))
    return named


class _ClientGone(Exception):
    """The client disconnected while its request body was being forwarded."""


class _ClientTooSlow(Exception):
    """The client paused longer than ``client_body_timeout`` in the middle of its body."""


class _BodyTooLarge(Exception):
    """The streamed body went past ``max_request_body``."""


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
        named = _connection_named(received)
        headers: CIMultiDict[str] = CIMultiDict()
        kept: dict[bytes, bytes] = {}
        host: bytes | None = None
        for name, value in received:
            if name == b"host":
                host = value
            if name in _KEPT_FORWARDED:
                kept[name] = kept[name] + b", " + value if name in kept else value
            if name in named or dropped_header(name):
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
        head: RequestHead | None = None,
    ) -> None:
        """Forward one request and stream the response; answer 502/504 if the upstream fails first.

        ``head`` is the request as the gate checked it (its framing); built from
        ``scope`` when not given.
        """
        assert self._session is not None, "Forwarder.start() was not awaited"
        if head is None:
            head = RequestHead.from_scope(scope)
        headers = self.request_headers(scope, principal)
        length = head.body_length
        if length is not None:
            headers["Content-Length"] = str(length)
        body = _BodyReader(
            receive, limit=self.settings.max_request_body, idle_timeout=self.settings.client_body_timeout
        )
        started = False
        sent_at = time.perf_counter()
        try:
            async with self._session.request(
                scope["method"],
                self.url(protocol, raw_path, scope.get("query_string", b"")),
                headers=headers,
                data=body.chunks() if head.has_body else None,
                allow_redirects=False,
                compress=None,
            ) as upstream:
                self.latency.observe(time.perf_counter() - sent_at)
                response_headers = (
                    _response_headers(upstream.raw_headers, private=principal is not None) + extra_headers
                )
                await self._send(
                    send, {"type": "http.response.start", "status": upstream.status, "headers": response_headers}
                )
                started = True
                if scope["method"] != "HEAD":
                    async for chunk in upstream.content.iter_chunked(_CHUNK):
                        await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})
                await self._send(send, {"type": "http.response.body", "body": b""})
        except TimeoutError:
            if body.failure is not None:  # the client's body, not the upstream, timed out
                await self._client_failed(send, body.failure, started, extra_headers)
                return
            self.errors["timeout"] += 1
            if started:
                log.warning("upstream timed out mid-response for %s", protocol)
                return  # the server closes the connection: the client sees a truncated body
            await send_json(
                send, 504, {"error": "upstream_timeout", "detail": "the upstream did not answer in time"}, extra_headers
            )
        except aiohttp.ClientError as exc:
            if body.failure is not None:
                await self._client_failed(send, body.failure, started, extra_headers)
                return
            self.errors["connection" if isinstance(exc, aiohttp.ClientConnectorError) else "protocol"] += 1
            if started:
                log.warning("upstream failed mid-response for %s: %s", protocol, type(exc).__name__)
                return
            await send_json(
                send, 502, {"error": "bad_gateway", "detail": "the upstream cannot be reached"}, extra_headers
            )
        except _SendStalled:
            self.errors["client_stalled"] += 1
            log.info("client left the response unread for %s s; disconnected", self.settings.send_timeout)
        except (_ClientGone, _ClientTooSlow, _BodyTooLarge) as exc:
            await self._client_failed(send, exc, started, extra_headers)

    async def _send(self, send: Send, message: Message) -> None:
        """``send``, but a client that does not take the data within ``send_timeout`` is dropped (slow read)."""
        try:
            async with asyncio.timeout(self.settings.send_timeout):
                await send(message)
        except TimeoutError:
            raise _SendStalled from None

    async def _client_failed(self, send: Send, failure: Exception, started: bool, extra_headers: Headers) -> None:
        """The client, not the upstream, broke off the request: answer it if it can still hear."""
        if isinstance(failure, _ClientGone) or started:
            return
        if isinstance(failure, _BodyTooLarge):
            self.errors["body_too_large"] += 1
            status, error = 413, "too_large"
            detail = f"the request body is larger than {self.settings.max_request_body} bytes"
        else:
            self.errors["client_timeout"] += 1
            status, error = 408, "request_timeout"
            detail = f"the request body paused for more than {self.settings.client_body_timeout} s"
        await send_json(send, status, {"error": error, "detail": detail}, [*extra_headers, (b"connection", b"close")])


class _SendStalled(Exception):
    """The client did not accept a piece of the response within ``send_timeout``."""


class _BodyReader:
    """The client's body as an async iterator for aiohttp, with a size limit and an idle timeout.

    aiohttp wraps whatever this raises into a ``ClientConnectionError``, so the
    reason is also kept in ``failure`` for ``Forwarder.forward`` to answer with.
    """

    def __init__(self, receive: Receive, *, limit: int, idle_timeout: float) -> None:
        self._receive = receive
        self._limit = limit
        self._idle_timeout = idle_timeout
        self.failure: Exception | None = None
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout):
                    message = await self._receive()
            except TimeoutError:
                self.failure = _ClientTooSlow()
                raise self.failure from None
            if message["type"] == "http.disconnect":
                self.failure = _ClientGone()
                raise self.failure
            body = message.get("body", b"")
            self.received += len(body)
            if self._limit and self.received > self._limit:
                self.failure = _BodyTooLarge()
                raise self.failure
            if body:
                yield body
            if not message.get("more_body", False):
                return


def _response_headers(raw: tuple[tuple[bytes, bytes], ...], *, private: bool) -> Headers:
    """The upstream's response headers without hop-by-hop ones.

    ``private``: the request was authenticated, so the answer is for that key
    alone. An upstream's ``public`` or ``s-maxage`` would let a shared cache in
    front of fluxauth serve it to anyone (RFC 9111 §3.5); they are replaced by
    ``private``.
    """
    named = _connection_named(list(raw))
    headers = [
        (name.lower(), value) for name, value in raw if name.lower() not in HOP_BY_HOP and name.lower() not in named
    ]
    if not private:
        return headers
    directives: list[bytes] = []
    kept = []
    for name, value in headers:
        if name == b"cache-control":
            directives += [part.strip() for part in value.split(b",") if part.strip()]
        else:
            kept.append((name, value))
    directives = [d for d in directives if d.lower() != b"public" and not d.lower().startswith(b"s-maxage")]
    if not any(d.lower() in (b"private", b"no-store") for d in directives):
        directives.insert(0, b"private")
    kept.append((b"cache-control", b", ".join(directives)))
    return kept
