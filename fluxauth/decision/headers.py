"""Header rules: what a client may not tell the server behind fluxauth, and what fluxauth tells it instead.

One home for the lists that the forwarder (``proxy/forward.py``) drops before
a request goes upstream and the middleware (``proxy/middleware.py``) hides
from its app, for the identity headers all three shapes send, and for the
upstream response headers that are not relayed. Names are ASGI's (lower
case) and compared through ``normal``: ``_`` is read as ``-``, because CGI,
WSGI, PHP and Rack fold both into ``_`` (``X_Fluxauth_Org`` becomes
``HTTP_X_FLUXAUTH_ORG``, the very key of ``X-Fluxauth-Org``, and the two are
joined as ``evil,acme``), which is why nginx drops underscored names by
default.

The families, and who drops them:

- ``CREDENTIALS`` and the ``x-fluxauth-`` prefix: the client's credentials
  and a forged identity. Dropped by both.
- ``TARGETS``: headers that some framework reads as the real path, method or
  host, or as a second target. Each would make the server behind fluxauth
  serve or change what was not decided, or write URLs naming a host that
  fluxauth did not check. Dropped by both.
- ``PROXY_CLAIMS`` and the ``x-forwarded-`` prefix: what a proxy says about
  the client (its address, scheme, host, prefix). The forwarder *is* the
  proxy: an upstream believes these from it, so the client's are dropped and
  fluxauth sets ``X-Forwarded-For/Proto/Host`` itself (a trusted proxy's kept,
  ``decision/proxies.py``). The middleware keeps them: in process, fluxauth
  is not a proxy; they are what the server received, and the server's own
  trust settings (uvicorn's ``forwarded_allow_ips``) say what they are worth.
  They do not change what was decided. (``X-Forwarded-Uri`` and
  ``X-Forwarded-Method`` name the target, forward-auth's way: ``TARGETS``.)
- ``FRAMING``: ``Host``, ``Content-Length``, ``Expect``, and hop-by-hop
  headers (RFC 9110 §7.6.1): the forwarder frames the upstream request
  itself. The middleware's app runs in the same server and gets them as sent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fluxauth.types import Headers

if TYPE_CHECKING:
    from fluxauth.decision.policy import Principal

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
CREDENTIALS = frozenset({b"authorization", b"proxy-authorization"})
IDENTITY_PREFIX = b"x-fluxauth-"
TARGETS = frozenset(
    {
        # The real path: IIS URL Rewrite and Symfony (CVE-2018-14773), Zend,
        # Laravel, Envoy, nginx's auth_request convention, Werkzeug-style
        # SCRIPT_NAME setups (the path's base).
        b"x-original-url",
        b"x-original-uri",
        b"x-original-path",
        b"x-rewrite-url",
        b"x-envoy-original-path",
        b"x-envoy-original-url",
        b"x-script-name",
        # Forward-auth's ways of naming the target (nginx's X-Original-URI and
        # -Method above; Caddy's and Traefik's here): what an auth server reads
        # as the request, so never what a client may say.
        b"x-forwarded-uri",
        b"x-forwarded-method",
        # The real method: a GET decided as a read would become a DELETE
        # (Express method-override, Rails/Rack, Symfony, nginx's auth_request convention).
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
        b"x-original-method",
        # The real host, from which servers write the URLs in TileJSON and
        # capabilities documents (Symfony, Zend, IIS ARR): fluxauth checks the
        # Host (decision/hosts.py), not these.
        b"x-original-host",
        b"x-host",
        # A second target: WebDAV MOVE and COPY write to the URI it names, which
        # fluxauth does not decide on (another org's repo). Not supported through fluxauth.
        b"destination",
    }
)
PROXY_CLAIMS_PREFIX = b"x-forwarded-"
PROXY_CLAIMS = frozenset(
    {
        b"forwarded",  # RFC 7239
        b"x-forwarded",  # its draft form, "for=...;proto=...", read by some frameworks
        # Client addresses that upstreams, their frameworks and log pipelines believe.
        b"x-real-ip",
        b"true-client-ip",
        b"x-client-ip",
        b"x-cluster-client-ip",
        b"client-ip",
        b"cf-connecting-ip",
        b"fastly-client-ip",
        b"x-original-forwarded-for",
        # The scheme the client used (Tornado, Microsoft's front ends): https links written for http, or back.
        b"x-scheme",
        b"x-url-scheme",
        b"front-end-https",
    }
)
FRAMING = HOP_BY_HOP | {b"host", b"content-length", b"expect"}
# Kept on purpose, though the list of headers above might suggest otherwise:
# ``Via`` (RFC 9110 §7.6.3: each proxy appends itself; servers use it to find
# loops, none reads a path, host or client from it) and ``Referer``/``Origin``
# (the client's own statements, read as such; Origin is checked for CORS).

_DROPPED = FRAMING | CREDENTIALS | TARGETS | PROXY_CLAIMS
_DROPPED_PREFIXES = (IDENTITY_PREFIX, PROXY_CLAIMS_PREFIX)
_HIDDEN = CREDENTIALS | TARGETS


def normal(name: bytes) -> bytes:
    """``name`` (lower case, as ASGI gives it) as CGI-style readers see it: ``_`` read as ``-``."""
    return name.replace(b"_", b"-")


def dropped_before_forwarding(name: bytes) -> bool:
    """Whether a client's header ``name`` never reaches the upstream as sent, however it is spelled."""
    name = normal(name)
    return name in _DROPPED or name.startswith(_DROPPED_PREFIXES)


