"""The standalone proxy as a plain ASGI application.

Plain ASGI rather than Starlette routing: the hot path (cached credential, tile
forwarded) builds no request object and runs no router. Internal endpoints live
under ``/_fluxauth/``: ``healthz``, ``readyz``, ``metrics`` and ``auth`` (forward-auth).
"""

from __future__ import annotations

import logging
from collections import Counter

from fluxauth import forward_auth
from fluxauth.clock import Clock, system_clock
from fluxauth.forward import Forwarder
from fluxauth.gate import Gate
from fluxauth.metrics import CONTENT_TYPE, metrics_registry, render_metrics
from fluxauth.policy import Outcome
from fluxauth.request import RequestHead, Scope
from fluxauth.responses import Receive, Send, send_json, send_refusal, send_response
from fluxauth.settings import Settings, load_settings
from fluxauth.store import Store

log = logging.getLogger("fluxauth")
INTERNAL = b"/_fluxauth/"


class FluxAuthApp:
    """Decide, then forward upstream or refuse."""

    def __init__(self, settings: Settings, store: Store | None = None, *, clock: Clock = system_clock) -> None:
        self.settings = settings
        self.gate = Gate(settings, store, clock=clock)
        self.forwarder = Forwarder(settings, self.gate.proxies)
        self.outcomes: Counter[int] = Counter()
        self.metrics = metrics_registry(self)

    async def startup(self) -> None:
        await self.gate.start()
        await self.forwarder.start()

    async def shutdown(self) -> None:
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
            await self.internal(head.raw_path[len(INTERNAL) :], scope, send)
            return
        decision = await self.gate.check(head)
        self.outcomes[decision.status] += 1
        cors = self.gate.cors
        if decision.outcome is Outcome.FORWARD:
            assert decision.target is not None
            await self.forwarder.forward(
                scope,
                receive,
                send,
                protocol=decision.target.protocol,
                raw_path=decision.target.raw_path,
                principal=decision.principal,
                extra_headers=cors.response_headers(head.origin),
            )
        elif decision.outcome is Outcome.PREFLIGHT:
            assert head.origin is not None
            await send_response(
                send, 204, b"", cors.preflight_headers(head.origin, head.request_headers), b"text/plain"
            )
        else:
            await send_refusal(send, decision, cors.response_headers(head.origin))

    async def internal(self, name: bytes, scope: Scope, send: Send) -> None:
        if name == b"auth":
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
            await send_json(send, 404, {"error": "not_found", "detail": "no such internal endpoint"})


def app_from_environment() -> FluxAuthApp:
    """The factory ``fluxauth serve`` hands to uvicorn: settings from file and environment."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return FluxAuthApp(settings)
