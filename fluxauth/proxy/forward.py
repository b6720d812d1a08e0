"""Forwarding to the upstream: one connection pool per process (``fluxauth.upstream``), bodies streamed both ways.

What reaches the upstream:

- the raw path and query exactly as decided on, as bytes (nothing re-quotes them);
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
  ``client_body_timeout`` in its body, or whose body falls behind
  ``client_body_min_rate``, gets 408, and one that leaves the response unread
  longer than ``send_timeout`` is disconnected.

A client that goes away ends the exchange at once (``_ClientWatch``): the
upstream connection is closed whether its answer has begun or not, and the
request's share of the pool (``client_of``, ``partition_of``) is free again.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from fluxauth.auth.ratelimit import client_subject
from fluxauth.config.settings import Settings
from fluxauth.decision.headers import (
    connection_named,
    dropped_before_forwarding,
    identity,
    upstream_response_headers,
    without_credential,
)
from fluxauth.decision.policy import Principal
from fluxauth.decision.proxies import ProxyTrust, forwarded_headers, public_origin
from fluxauth.decision.request import RequestHead
from fluxauth.decision.routing import Routed
from fluxauth.decision.target import Target
from fluxauth.errors import (
    BodyTooLarge,
    ClientFailed,
    ClientGone,
    ClientStalled,
    Refusal,
    RequestTimeout,
    UnwritableHost,
    UpstreamError,
    UpstreamUnmappable,
)
from fluxauth.histogram import Histogram
from fluxauth.proxy.responses import send_error
from fluxauth.proxy.selfurls import Rewrite, SelfUrls
from fluxauth.timers import TimerHandle, Timers, timeout_at
from fluxauth.types import Headers, Message, Receive, Scope, Send
from fluxauth.upstream.origin import Origin
from fluxauth.upstream.pool import UpstreamPool
from fluxauth.upstream.response import Response

log = logging.getLogger("fluxauth.forward")

_KEPT_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")
# Methods whose requests carry no body unless they say so: no "Content-Length: 0" is added.
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})
# The content codings a routed metadata body may come in: those fluxauth can decode to rewrite it.
_DECODABLE = frozenset({b"gzip", b"x-gzip", b"deflate", b"identity"})


def log_unmappable(routed: Routed, failure: UpstreamUnmappable) -> None:
    """The log line of a metadata response answered 502 instead: which route, and why."""
    log.warning("%s: %s; answered 502, not passed through with upstream URLs in it", routed.route.name, failure)


@functools.lru_cache(maxsize=256)  # clients send the same few Accept-Encoding values
def accept_decodable(values: tuple[bytes, ...]) -> bytes:
    """A client's ``Accept-Encoding`` reduced to the codings fluxauth can decode (routes), ``identity`` if none."""
    kept = [
        part.strip()
        for value in values
        for part in value.split(b",")
        if part.split(b";", 1)[0].strip().lower() in _DECODABLE
    ]
    return b", ".join(kept) or b"identity"


def client_of(trust: ProxyTrust, peer: str | None, forwarded_for: bytes | None) -> str:
    """Whose share of the upstream connections a request takes: its client's address, an IPv6 client's /64."""
    address = trust.client(peer, forwarded_for)
    return client_subject(address) if ":" in address else address


def partition_of(principal: Principal | None) -> str | None:
    """Which requests may reuse a connection after this one's (``upstream/pool.py``): those of the same org.

    Anonymous requests (``None``) are a partition of their own: they are only
    ever forwarded to read public data.
    """
    return None if principal is None else principal.org


def upstream_credentials(origin: Origin) -> tuple[bytes, ...]:
    """The strings that would give away fluxauth's own credentials to ``origin`` (from its URL's userinfo).

    The Basic value, ``user:password`` and the password alone (when it is
    long enough not to turn up by chance in an ordinary header).
    """
    if origin.authorization is None:
        return ()
    blob = origin.authorization.removeprefix(b"Basic ")
    userinfo = base64.b64decode(blob)
    password = userinfo.partition(b":")[2]
    return tuple(part for part in (blob, userinfo, password if len(password) >= 8 else b"") if part)


