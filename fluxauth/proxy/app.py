"""The standalone proxy as a plain ASGI application.

Plain ASGI rather than Starlette routing: the hot path (cached credential, tile
forwarded) builds no request object and runs no router. Internal endpoints live
under ``/_fluxauth/``: ``healthz``, ``readyz``, ``metrics``, ``auth`` (forward-auth),
``api/v1/`` (the management API, ``fluxauth.manage.api``) and ``ui/`` (its page).

With ``admin_listen``, the server listens on a second socket too (``fluxauth
serve``: one uvicorn server bound to both, in every worker); a request's
``scope["server"]`` (the address of the socket it came in on) tells them
apart. The admin listener answers ``api``, ``ui``, ``metrics``, ``healthz``
and ``readyz`` and nothing else; the proxy port answers 404 for the first three.
Requests that do not start with ``/_fluxauth/`` pay one comparison for this
when it is set, none when it is not; the hot path never sees the admin
listener's connections (``fluxauth/server/protocol.py``).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from fluxauth.auth.gate import Gate
from fluxauth.clock import Clock, system_clock
from fluxauth.config.settings import Settings, load_settings, redact_url
from fluxauth.decision.policy import Outcome, refuse_error
from fluxauth.decision.request import REFUSED_METHODS, RequestHead, check_body_size
from fluxauth.errors import BodyTooLarge
from fluxauth.manage.api import ManagementApi
from fluxauth.manage.ui import Page
from fluxauth.proxy import forward_auth
from fluxauth.proxy.forward import Forwarder
from fluxauth.proxy.metrics import CONTENT_TYPE, metrics_registry, render_metrics
from fluxauth.proxy.responses import send_json, send_refusal, send_refused, send_response
from fluxauth.store import Store
from fluxauth.timers import Timers
from fluxauth.types import Receive, Scope, Send

log = logging.getLogger("fluxauth")
INTERNAL = b"/_fluxauth/"
API = b"api/v1/"
# Served by the admin listener when there is one (and then only there), by the proxy port otherwise.
ADMIN_ONLY = (b"metrics", API, b"ui")
# A refused request's body is never read; the connection is closed after the
# answer instead of reading (and discarding) whatever the client still sends.
CLOSE = (b"connection", b"close")
# Set in the scope of a request that the hot path (fluxauth.server.hotpath) decided
# but hands to the app after all: the app goes on with this decision instead of making it again.
DECISION = "fluxauth.decision"


class FluxAuthApp:
    """Decide, then forward upstream or refuse."""

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        clock: Clock = system_clock,
        timers: Timers | None = None,
    ) -> None:
        self.settings = settings
        self.gate = Gate(settings, store, clock=clock)
        # The event loop's clock and timers for every timeout on a connection
        # (fluxauth/timers.py): the loop's own, unless a test drives them.
        self.timers = timers
        self.forwarder = Forwarder(settings, self.gate.proxies, timers=timers)
        self.outcomes: Counter[int] = Counter()
        # Requests answered without the ASGI app (fluxauth/server/hotpath.py): "forward", "auth"; and "handed_back",
        # those it gave to the app after all when a reused upstream connection was found closed.
        self.hot_path: Counter[str] = Counter()
        self.metrics = metrics_registry(self)
        self.management = ManagementApi(settings, self.gate)
        self.page = Page()
        self.admin_listen = settings.admin_listen

    def on_admin_listener(self, server: tuple[str, int | None] | None) -> bool:
        """Whether a request or connection to local address ``server`` came in on the admin listener."""
        admin = self.admin_listen
        if admin is None or server is None or server[1] != admin[1]:
            return False
        # A wildcard listener takes connections on every local address.
        return admin[0] in ("0.0.0.0", "::") or server[0] == admin[0]  # noqa: S104 (compared, not bound)

    async def startup(self) -> None:
        await self.gate.start()
        await self.forwarder.start()
        self.management.start()
        settings = self.settings
        log.info(
            "fluxauth started: upstream %s%s, redis %s, store %s",
            redact_url(settings.upstream),
            "".join(f", {name} {redact_url(url)}" for name, url in sorted(settings.upstreams.items())),
            redact_url(settings.redis_url) if settings.redis_url else "not configured",
            redact_url(settings.store),
        )

    async def shutdown(self) -> None:
        self.management.stop()
        await self.forwarder.stop()
        await self.gate.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # reported to the server, which exits
                    log.exception("fluxauth failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        head = RequestHead.from_scope(scope)
        if head.raw_path.startswith(INTERNAL):
            await self.internal(head.raw_path[len(INTERNAL) :], scope, receive, send)
            return
        if self.admin_listen is not None and self.on_admin_listener(scope.get("server")):
            await send_refused(send, 404, "not_found", "no such endpoint", [])
            return
        # Decided already when the hot path (fluxauth/server/hotpath.py) handed the request back.
        decision = scope.get(DECISION) or await self.gate.check(head)
        if decision.outcome is Outcome.FORWARD:
            try:
                check_body_size(head, max_request_body=self.settings.max_request_body)
            except BodyTooLarge as exc:
                decision = refuse_error(exc)
        self.outcomes[decision.status] += 1
        cors = self.gate.cors
        if decision.outcome is Outcome.FORWARD:
            assert decision.target is not None
            await self.forwarder.forward(
                scope,
                receive,
                send,
                target=decision.target,
                principal=decision.principal,
                extra_headers=cors.response_headers(head.origin),
                head=head,
            )
        elif decision.outcome is Outcome.PREFLIGHT:
            assert head.origin is not None
            await send_response(
                send, 204, b"", cors.preflight_headers(head.origin, head.request_headers), b"text/plain"
            )
        else:
            # A body that may still be on its way (any but a plain Content-Length: 0)
            # is not read: the connection closes after the refusal. So does a
            # refused CONNECT, whose tunnel bytes would follow (uvicorn reads
            # them as an upgrade it ignores, holding the connection meanwhile).
            unread = (
                bool(head.transfer_encoding)
                or head.content_length not in ([], [b"0"])
                or head.method.upper() in REFUSED_METHODS
            )
            await send_refusal(send, decision, cors.response_headers(head.origin) + ([CLOSE] if unread else []))

    async def internal(self, name: bytes, scope: Scope, receive: Receive, send: Send) -> None:
        if self.admin_listen is not None:
            admin = self.on_admin_listener(scope.get("server"))
            if admin != name.startswith(ADMIN_ONLY) and (not admin or name not in (b"healthz", b"readyz")):
                await send_refused(send, 404, "not_found", "no such endpoint", [])
                return
        if name.startswith(API):
            await self.management(name[len(API) :], scope, receive, send)
        elif name == b"ui" or name.startswith(b"ui/"):
            await self.page(name[2:], scope, send)
        elif name == b"auth":
            decision = await forward_auth.answer(self.gate, scope, send)
            if decision is not None:
                self.outcomes[decision.status] += 1
        elif name == b"healthz":
            await send_json(send, 200, {"status": "ok"})
        elif name == b"readyz":
            # Ready when the store answers: Redis only accelerates, and its
            # absence is reported, not fatal.
            parts = await self.gate.ready()
            ready = bool(parts["store"])
            await send_json(send, 200 if ready else 503, {"status": "ready" if ready else "unavailable", **parts})
        elif name == b"metrics":
            await send_response(send, 200, render_metrics(self.metrics), [], CONTENT_TYPE)
        else:
            await send_refused(send, 404, "not_found", "no such endpoint", [])


class RedactingFormatter(logging.Formatter):
    """A formatter that removes URL userinfo (``redis://:password@host``) from every line it writes.

    Applied to whole formatted records, tracebacks included, so that a
    password in a Redis, store or upstream URL never reaches a log, whichever
    library's message or exception carries it.
    """

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logging_config(level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` that ``fluxauth serve`` gives uvicorn: one redacting handler for all."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"redacting": {"()": RedactingFormatter, "fmt": LOG_FORMAT}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "redacting"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        # uvicorn's own loggers would otherwise keep their own handlers and formats.
        "loggers": {
            name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def app_from_environment() -> FluxAuthApp:
    """The factory ``fluxauth serve`` hands to uvicorn: settings from file and environment."""
    settings = load_settings()
    if not logging.getLogger().handlers:  # uvicorn was not given logging_config (run by hand)
        handler = logging.StreamHandler()
        handler.setFormatter(RedactingFormatter(LOG_FORMAT))
        logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    return FluxAuthApp(settings)
