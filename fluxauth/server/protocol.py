"""The HTTP/1.1 protocol ``fluxauth serve`` runs: uvicorn's httptools protocol with the limits it lacks.

uvicorn (0.54) with httptools (llhttp) refuses malformed framing itself —
``Content-Length`` with ``Transfer-Encoding``, repeated or listed lengths,
transfer codings other than a final ``chunked``, obs-fold, bare CR or LF,
NUL and raw non-ASCII in the target — but it bounds neither the size of a
request head nor the time a client may take to send it: a 200 MB header is
read into memory (and concatenated piece by piece, in quadratic time), and a
connection that has sent half a request line, or nothing at all, is held for
ever (slowloris). ``timeout_keep_alive`` only covers the quiet time between
two requests. This protocol adds:

- ``max_header_bytes``: a request line plus headers longer than this is
  answered 431 and the connection closed: counted exactly once the head is
  parsed, and, while it is still arriving, per read (so that an endless head
  is cut off after at most one read past the limit, not buffered for ever);
- ``client_header_timeout``: a request head (from the connection's first byte
  or the request's first byte) not complete within this is answered 408 and
  the connection closed.

Both come from the served app's settings (``FluxAuthApp`` or
``FluxAuthMiddleware``), or the defaults. The wait for a head and uvicorn's
keep-alive wait between requests share one timer per connection, moved
lazily, instead of a timer or two per request. The idle wait ends when a
request begins, not at any byte: llhttp swallows CR and LF between messages
without beginning one, and a client that sent a bare CRLF after a response
and went silent was kept for ever (3 of them for 150 s against a 5 s
keep-alive; 493 of them took every file descriptor of a 512-fd server).

It is also where the hot path (``fluxauth/server/hotpath.py``) comes in: each
request uvicorn is about to run as an ASGI task is offered to it first — once
the parser has returned, never from inside its callbacks, so that an
exception in fluxauth's own code is logged with its traceback and answered
500 (or the request handed to the ASGI app) instead of passing for the
client's malformed request (uvicorn answers those 400, without a trace).

Every uvicorn method this class overrides or mimics is pinned by its source
(``fluxauth/server/pins.py``, and why).
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Any, Literal

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from fluxauth.config.settings import Settings
from fluxauth.errors import HeadTooLarge, Refusal, RequestTimeout
from fluxauth.proxy.responses import refusal_body
from fluxauth.server.hotpath import INTERNAL_ERROR_BODY, INTERNAL_ERROR_HEADERS, Splice, hot_path_of
from fluxauth.timers import TimerHandle, Timers

log = logging.getLogger("fluxauth.server")


STATUS_500 = STATUS_LINE[500]


class _HeadTooLarge(Exception):
    """Raised from a parser callback to stop httptools at a head over ``max_header_bytes``."""


def _settings_of(app: object) -> tuple[Settings, Timers | None]:
    """The settings and timers of the fluxauth app or middleware that uvicorn serves, under any wrappers."""
    for _ in range(8):
        gate = getattr(app, "gate", None)
        settings = getattr(gate, "settings", None)
        if isinstance(settings, Settings):
            return settings, getattr(app, "timers", None)
        app = getattr(app, "app", None)
        if app is None:
            break
    return Settings(), None


def _refusal(refusal: Refusal) -> bytes:
    """A whole answer to ``refusal``, as the protocol writes it before the app ever sees the request."""
    body = refusal_body(refusal.error, refusal.detail)
    head = (
        f"HTTP/1.1 {refusal.status} {HTTPStatus(refusal.status).phrase}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on the size of a request head and on the time to send it."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        settings, timers = _settings_of(self.app)
        # The event loop's clock and timers, or those a test drives (fluxauth/timers.py).
        self.timers: Timers = timers or self.loop
        self._time = self.timers.time
        self.max_header_bytes = settings.max_header_bytes
        self.header_timeout = settings.client_header_timeout
        self._in_head = True  # waiting for, or reading, a request head
        self._head_bytes = 0
        # One timer for both waits a connection can be in: for a request head
        # to complete ("head", client_header_timeout) and, between requests,
        # for the next one to begin ("idle", uvicorn's timeout_keep_alive).
        # Only the deadline moves per request; the timer, when it fires early,
        # is set again for the deadline (a timer per request cost more than
        # deciding the request: fluxauth/server/hotpath.py).
        self._deadline: float | None = None
        self._waiting_for: Literal["head", "idle"] = "head"
        self._timer: TimerHandle | None = None
        self._too_large = False  # the head just parsed is over the limit
        self._refused = False  # answered (or about to be) and closing: read nothing more
        # Requests that memory alone decides skip the ASGI app (fluxauth/server/hotpath.py);
        # not when an access log is asked for (uvicorn writes it from the ASGI
        # path). The setting, not uvicorn's own test of it (does the logger have
        # handlers?), which log capture in tests, for one, makes true.
        self._hot = None if config.access_log else hot_path_of(self.app)
        self.splice: Splice | None = None  # the response being relayed on the hot path
        # A request whose head the parser completed, to start once feed_data
        # returns: the parser's callbacks only collect (as h11 and aiohttp do).
        self._feeding = False
        self._ready: tuple[RequestResponseCycle, ASGI3Application] | None = None

    # -- connection ----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._hot is not None and self._hot.app.on_admin_listener(self.server):
            self._hot = None  # the admin listener serves management only, always through the app
        self._wait("head", self.header_timeout)  # a connection that never sends a byte is a slowloris too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self.splice is not None:
            self.splice.client_lost()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.splice is not None:
            self.splice.client_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.splice is not None:
            self.splice.client_resumed()

    # -- the hot path ----------------------------------------------------------

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn calls this for each request it runs: from on_headers_complete
        # (inside the parser: deferred until it returns), or once the requests
        # pipelined before it are answered.
        if self._feeding:
            assert self._ready is None  # the next requests of this read wait in uvicorn's pipeline
            self._ready = (cycle, app)
            return
        self._start(cycle, app)

    def _start(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        """Offer a request to the hot path, else run the ASGI app for it."""
        hot = self._hot
        if hot is not None and app is self.app:
            try:
                if hot.serve(self, cycle):
                    return
            except Exception:  # fluxauth's own bug: logged; the ASGI app answers instead, nothing was sent yet
                log.exception("the hot path failed on a request; the ASGI app answers it")
                hot.app.hot_path["fault"] += 1
        super()._start_asgi_task(cycle, app)

    def run_asgi(self, cycle: RequestResponseCycle) -> None:
        """Run the ASGI app for a request that the hot path gave back."""
        super()._start_asgi_task(cycle, self.app)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the head is already too long: feed the parser nothing more
        if self._in_head:
            # Counted per read, not per byte of the head: a head may pass the
            # limit by up to one read (64-256 KiB) before it is refused.
            self._head_bytes += len(data)
        # uvicorn's data_received, but that a byte does not end the idle wait
        # (on_message_begin does), and that an exception of a callback's own is
        # told from the client's malformed request.
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            self._feeding = False
            self._callback_failed(exc)
            return
        except httptools.HttpParserError:
            self._feeding = False
            self._ready = None
            self._bad_request()
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        finally:
            self._feeding = False
        ready, self._ready = self._ready, None
        if ready is not None and not self.transport.is_closing():
            self._start(*ready)
        if self._refused or self.transport.is_closing():
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            self._refuse_too_large()

    def _bad_request(self) -> None:
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _callback_failed(self, exc: httptools.HttpParserCallbackError) -> None:
        ready, self._ready = self._ready, None  # a request whose head completed in this read: never started
        cause = exc.__context__
        if isinstance(cause, _HeadTooLarge):
            self._refuse_too_large()
        elif cause is None or isinstance(cause, httptools.HttpParserError | UnicodeError):
            self._bad_request()  # what the client sent (a URL httptools cannot parse...)
        else:
            # A bug in a callback (fluxauth's or uvicorn's), not the client's request.
            log.error("fluxauth failed reading a request", exc_info=cause)
            head = [STATUS_500]
            for name, value in self.server_state.default_headers:
                head += (name, b": ", value, b"\r\n")
            for name, value in INTERNAL_ERROR_HEADERS:
                head += (name, b": ", value, b"\r\n")
            head.append(b"connection: close\r\n\r\n")
            self._close_with(b"".join(head) + INTERNAL_ERROR_BODY, now=ready is not None and ready[0] is self.cycle)

    # -- parser callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        if self._deadline is None or self._waiting_for != "head":
            # The first request keeps the deadline set at connection_made.
            self._wait("head", self.header_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._deadline = None
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._too_large = True
            # Stops the parser: uvicorn answers parse errors with send_400_response, below.
            raise _HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._refuse_too_large()
        else:
            super().send_400_response(msg)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    # -- waiting: the next request, a request head -----------------------------

    def on_response_complete(self) -> None:
        # uvicorn's, but for the keep-alive timer: the idle wait is ours (_wait).
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._deadline is None:
            self._wait("idle", self.timeout_keep_alive)
        # else: the next head has begun (pipelined): its own deadline runs on.

    def _unset_keepalive_if_required(self) -> None:
        # uvicorn calls this from connection_lost (and its own data_received,
        # which this class replaces). The idle wait is not over at any byte —
        # a bare CRLF between requests begins none — but when on_message_begin
        # starts the wait for a head.
        pass

    def _wait(self, what: Literal["head", "idle"], seconds: float) -> None:
        self._waiting_for = what
        deadline = self._deadline = self._time() + seconds
        if self._timer is not None:
            if self._timer.when() <= deadline:
                return  # it fires first and finds the deadline later: the usual case, no new timer
            self._timer.cancel()
        self._timer = self.timers.call_at(deadline, self._check_deadline)

    def _stop_timer(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return
        if self._time() < deadline:
            self._timer = self.timers.call_at(deadline, self._check_deadline)
            return
        self._deadline = None
        if self._waiting_for == "idle":
            self.timeout_keep_alive_handler()
        elif self._in_head:
            self._head_timed_out()

    # -- limits --------------------------------------------------------------

    def _head_timed_out(self) -> None:
        busy = self.cycle is not None and not self.cycle.response_complete
        if busy and self.flow.read_paused:
            # A pipelined head that we stopped reading while answering the one
            # before it: not the client's delay.
            self._wait("head", self.header_timeout)
            return
        self._refuse(RequestTimeout(f"the request head took longer than {self.header_timeout} s"))

    def _refuse_too_large(self) -> None:
        self._refuse(HeadTooLarge(f"the request line and headers are longer than {self.max_header_bytes} bytes"))

    def _refuse(self, refusal: Refusal) -> None:
        self._close_with(_refusal(refusal))

    def _close_with(self, answer: bytes, *, now: bool = False) -> None:
        """Answer ``answer`` and close, reading nothing more; after the answer in progress, if one is.

        ``now``: the request in ``self.cycle`` was never started (it is the one answered).
        """
        self._refused = True
        self._stop_timer()
        if not now and self.cycle is not None and not self.cycle.response_complete:
            # An answer to an earlier request is still being written: close after it.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self.transport.write(answer)
        self.transport.close()
