"""``FluxAuthMiddleware``: fluxauth's decision in front of any ASGI app.

For a tile server written in Python: the same path rules, credentials, cache
and decision as the standalone proxy, without a network hop. An allowed
request reaches the app without ``Authorization`` or client-sent
``X-Fluxauth-*`` headers, with ``X-Fluxauth-Org`` / ``X-Fluxauth-Principal``
set and the principal in ``scope["fluxauth"]``. Paths outside
``/v1/services/`` are refused (404) unless listed in ``exclude_paths``.
"""

from __future__ import annotations

import asyncio

from fluxauth.auth.gate import Gate
from fluxauth.clock import Clock, system_clock
from fluxauth.config.settings import Settings, load_settings
from fluxauth.decision.policy import Outcome
from fluxauth.decision.request import RequestHead
from fluxauth.proxy.responses import send_refusal, send_response
from fluxauth.store import Store
from fluxauth.types import ASGIApp, Headers, Message, Receive, Scope, Send

# What the app never sees from the client (names compared with '_' read as '-',
# as WSGI adapters fold them): the credentials, a forged identity, and the
# headers that make frameworks serve another path or method than was decided.
# X-Forwarded-* stay: in-process, they are the server's and the app's business.
_HIDDEN = frozenset(
    {
        b"authorization",
        b"x-original-url",
        b"x-original-uri",
        b"x-rewrite-url",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)


def _hidden_from_app(name: bytes) -> bool:
    normal = name.replace(b"_", b"-")
    return normal in _HIDDEN or normal.startswith(b"x-fluxauth-")


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
            headers = [(name, value) for name, value in scope["headers"] if not _hidden_from_app(name)]
            if principal is not None:
                headers += [
                    (b"x-fluxauth-org", principal.org.encode()),
                    (b"x-fluxauth-principal", principal.label.encode()),
                ]
            else:
                headers.append((b"x-fluxauth-principal", b"anonymous"))
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