class Forwarder:
    """Sends decided requests upstream and streams the answers back."""

    def __init__(self, settings: Settings, trust: ProxyTrust, *, timers: Timers | None = None) -> None:
        self.settings = settings
        self.trust = trust
        self.pool = UpstreamPool(
            max_connections=settings.upstream_max_connections,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            max_header_bytes=settings.upstream_max_header_bytes,
            client_share=settings.upstream_client_share,
            timers=timers,
        )
        self.origins = {p: Origin.from_url(settings.upstream_for(p)) for p in settings.protocols}
        self.route_origins = {route.origin: Origin.from_url(route.origin) for route in settings.routes}
        self.cors = bool(settings.cors_allow_origins)  # fluxauth answers for CORS: upstream grants dropped
        # Only origins with credentials: empty (and skipped) in the usual case.
        origins = [*self.origins.values(), *self.route_origins.values()]
        self._credentials = {o: c for o in origins if (c := upstream_credentials(o))}
        self.latency = Histogram()  # until the upstream's response headers
        self.errors: Counter[str] = Counter()

    async def start(self) -> None:
        """Nothing to open ahead: connections are made on first use and kept."""

    async def stop(self) -> None:
        await self.pool.close()

    def origin_for(self, target: Target) -> Origin:
        """Where ``target``'s request goes: its route's upstream, or its protocol's."""
        routed = target.routed
        return self.origins[target.protocol] if routed is None else self.route_origins[routed.route.origin]

    def rewrite_for(self, scope: Scope, routed: Routed) -> Rewrite:
        """A routed response's rewrite; its self-URL mapping is made only if the response needs one."""
        return Rewrite(functools.partial(self._self_urls, scope, routed), self.settings.max_metadata_body)

    def _self_urls(self, scope: Scope, routed: Routed) -> SelfUrls | None:
        """From the upstream's base to the public one, as the client named it; ``None`` for a Host not plain."""
        host: bytes | None = None
        forwarded: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name in (b"x-forwarded-proto", b"x-forwarded-host"):
                forwarded.setdefault(name, value)
        client = scope.get("client")
        public = public_origin(self.trust, client[0] if client else None, scope.get("scheme", "http"), host, forwarded)
        if public is None:
            return None
        route = routed.route
        return SelfUrls(route.authority.encode("idna"), routed.base, public + routed.public, route.pinned)

    def request_head(
        self, scope: Scope, head: RequestHead, principal: Principal | None, origin: Origin, target: Target
    ) -> bytes:
        """The request line and headers the upstream receives, built from what the client sent.

        A routed request goes to its route's path with its query (pinned
        parameters added), without ``X-Forwarded-Host`` (the upstream names
        its own base, which fluxauth maps back: MapProxy, for one, would
        otherwise write the public host before its internal path), and asks
        only for content codings that fluxauth can decode.
        """
        received: list[tuple[bytes, bytes]] = scope["headers"]
        kept_headers: list[tuple[bytes, bytes]] = []
        forwarded: dict[bytes, bytes] = {}
        host: bytes | None = None
        named: set[bytes] | None = None
        for name, value in received:
            if name == b"host":
                host = value
            elif name in _KEPT_FORWARDED:
                forwarded[name] = forwarded[name] + b", " + value if name in forwarded else value
            elif name == b"connection" and named is None:
                named = connection_named(received)  # every Connection header at once
            if not dropped_before_forwarding(name):
                kept_headers.append((name, value))
        if named:
            kept_headers = [(name, value) for name, value in kept_headers if name not in named]
        routed = target.routed
        if routed is None:
            path, query = target.raw_path, head.query
        else:
            path, query = routed.path, routed.query
            codings = tuple(value for name, value in kept_headers if name == b"accept-encoding")
            if codings:
                kept_headers = [(name, value) for name, value in kept_headers if name != b"accept-encoding"]
            kept_headers.append((b"accept-encoding", accept_decodable(codings)))
        lines = [
            head.method.encode("ascii"),
            b" ",
            origin.prefix,
            path,
            b"?" + query if query else b"",
            b" HTTP/1.1\r\nhost: ",
            origin.host_header,
            b"\r\n",
        ]
        for name, value in kept_headers:
            lines += (name, b": ", value, b"\r\n")
        client = scope.get("client")
        for name, value in forwarded_headers(
            self.trust,
            client[0] if client else None,
            scope.get("scheme", "http"),
            host,
            forwarded,
            with_host=routed is None,
        ):
            lines += (name, b": ", value, b"\r\n")
        for name, value in identity(principal):
            lines += (name, b": ", value, b"\r\n")
        if origin.authorization is not None:  # fluxauth's own credentials to the upstream, from its URL
            lines += (b"authorization: ", origin.authorization, b"\r\n")
        length = head.body_length
        if length is not None:
            if length or head.method not in _BODILESS:
                lines += (b"content-length: ", str(length).encode("ascii"), b"\r\n")
        elif head.transfer_encoding:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    def response_headers(self, origin: Origin, raw: Headers, *, private: bool) -> Headers:
        """What the client gets of the upstream's response headers (``headers.upstream_response_headers``).

        Less any header that holds fluxauth's own credentials to ``origin``: an
        upstream that reflects request headers into its response would hand
        them to the client. (A body that echoes them cannot be filtered:
        SECURITY.md.)
        """
        headers = upstream_response_headers(raw, private=private, cors=self.cors)
        if not self._credentials:
            return headers
        secrets = self._credentials.get(origin)
        return headers if secrets is None else without_credential(headers, secrets)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        target: Target,
        principal: Principal | None,
        extra_headers: Headers,
        head: RequestHead | None = None,
    ) -> None:
        """Forward one request and stream the response; answer 502/504 if the upstream fails first.

        ``head`` is the request as the gate checked it (its framing); built from
        ``scope`` when not given. A routed response has its self-URLs mapped
        back (``fluxauth.proxy.selfurls``): a metadata body is collected,
        rewritten and sent whole; anything else streams as it arrives.
        """
        if head is None:
            head = RequestHead.from_scope(scope)
        protocol = target.protocol
        origin = self.origin_for(target)
        rewrite = None if target.routed is None else self.rewrite_for(scope, target.routed)
        settings = self.settings
        watch = _ClientWatch(receive, self.pool.timers, settings.send_timeout)
        body = None
        if head.has_body:
            body = _BodyReader(
                receive,
                self.pool.timers,
                limit=settings.max_request_body,
                idle_timeout=settings.client_body_timeout,
                min_rate=settings.client_body_min_rate,
                on_end=watch.listen,
            )
        else:
            watch.listen()
        response: Response | None = None
        sent_at = time.perf_counter()
        try:
            try:
                response = await self.pool.send(
                    origin,
                    self.request_head(scope, head, principal, origin, target),
                    None if body is None else body.chunks(),
                    method=head.method,
                    chunked=head.body_length is None,
                    partition=partition_of(principal),
                    client=client_of(self.trust, head.peer, head.forwarded_for),
                )
            except UpstreamError as exc:
                if body is not None and body.failure is not None:  # the client's body broke off, not the upstream
                    await self._client_failed(send, body.failure, extra_headers)
                    return
                self.errors[exc.kind] += 1
                await send_error(send, exc, extra_headers)
                return
            self.latency.observe(time.perf_counter() - sent_at)
            headers = self.response_headers(origin, response.headers, private=principal is not None) + extra_headers
            head_only = head.method == "HEAD"
            try:
                if rewrite is None:
                    await self._relay(send, watch, response, headers, head_only=head_only)
                else:
                    assert target.routed is not None
                    await self._relay_rewritten(
                        send, watch, response, headers, rewrite, target.routed, extra_headers, head_only=head_only
                    )
            except UpstreamError as exc:
                # The head went out already: the server closes the connection and
                # the client sees a truncated body. A client whose own body broke
                # off is no failure of the upstream's.
                if body is None or body.failure is None:
                    self.errors[exc.kind] += 1
                    log.warning("upstream failed mid-response for %s: %s", protocol, type(exc).__name__)
        except asyncio.CancelledError:
            ended = watch.ended
            if ended is None:
                raise
            watch.uncancel()
            if isinstance(ended, ClientStalled):
                self.errors["client_stalled"] += 1
                log.info("client left the response unread for %s s; disconnected", settings.send_timeout)
            else:
                self.errors["client_gone"] += 1
        finally:
            watch.close()
            if response is not None:
                self.pool.release(response.connection)

    async def _relay_rewritten(
        self,
        send: Send,
        watch: _ClientWatch,
        upstream: Response,
        headers: Headers,
        rewrite: Rewrite,
        routed: Routed,
        extra_headers: Headers,
        *,
        head_only: bool,
    ) -> None:
        """A routed response: headers mapped; a metadata body collected (bounded), mapped and sent whole."""
        try:
            headers = rewrite.head(upstream.status, headers, head_only=head_only)
            if rewrite.collect:
                while chunk := await upstream.read():
                    rewrite.feed(chunk)
                headers, body = rewrite.finish()
        except UpstreamUnmappable as exc:
            self.errors[exc.kind] += 1
            log_unmappable(routed, exc)
            await send_error(send, exc, extra_headers)
            return
        except UnwritableHost as exc:
            await send_error(send, exc, extra_headers)
            return
        if not rewrite.collect:
            await self._relay(send, watch, upstream, headers, head_only=head_only)
            return
        await watch.send(send, {"type": "http.response.start", "status": upstream.status, "headers": headers})
        await watch.send(send, {"type": "http.response.body", "body": body})

    async def _relay(
        self, send: Send, watch: _ClientWatch, response: Response, headers: Headers, *, head_only: bool
    ) -> None:
        """The response to the client, piece by piece as it arrives."""
        await watch.send(send, {"type": "http.response.start", "status": response.status, "headers": headers})
        if head_only:
            await watch.send(send, {"type": "http.response.body", "body": b""})
            return
        while True:
            chunk = await response.read()
            if not chunk:
                await watch.send(send, {"type": "http.response.body", "body": b""})
                return
            # A body that is whole already goes out in one piece (a tile, usually).
            more = not response.complete
            await watch.send(send, {"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                return

    async def _client_failed(self, send: Send, failure: Refusal | ClientFailed, extra_headers: Headers) -> None:
        """The client, not the upstream, broke off the request: answer it if it can still hear."""
        if isinstance(failure, ClientFailed):
            self.errors["client_gone"] += 1
            return
        self.errors["body_too_large" if isinstance(failure, BodyTooLarge) else "client_timeout"] += 1
        await send_error(send, failure, [*extra_headers, (b"connection", b"close")])


class _ClientWatch:
    """The client while its request is forwarded: gone (``http.disconnect``), or not reading (``send_timeout``).

    Either ends the exchange at once: the forwarding task is cancelled where
    it waits (for a connection, the upstream's head or body, the client), and
    the upstream connection is closed with it. uvicorn's ``send`` returns
    silently to a client that is gone, and nothing else listens for
    ``http.disconnect``: before this, 256 requests closed as soon as sent held
    256 upstream connections until their slow answers were read to the end
    for nobody. One timer per response for the slow reader, not one per
    piece: it looks at the piece being sent when it fires, and is set again
    for that piece's own deadline.
    """

    def __init__(self, receive: Receive, timers: Timers, send_timeout: float) -> None:
        self._receive = receive
        self._timers = timers
        self._task = asyncio.current_task()
        self._timeout = send_timeout
        self._since: float | None = None  # when the piece being sent began; None between pieces
        self._listener: asyncio.Task[None] | None = None
        self._closed = False
        self.ended: ClientFailed | None = None  # why the exchange was ended: ClientGone, ClientStalled
        self._timer: TimerHandle = timers.call_at(timers.time() + send_timeout, self._check)

    def listen(self) -> None:
        """Listen for the client going away, once its body (if any) is read: ``receive`` is free then."""
        if not self._closed:
            self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._end(ClientGone())

    def _end(self, reason: ClientFailed) -> None:
        if self.ended is None and not self._closed and self._task is not None:
            self.ended = reason
            self._task.cancel()

    def uncancel(self) -> None:
        """The cancellation was ours, and is handled."""
        assert self._task is not None
        self._task.uncancel()

    async def send(self, send: Send, message: Message) -> None:
        self._since = self._timers.time()
        try:
            await send(message)
        finally:
            self._since = None

    def _check(self) -> None:
        since = self._since
        now = self._timers.time()
        if since is not None and now - since >= self._timeout:
            self._end(ClientStalled())
            return
        if not self._closed:
            when = now + self._timeout if since is None else since + self._timeout
            self._timer = self._timers.call_at(when, self._check)

    def close(self) -> None:
        self._closed = True
        self._timer.cancel()
        if self._listener is not None:
            self._listener.cancel()


class _BodyReader:
    """The client's body as an async iterator for the upstream, with a size limit, a pause limit and a pace.

    The pace (``min_rate``, as Apache's mod_reqtimeout ``MinRate``): the body
    may take ``idle_timeout`` plus a second for every ``min_rate`` bytes. A
    pause limit alone let a body of a million bytes, one every 10 s, hold an
    upstream connection for 115 days. What ends a body early is also kept in
    ``failure``: the upstream's side sees only a connection broken off, and
    ``Forwarder.forward`` answers the client with the reason.
    """

    def __init__(
        self,
        receive: Receive,
        timers: Timers,
        *,
        limit: int,
        idle_timeout: float,
        min_rate: int,
        on_end: Callable[[], None],
    ) -> None:
        self._receive = receive
        self._timers = timers
        self._limit = limit
        self._idle_timeout = idle_timeout
        self._min_rate = min_rate
        self._on_end = on_end
        self.failure: Refusal | ClientFailed | None = None
        self.received = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        timers = self._timers
        started = timers.time()
        while True:
            now = timers.time()
            when, paused = now + self._idle_timeout, True
            if self._min_rate:
                paced = started + self._idle_timeout + self.received / self._min_rate
                if paced < when:
                    when, paused = paced, False
            try:
                async with timeout_at(timers, when):
                    message = await self._receive()
            except TimeoutError:
                if paused:
                    detail = f"the request body paused for more than {self._idle_timeout:g} s"
                else:
                    detail = f"the request body arrived slower than {self._min_rate} bytes/s"
                self.failure = RequestTimeout(detail)
                raise self.failure from None
            if message["type"] == "http.disconnect":
                self.failure = ClientGone()
                raise self.failure
            body = message.get("body", b"")
            self.received += len(body)
            if self._limit and self.received > self._limit:
                self.failure = BodyTooLarge(f"the request body is larger than {self._limit} bytes")
                raise self.failure
            if body:
                yield body
            if not message.get("more_body", False):
                self._on_end()
                return
