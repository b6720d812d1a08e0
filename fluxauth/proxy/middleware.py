"""``FluxAuthMiddleware``: fluxauth's decision in front of any ASGI app.

For a tile server written in Python: the same path rules, credentials, cache
and decision as the standalone proxy, without a network hop. An allowed
request reaches the app without ``Authorization``, client-sent
``X-Fluxauth-*`` headers, or the headers that frameworks read as another
path, method or host (``decision/headers.py``: ``hidden_from_app``), with
``X-Fluxauth-Org`` / ``X-Fluxauth-Principal`` set and the principal in
``scope["fluxauth"]``. Paths outside
``/v1/services/`` are refused (404) unless listed in ``exclude_paths``.
"""

from __future__ import annotations

import asyncio

from fluxauth.auth.gate import Gate
from fluxauth.clock import Clock, system_clock
from fluxauth.config.settings import Settings, load_settings
from fluxauth.decision.headers import hidden_from_app, identity
from fluxauth.decision.policy import Outcome
from fluxauth.decision.request import RequestHead
from fluxauth.proxy.responses import send_refusal, send_response
from fluxauth.store import Store
from fluxauth.types import ASGIApp, Headers, Message, Receive, Scope, Send


class FluxAuthMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        exclude_paths: tuple[str, ...] = (),
        clock: Clock = system_clock,
    ) -> None:
        self.app = app
        self.gate = Gate(settings or load_settings(), store, clock=clock)
        self.exclude_paths = tuple(path.encode("ascii") for path in exclude_paths)
        self._start_lock = asyncio.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, self._lifespan_receive(receive), send)
            return
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if not self.gate.started:  # servers that skip lifespan
            async with self._start_lock:
                await self.gate.start()
        head = RequestHead.from_scope({**scope, "method": scope.get("method", "GET")})
        if head.raw_path.startswith(self.exclude_paths) and self.exclude_paths:
            await self.app(scope, receive, send)
            return
        decision = await self.gate.check(head)
        cors = self.gate.cors.response_headers(head.origin)
        if decision.outcome is Outcome.FORWARD:
            principal = decision.principal
            headers = [(name, value) for name, value in scope["headers"] if not hidden_from_app(name)]
            headers += identity(principal)
            inner = {**scope, "headers": headers, "fluxauth": {"principal": principal}}
            await self.app(inner, receive, self._with_headers(send, cors) if cors else send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1008})
        elif decision.outcome is Outcome.PREFLIGHT:
            assert head.origin is not None
            await send_response(
                send, 204, b"", self.gate.cors.preflight_headers(head.origin, head.request_headers), b"text/plain"
            )
        else:
            await send_refusal(send, decision, cors)

    def _lifespan_receive(self, receive: Receive) -> Receive:
        async def wrapped() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.gate.start()
            elif message["type"] == "lifespan.shutdown":
                await self.gate.stop()
            return message

        return wrapped

    @staticmethod
    def _with_headers(send: Send, extra: Headers) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return wrapped
