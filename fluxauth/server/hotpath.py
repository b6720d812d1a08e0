"""The hot path without ASGI: a request that memory alone decides, relayed straight between two connections.

``fluxauth serve``'s protocol (``fluxauth/server/protocol.py``) offers each request it is
about to run as an ASGI task to ``HotPath.serve`` first. A GET or HEAD
without a body, whose decision needs neither the store, Redis nor argon2
(``Gate.decide_now``: the org's policy and the credential are cached) and
that is allowed, is answered here, from protocol callbacks:

- forwarded: the upstream request (``Forwarder.request_head``: the bytes the
  ASGI path sends) goes out on an idle pooled connection, and the response is
  relayed as it arrives through the same header filter
  (``Forwarder.response_headers``), its head and first body bytes in one write;
- forward-auth (``/_fluxauth/auth``): the 200 with the identity headers
  (``forward_auth.allowed_now``).

A routed request (``[[routes]]``) stays here too: its tiles stream through
untouched, headers mapped (``Location``, ``Link``); a metadata body is
collected, rewritten (``fluxauth.proxy.selfurls``) and written whole.

Everything else runs the ASGI app as before: refusals, uncached credentials,
bodies, internal endpoints, no idle upstream connection, an access log to
write, and a request whose reused upstream connection turned out closed
before any byte of an answer (the ASGI path sends it again on a new one).
What this saves per request, against the ASGI path: a task, the scope's
messages, uvicorn's per-header checks, the relay's coroutines, and one
write to the client. The limits are the same: ``upstream_read_timeout`` on
the upstream, ``send_timeout`` on a client that stops reading (the upstream
is paused meanwhile, so nothing piles up in memory).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from typing import Any, Protocol

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.server import ServerState

from fluxauth.decision.policy import Outcome
from fluxauth.decision.request import RequestHead
from fluxauth.decision.routing import Routed
from fluxauth.errors import UnwritableHost, UpstreamBroken, UpstreamError, UpstreamUnmappable
from fluxauth.proxy import forward_auth
from fluxauth.proxy.app import DECISION, FluxAuthApp
from fluxauth.proxy.forward import client_of, log_unmappable, partition_of
from fluxauth.proxy.responses import error_headers, own_headers, refusal_body
from fluxauth.proxy.selfurls import Rewrite
from fluxauth.timers import TimerHandle, Timers
from fluxauth.types import Headers
from fluxauth.upstream.connection import Connection
from fluxauth.upstream.framing import Head

log = logging.getLogger("fluxauth.forward")

AUTH_PATH = b"/_fluxauth/auth"
_NO_BODY = frozenset({204, 304})
# uvicorn's answer to an exception in the ASGI app (RequestResponseCycle.send_500_response,
# pinned in server/pins.py), so that a fault of fluxauth's own reads the same on both paths.
INTERNAL_ERROR_HEADERS: Headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21")]
INTERNAL_ERROR_BODY = b"Internal Server Error"


class SpliceHost(Protocol):
    """What the hot path needs of a connection's protocol: ``LimitedHttpToolsProtocol`` (``protocol.py``).

    Named here, as a protocol, so that the arrow runs one way: the connection's
    protocol offers each request to the hot path, which knows it only by this.
    """

    splice: Splice | None

    @property
    def transport(self) -> asyncio.Transport: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def server_state(self) -> ServerState: ...

    @property
    def pipeline(self) -> deque[Any]: ...

    @property
    def timers(self) -> Timers: ...

    def run_asgi(self, cycle: RequestResponseCycle) -> None: ...


class HotPath:
    """The hot path of one ``FluxAuthApp``, shared by all its connections."""

    def __init__(self, app: FluxAuthApp) -> None:
        self.app = app
        self.gate = app.gate
        self.trust = app.gate.proxies
        self.forwarder = app.forwarder
        self.pool = app.forwarder.pool
        self.send_timeout = app.settings.send_timeout

    def serve(self, protocol: SpliceHost, cycle: RequestResponseCycle) -> bool:
        """Answer ``cycle``'s request here if it is on the hot path; ``False`` leaves it to the ASGI app.

        Called once the parser has returned (``LimitedHttpToolsProtocol``),
        never from inside it. Nothing is sent, to the client or the upstream,
        before the last step: an exception before it leaves the request to
        the ASGI app, as if the hot path had declined it.
        """
        scope: dict[str, Any] = cycle.scope  # type: ignore[assignment]
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            return False
        raw_path = scope["raw_path"]
        if raw_path == AUTH_PATH:
            # As on the ASGI path, a body (which proxies do not send) is not read.
            headers = forward_auth.allowed_now(self.gate, scope)
            if headers is None:
                return False
            self.app.outcomes[200] += 1
            self.app.hot_path["auth"] += 1
            respond(protocol, cycle, 200, own_headers(b"", b"text/plain") + headers, b"")
            return True
        client = scope["client"]
        peer = client[0] if client else None
        head = RequestHead(method, raw_path, scope["query_string"], peer=peer, http_version=scope["http_version"])
        head.add_headers(scope["headers"])
        if head.has_body:
            return False
        decision = self.gate.decide_now(head)
        if decision is None or decision.outcome is not Outcome.FORWARD:
            return False
        assert decision.target is not None
        target = decision.target
        principal = decision.principal
        scope[DECISION] = decision  # for the ASGI app, should it get the request after all
        routed = target.routed
        rewrite = None
        if routed is None:
            origin = self.forwarder.origins[target.protocol]
        else:
            origin = self.forwarder.route_origins[routed.route.origin]
            rewrite = self.forwarder.rewrite_for(scope, routed)
        client = client_of(self.trust, head.peer, head.forwarded_for)
        upstream = self.pool.take_idle(origin, partition_of(principal), client)
        if upstream is None:
            return False
        try:
            request = self.forwarder.request_head(scope, head, principal, origin, target)
            splice = Splice(
                self,
                protocol,
                cycle,
                upstream,
                private=principal is not None,
                extra=self.gate.cors.response_headers(head.origin),
                rewrite=rewrite,
                routed=routed,
            )
            self.pool.send_to(upstream, request, splice, head_only=method == "HEAD")
        except BaseException:
            self.pool.release(upstream)  # nothing of it reached the client, nor (all of it) the upstream
            raise
        self.app.outcomes[200] += 1
        self.app.hot_path["forward"] += 1
        protocol.splice = splice
        return True


_hot_paths: weakref.WeakKeyDictionary[FluxAuthApp, HotPath] = weakref.WeakKeyDictionary()


def hot_path_of(app: object) -> HotPath | None:
    """The hot path of the ``FluxAuthApp`` that uvicorn serves, or ``None`` (the middleware, another app)."""
    if not isinstance(app, FluxAuthApp):
        return None
    hot = _hot_paths.get(app)
    if hot is None:
        hot = _hot_paths[app] = HotPath(app)
    return hot


def respond(protocol: SpliceHost, cycle: RequestResponseCycle, status: int, headers: Headers, body: bytes) -> None:
    """Write a whole answer of fluxauth's own and end the request, as uvicorn's ``send`` would."""
    protocol.transport.write(_head(protocol, cycle, status, headers) + body)
    _complete(protocol, cycle)


def _head(protocol: SpliceHost, cycle: RequestResponseCycle, status: int, headers: Headers) -> bytes:
    lines = [STATUS_LINE[status]]
    for name, value in protocol.server_state.default_headers:
        lines += (name, b": ", value, b"\r\n")
    for name, value in headers:
        lines += (name, b": ", value, b"\r\n")
    if not cycle.keep_alive:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    cycle.response_started = True
    return b"".join(lines)


def _complete(protocol: SpliceHost, cycle: RequestResponseCycle) -> None:
    cycle.response_complete = True
    cycle.message_event.set()
    if not cycle.keep_alive:
        protocol.transport.close()
    if protocol.pipeline:
        # The next request may take the upstream connection just released,
        # whose callback this still is: start it afresh from the loop.
        protocol.loop.call_soon(cycle.on_response)
    else:
        cycle.on_response()


class Splice:
    """One response relayed from an upstream connection to the client's, with the backpressure of the slower side."""

    __slots__ = (
        "_chunked",
        "_collecting",
        "_cycle",
        "_extra",
        "_hot",
        "_pending",
        "_private",
        "_protocol",
        "_rewrite",
        "_routed",
        "_sent_at",
        "_stall_timer",
        "_status",
        "_transport",
        "_upstream",
        "_written",
    )

    def __init__(
        self,
        hot: HotPath,
        protocol: SpliceHost,
        cycle: RequestResponseCycle,
        upstream: Connection,
        *,
        private: bool,
        extra: Headers,
        rewrite: Rewrite | None = None,
        routed: Routed | None = None,
    ) -> None:
        self._hot = hot
        self._protocol = protocol
        self._transport = protocol.transport
        self._cycle = cycle
        self._upstream = upstream
        self._private = private
        self._extra = extra
        self._chunked = False
        self._pending: bytes | None = None  # the response head, until it can leave with the first body bytes
        self._written = False  # something went to the client
        self._sent_at = time.perf_counter()
        self._stall_timer: TimerHandle | None = None
        self._rewrite = rewrite  # a routed response's self-URL mapping
        self._routed = routed
        self._collecting = False  # a metadata body is being collected, to be written whole at the end
        self._status = 0

    # -- the upstream's side (upstream.Sink) ----------------------------------

    def upstream_head(self, head: Head) -> None:
        self._hot.forwarder.latency.observe(time.perf_counter() - self._sent_at)
        status = head.status
        headers = self._hot.forwarder.response_headers(self._upstream.origin, head.headers, private=self._private)
        headers += self._extra
        rewrite = self._rewrite
        if rewrite is not None:
            try:
                headers = rewrite.head(status, headers, head_only=self._cycle.scope["method"] == "HEAD")
            except (UpstreamUnmappable, UnwritableHost) as exc:
                self._cannot_rewrite(exc)
                return
            if rewrite.collect:
                self._collecting = True
                self._status = status
                return
        # Framing of our own towards the client, as uvicorn's send does: the
        # upstream's length if it gave one, else chunked (the upstream's chunks
        # arrive decoded; a body that ends with the connection gets one too).
        has_length = any(name == b"content-length" for name, _ in headers)
        if not has_length and self._cycle.scope["method"] != "HEAD" and status not in _NO_BODY:
            self._chunked = True
            headers.append((b"transfer-encoding", b"chunked"))
        self._pending = _head(self._protocol, self._cycle, status, headers)

    def upstream_body(self, data: bytes) -> None:
        if self._collecting:
            assert self._rewrite is not None
            try:
                self._rewrite.feed(data)
            except UpstreamUnmappable as exc:
                self._cannot_rewrite(exc)
            return
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._transport.writelines((pending, data))  # one system call where the transport can
        else:
            self._transport.write(data)
        self._written = True

    def upstream_end(self) -> None:
        if self._collecting:
            self._collecting = False
            assert self._rewrite is not None
            try:
                headers, body = self._rewrite.finish()
            except UpstreamUnmappable as exc:
                self._cannot_rewrite(exc)
                return
            self._transport.write(_head(self._protocol, self._cycle, self._status, headers) + body)
            self._written = True
            self._finish()
            _complete(self._protocol, self._cycle)
            return
        tail = b"0\r\n\r\n" if self._chunked else b""
        if self._pending is not None:
            tail = self._pending + tail
            self._pending = None
        if tail:
            self._transport.write(tail)
        self._written = True
        self._finish()
        _complete(self._protocol, self._cycle)

    def upstream_failed(self, failure: UpstreamError) -> None:
        hot = self._hot
        if self._written:
            # The head went out already: the connection is closed and the
            # client sees a truncated body, as on the ASGI path.
            hot.forwarder.errors[failure.kind] += 1
            log.warning("upstream failed mid-response: %s", type(failure).__name__)
            self._finish()
            self._transport.close()
            return
        self._finish()
        if isinstance(failure, UpstreamBroken) and not self._upstream.started:
            # A reused connection that the upstream had closed: nothing was
            # answered, so the ASGI path sends the request again (on a new one).
            hot.app.outcomes[200] -= 1  # counted again there
            hot.app.hot_path["forward"] -= 1
            hot.app.hot_path["handed_back"] += 1
            self._protocol.run_asgi(self._cycle)
            return
        hot.forwarder.errors[failure.kind] += 1
        body = refusal_body(failure.error, failure.detail)
        headers = own_headers(body, b"application/json") + error_headers(failure) + self._extra
        respond(self._protocol, self._cycle, failure.status, headers, body)

    def upstream_fault(self, exc: Exception) -> None:
        """fluxauth's own code failed on the response: logged with its traceback, answered 500 (or cut off)."""
        log.error("fluxauth failed relaying an upstream response on the hot path", exc_info=exc)
        self._collecting = False
        self._finish()
        if self._written:
            self._transport.close()
            return
        self._cycle.keep_alive = False
        respond(self._protocol, self._cycle, 500, list(INTERNAL_ERROR_HEADERS), INTERNAL_ERROR_BODY)

    def _cannot_rewrite(self, failure: UpstreamUnmappable | UnwritableHost) -> None:
        """A response that cannot be rewritten: 502 (400 for the client's Host), the upstream connection closed."""
        self._collecting = False
        if isinstance(failure, UpstreamUnmappable):
            self._hot.forwarder.errors[failure.kind] += 1
            assert self._routed is not None
            log_unmappable(self._routed, failure)
        self._finish()
        body = refusal_body(failure.error, failure.detail)
        respond(self._protocol, self._cycle, failure.status, own_headers(body, b"application/json") + self._extra, body)

    # -- the client's side (called by the protocol) ----------------------------

    def client_paused(self) -> None:
        """The client's send buffer is full: stop reading the upstream, and give the client ``send_timeout``."""
        self._upstream.pause_reading()
        if self._stall_timer is None:
            timers = self._protocol.timers
            self._stall_timer = timers.call_at(timers.time() + self._hot.send_timeout, self._client_stalled)

    def client_resumed(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._upstream.resume_reading()

    def client_lost(self) -> None:
        """The client went away: the upstream connection, with a response half read, is not reused."""
        self._finish()

    def _client_stalled(self) -> None:
        self._stall_timer = None
        self._hot.forwarder.errors["client_stalled"] += 1
        log.info("client left the response unread for %s s; disconnected", self._hot.send_timeout)
        self._finish()
        self._transport.abort()

    def _finish(self) -> None:
        if self._protocol.splice is not self:
            return
        self._protocol.splice = None
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None
        self._hot.pool.release(self._upstream)