def hidden_from_app(name: bytes) -> bool:
    """Whether the middleware's app never sees the client's header ``name``, however it is spelled."""
    name = normal(name)
    return name in _HIDDEN or name.startswith(IDENTITY_PREFIX)


ANONYMOUS = (b"x-fluxauth-principal", b"anonymous")


def identity(principal: Principal | None) -> Headers:
    """``X-Fluxauth-Org`` and ``X-Fluxauth-Principal`` of ``principal``; without one, ``anonymous`` and no org.

    Org and key names are slugs (``fluxauth/names.py``), so the values are
    plain ASCII. The one definition the forwarder, the middleware and
    forward-auth send.
    """
    if principal is None:
        return [ANONYMOUS]
    return [
        (b"x-fluxauth-org", principal.org.encode("ascii")),
        (b"x-fluxauth-principal", principal.label.encode("ascii")),
    ]


# -- responses ------------------------------------------------------------------

_NOT_RELAYED = HOP_BY_HOP | {b"date"}
# With CORS configured, fluxauth answers for it (preflights, Access-Control-Allow-Origin on
# every response): an upstream's own grants beside them (TiTiler sends "*") would make two
# Access-Control-Allow-Origin headers, which browsers refuse, or grant what fluxauth did not.
_UPSTREAM_CORS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-expose-headers",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-max-age",
    }
)
_NOT_RELAYED_WITH_CORS = _NOT_RELAYED | _UPSTREAM_CORS
# Cache rules for the caches in front (CDNs, nginx), which obey them before or
# instead of Cache-Control: on an answer for one key they would let a shared
# cache serve it to anyone, whatever Cache-Control: private says. Surrogate-
# Control (Fastly, Akamai, Varnish), CDN-Cache-Control and its vendor forms
# such as Cloudflare-CDN-Cache-Control (RFC 9213: "*-CDN-Cache-Control"),
# Akamai's Edge-Control, nginx's X-Accel-Expires. Without them a CDN falls
# back to Cache-Control (RFC 9213 §2.1), which then says private.
_SHARED_CACHE_RULES = frozenset({b"surrogate-control", b"cdn-cache-control", b"edge-control", b"x-accel-expires"})
_NOT_RELAYED_PRIVATE = _NOT_RELAYED | _SHARED_CACHE_RULES
_NOT_RELAYED_PRIVATE_WITH_CORS = _NOT_RELAYED_PRIVATE | _UPSTREAM_CORS
_TARGETED_CACHE_RULE = b"-cdn-cache-control"


def connection_named(headers: Headers) -> set[bytes]:
    """The header names that ``Connection`` headers list (hop-by-hop by RFC 9110 §7.6.1), in lower case."""
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(part.strip().lower() for part in value.split(b","))
    return named


def upstream_response_headers(raw: Headers, *, private: bool, cors: bool = False) -> Headers:
    """The upstream's response headers (names in lower case) without hop-by-hop ones, nor its ``Date``.

    ``cors``: fluxauth's CORS is configured, so the upstream's ``Access-Control-*``
    headers are dropped too (fluxauth's own are added).

    The server fluxauth runs on sends its own ``Date`` with every response
    (uvicorn's default headers); the upstream's beside it made two, which a
    field defined once (RFC 9110 §6.6.1) must not be.

    ``private``: the request was authenticated, so the answer is for that key
    alone. An upstream's ``public`` or ``s-maxage`` would let a shared cache in
    front of fluxauth serve it to anyone (RFC 9111 §3.5); they are replaced by
    ``private``, and the rules meant for shared caches alone are dropped.
    """
    named = connection_named(raw)
    if not private:
        dropped = _NOT_RELAYED_WITH_CORS if cors else _NOT_RELAYED
        return [(name, value) for name, value in raw if name not in dropped and name not in named]
    dropped = _NOT_RELAYED_PRIVATE_WITH_CORS if cors else _NOT_RELAYED_PRIVATE
    directives: list[bytes] = []
    kept = []
    for name, value in raw:
        if name in dropped or name in named or name.endswith(_TARGETED_CACHE_RULE):
            continue
        if name == b"cache-control":
            directives += [part.strip() for part in value.split(b",") if part.strip()]
        else:
            kept.append((name, value))
    directives = [d for d in directives if d.lower() != b"public" and not d.lower().startswith(b"s-maxage")]
    if not any(d.lower() in (b"private", b"no-store") for d in directives):
        directives.insert(0, b"private")
    kept.append((b"cache-control", b", ".join(directives)))
    return kept


def without_credential(headers: Headers, secrets: tuple[bytes, ...]) -> Headers:
    """``headers`` less any whose value holds one of ``secrets`` (fluxauth's own credentials to the upstream).

    An upstream that reflects request headers into its response headers would
    otherwise hand them to the client.
    """
    return [(name, value) for name, value in headers if not any(secret in value for secret in secrets)]
