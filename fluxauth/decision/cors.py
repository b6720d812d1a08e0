"""CORS for web maps (docs/architecture.md §3, row 2).

A Mapbox or MapLibre map whose ``transformRequest`` adds ``Authorization`` makes
the browser send a preflight first, without credentials. fluxauth answers it
itself for allowed origins (204) and refuses it for others (403); a preflight is
never forwarded. The allowed origin is echoed (not ``*``) with ``Vary: Origin``,
which is right whether or not the page sends credentials.
"""

from __future__ import annotations

import re

from fluxauth.decision.policy import Preflight
from fluxauth.types import Headers

_METHODS = b"GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE"
# Optional whitespace is SP / HTAB only (RFC 9110 §5.6.3): ``\s`` would also let
# CR, LF, VT and FF through into the echoed header value.
_TOKEN_LIST = re.compile(rb"[A-Za-z0-9!#$%&'*+.^_`|~-]+([ \t]*,[ \t]*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")
_EXPOSE = b"Content-Length, Content-Range, Content-Type, ETag, Last-Modified, Cache-Control, Retry-After"


class Cors:
    """The allowed origins and the headers that go with them."""

    def __init__(self, origins: tuple[str, ...], max_age: int) -> None:
        self.configured = bool(origins)
        self.any_origin = "*" in origins
        self._origins = frozenset(origin.encode("ascii") for origin in origins)
        self._max_age = str(max_age).encode("ascii")

    def allows(self, origin: bytes | None) -> bool:
        return origin is not None and (self.any_origin or origin in self._origins)

    def preflight(self, method: str, origin: bytes | None, request_method: bytes | None) -> Preflight:
        """Whether a request is a preflight, and from an allowed origin."""
        if method != "OPTIONS" or origin is None or request_method is None:
            return "none"
        return "allowed" if self.allows(origin) else "denied"

    def preflight_headers(self, origin: bytes, request_headers: bytes | None) -> Headers:
        # Echo the asked-for headers (a map may add its own), always with
        # Authorization: "*" does not cover Authorization (Fetch standard).
        allowed = b"authorization"
        if request_headers and _TOKEN_LIST.fullmatch(request_headers.strip()):
            allowed = b"authorization, " + request_headers.strip()
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-methods", _METHODS),
            (b"access-control-allow-headers", allowed),
            (b"access-control-max-age", self._max_age),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]

    def response_headers(self, origin: bytes | None) -> Headers:
        """Headers for an actual response (refusals too, so a map can read the status).

        With CORS configured, every response says ``Vary: Origin``: the one
        without ``Access-Control-Allow-Origin`` must not be served from a cache
        to an allowed page (which would then fail CORS).
        """
        if not self.allows(origin):
            return [(b"vary", b"Origin")] if self.configured else []
        assert origin is not None
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-expose-headers", _EXPOSE),
            (b"vary", b"Origin"),
        ]
