"""``/_fluxauth/auth``: fluxauth decides, an existing proxy carries the bytes.

nginx ``auth_request`` sends the original target as ``X-Original-URI`` and
``X-Original-Method`` (set in ``config/nginx-forward-auth.conf``); Caddy
``forward_auth`` and Traefik ``ForwardAuth`` send ``X-Forwarded-Uri`` and
``X-Forwarded-Method`` (and ``X-Forwarded-Host``, which the decision does not
need). Those headers are believed only from ``trusted_proxies``: anyone else
could name any target.

Caddy and Traefik pass every header the client sent on to this endpoint, so a
client can add an ``X-Original-URI`` of its own, and through nginx an
``X-Forwarded-Uri``. A request that names its target both ways, or one way
twice, is therefore refused (400) rather than believed either way; and the
method is read only from the family that named the URI, and required: a
missing method is not taken for a GET (a read).

The answer is 200 with ``X-Fluxauth-Org`` / ``X-Fluxauth-Principal`` for the proxy
to copy upstream, or the refusal. nginx's ``auth_request`` turns any status but
2xx, 401 and 403 into a 500, so for nginx (``X-Original-URI``) the other
refusals are answered 403 with the real status in ``X-Fluxauth-Status``, which
the shipped nginx config turns back into that status.
"""

from __future__ import annotations

from fluxauth.auth.gate import Gate
from fluxauth.decision.headers import identity
from fluxauth.decision.policy import Decision, Outcome
from fluxauth.decision.request import RequestHead
from fluxauth.errors import UnclearForwardAuth
from fluxauth.proxy.responses import refusal_headers, send_refused, send_response
from fluxauth.types import Headers, Scope, Send

NGINX_STATUSES = frozenset({401, 403})
_NGINX = (b"x-original-uri", b"x-original-method")
_FORWARDED = (b"x-forwarded-uri", b"x-forwarded-method")

# Every proxy forwards the request when the auth answer is 2xx and none relays
# that answer to the client, so a preflight cannot be answered here; the
# shipped configs send preflights to fluxauth itself (docs/architecture.md §3: answered by
# fluxauth, never forwarded). One that arrives here anyway is refused.
PREFLIGHT_HERE = Decision(
    Outcome.REFUSE, 403, "forbidden", "CORS preflights must be routed to fluxauth itself, not to forward-auth"
)


class UnclearRequest(UnclearForwardAuth):
    """``UnclearForwardAuth``, and whether the proxy asking is nginx (which gets the 400 as a 403)."""

    def __init__(self, detail: str, *, nginx: bool) -> None:
        super().__init__(detail)
        self.nginx = nginx


def original_request(scope: Scope) -> tuple[RequestHead, bool]:
    """The request the proxy asks about, and whether the proxy is nginx.

    Raises ``UnclearRequest`` when the URI or method is missing, repeated, or
    given both the nginx way and the Caddy/Traefik way.
    """
    found: dict[bytes, list[bytes]] = {name: [] for name in _NGINX + _FORWARDED}
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name in found:
            found[name].append(value)
    nginx = bool(found[b"x-original-uri"])
    if nginx and found[b"x-forwarded-uri"]:
        raise UnclearRequest("X-Original-URI and X-Forwarded-Uri name two targets", nginx=True)
    uri_header, method_header = _NGINX if nginx else _FORWARDED
    uris, methods = found[uri_header], found[method_header]
    if not uris:
        raise UnclearRequest("X-Original-URI or X-Forwarded-Uri is required", nginx=False)
    if len(uris) > 1 or len(methods) > 1:
        raise UnclearRequest("the original URI or method is given more than once", nginx=nginx)
    if not methods:
        raise UnclearRequest(f"{method_header.decode().title()} is required with the URI", nginx=nginx)
    raw_path, _, query = uris[0].partition(b"?")
    client = scope.get("client")
    head = RequestHead(
        methods[0].decode("latin-1").upper(),
        raw_path,
        query,
        peer=client[0] if client else None,
    )
    head.add_headers(headers)
    return head, nginx


def allowed_now(gate: Gate, scope: Scope) -> Headers | None:
    """The headers of a 200 when memory alone allows the request asked about (``Gate.decide_now``), else ``None``.

    The hot path of forward-auth (``fluxauth/server/hotpath.py``); every other answer, and the
    reasons for it, come from ``answer``.
    """
    client = scope.get("client")
    if client is None or not gate.proxies.is_trusted(client[0]):
        return None
    try:
        head, _ = original_request(scope)
    except UnclearRequest:
        return None
    decision = gate.decide_now(head)
    if decision is None or decision.outcome is not Outcome.FORWARD:
        return None
    return identity(decision.principal) + gate.cors.response_headers(head.origin)


async def answer(gate: Gate, scope: Scope, send: Send) -> Decision | None:
    """Answer one forward-auth subrequest; returns the decision, if one was made."""
    client = scope.get("client")
    if client is None or not gate.proxies.is_trusted(client[0]):
        await send_refused(send, 403, "forbidden", "forward-auth answers trusted proxies only", [])
        return None
    try:
        head, nginx = original_request(scope)
    except UnclearRequest as exc:
        status = 403 if exc.nginx else exc.status
        await send_refused(send, status, exc.error, exc.detail, [(b"x-fluxauth-status", str(exc.status).encode())])
        return None
    decision = await gate.check(head)
    if decision.outcome is Outcome.PREFLIGHT:
        decision = PREFLIGHT_HERE
    cors = gate.cors.response_headers(head.origin)
    if decision.outcome is Outcome.FORWARD:
        await send_response(send, 200, b"", identity(decision.principal) + cors, b"text/plain")
        return decision
    status = decision.status
    extra = [(b"x-fluxauth-status", str(status).encode()), *cors]
    if nginx and status not in NGINX_STATUSES:
        status = 403
    await send_refused(send, status, decision.error, decision.detail, refusal_headers(decision) + extra)
    return decision
