"""``/_fluxauth/auth``: fluxauth decides, an existing proxy carries the bytes.

nginx ``auth_request`` sends the original target as ``X-Original-URI`` and
``X-Original-Method`` (set in ``config/nginx-forward-auth.conf``); Caddy
``forward_auth`` and Traefik ``ForwardAuth`` send ``X-Forwarded-Uri``,
``X-Forwarded-Method`` and ``X-Forwarded-Host``. Those headers are believed only
from ``trusted_proxies``: anyone else could name any target.

The answer is 200 with ``X-Fluxauth-Org`` / ``X-Fluxauth-Principal`` for the proxy
to copy upstream, or the refusal. nginx's ``auth_request`` turns any status but
2xx, 401 and 403 into a 500, so for nginx (``X-Original-URI``) the other
refusals are answered 403 with the real status in ``X-Fluxauth-Status``, which
the shipped nginx config turns back into that status.
"""

from __future__ import annotations

from fluxauth.gate import Gate
from fluxauth.policy import Decision, Outcome
from fluxauth.request import RequestHead, Scope
from fluxauth.responses import Headers, Send, refusal_headers, send_json, send_response

NGINX_STATUSES = frozenset({401, 403})


def original_request(scope: Scope) -> tuple[RequestHead, bool] | None:
    """The request the proxy asks about, and whether the proxy is nginx; None if it did not say."""
    uri = method = None
    nginx = False
    for name, value in scope["headers"]:
        if name == b"x-original-uri":
            uri, nginx = value, True
        elif name == b"x-forwarded-uri" and not nginx:
            uri = value
        elif name in (b"x-original-method", b"x-forwarded-method"):
            method = value
    if uri is None:
        return None
    raw_path, _, query = uri.partition(b"?")
    client = scope.get("client")
    head = RequestHead(
        (method or b"GET").decode("latin-1").upper(),
        raw_path,
        query,
        peer=client[0] if client else None,
    )
    head.add_headers(scope["headers"])
    return head, nginx


def identity_headers(decision: Decision) -> Headers:
    principal = decision.principal
    if principal is None:
        return [(b"x-fluxauth-principal", b"anonymous")]
    return [(b"x-fluxauth-org", principal.org.encode()), (b"x-fluxauth-principal", principal.label.encode())]


async def answer(gate: Gate, scope: Scope, send: Send) -> Decision | None:
    """Answer one forward-auth subrequest; returns the decision, if one was made."""
    client = scope.get("client")
    if client is None or not gate.proxies.is_trusted(client[0]):
        await send_json(send, 403, {"error": "forbidden", "detail": "forward-auth answers trusted proxies only"})
        return None
    found = original_request(scope)
    if found is None:
        await send_json(send, 400, {"error": "bad_request", "detail": "X-Original-URI or X-Forwarded-Uri is required"})
        return None
    head, nginx = found
    decision = await gate.check(head)
    cors = gate.cors.response_headers(head.origin)
    if decision.outcome is Outcome.FORWARD:
        await send_response(send, 200, b"", identity_headers(decision) + cors, b"text/plain")
    elif decision.outcome is Outcome.PREFLIGHT:
        # A 2xx would tell the proxy to forward the preflight; the shipped
        # configs route preflights to fluxauth itself instead (see config/).
        assert head.origin is not None
        await send_response(
            send, 200, b"", gate.cors.preflight_headers(head.origin, head.request_headers), b"text/plain"
        )
    else:
        status = decision.status
        extra = [(b"x-fluxauth-status", str(status).encode()), *cors]
        if nginx and status not in NGINX_STATUSES:
            status = 403
        await send_json(
            send, status, {"error": decision.error, "detail": decision.detail}, refusal_headers(decision) + extra
        )
    return decision
