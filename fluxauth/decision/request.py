"""The parts of an ASGI request that deciding needs, gathered in one pass over the headers.

Also the checks on the request's own framing: a request that two HTTP readers
could split into different messages is refused before anything else looks at
it, whatever the server in front let through (uvicorn with httptools refuses
most of these itself; with h11, or under another ASGI server, they arrive).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from fluxauth.errors import BadRequest, BodyTooLarge, UnsupportedMethod, UnsupportedTransferCoding, UriTooLong
from fluxauth.types import Scope

_DIGITS = re.compile(rb"[0-9]{1,19}")
# Never forwarded. TRACE makes the upstream echo the request it received, with
# the headers fluxauth added (its own credentials to the upstream among them,
# from a URL's userinfo: seen with an echoing upstream); CONNECT asks for a
# tunnel to wherever the client names, past every decision (and uvicorn
# treats it as an upgrade it cannot do).
REFUSED_METHODS = frozenset({"TRACE", "CONNECT"})
# Methods whose requests have no body that a server would read: many
# upstreams answer them without reading one, and would parse it as the next
# request on the connection (CL.0 smuggling; PortSwigger, "Browser-powered
# desync attacks", 2022). RFC 9110 §9.3.1: a body on GET "has no generally
# defined semantics".
BODILESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(slots=True)
class RequestHead:
    method: str
    raw_path: bytes
    query: bytes = b""
    authorization: list[bytes] = field(default_factory=list)
    origin: bytes | None = None
    request_method: bytes | None = None  # Access-Control-Request-Method
    request_headers: bytes | None = None  # Access-Control-Request-Headers
    forwarded_for: bytes | None = None
    forwarded_host: bytes | None = None  # repeats joined with ",", which no host holds
    peer: str | None = None
    content_length: list[bytes] = field(default_factory=list)
    transfer_encoding: list[bytes] = field(default_factory=list)
    hosts: int = 0
    host: bytes | None = None
    http_version: str = "1.1"

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestHead:
        raw_path = scope.get("raw_path")
        if raw_path is None:  # servers that omit raw_path: re-encode what they decoded
            raw_path = scope["path"].encode("utf-8", "surrogateescape")
        client = scope.get("client")
        head = cls(
            scope["method"],
            raw_path,
            scope.get("query_string", b""),
            peer=client[0] if client else None,
            http_version=scope.get("http_version", "1.1"),
        )
        head.add_headers(scope["headers"])
        return head

    def add_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        # ASGI header names are lower-case, so plain comparison is enough.
        for name, value in headers:
            if name == b"authorization":
                self.authorization.append(value)
            elif name == b"origin":
                self.origin = value
            elif name == b"access-control-request-method":
                self.request_method = value
            elif name == b"access-control-request-headers":
                self.request_headers = value
            elif name == b"x-forwarded-for":
                self.forwarded_for = value if self.forwarded_for is None else self.forwarded_for + b"," + value
            elif name == b"x-forwarded-host":
                self.forwarded_host = value if self.forwarded_host is None else self.forwarded_host + b"," + value
            elif name == b"content-length":
                self.content_length.append(value)
            elif name == b"transfer-encoding":
                self.transfer_encoding.append(value)
            elif name == b"host":
                self.hosts += 1
                self.host = value

    @property
    def body_length(self) -> int | None:
        """The declared body length (after ``check_framing``); ``None`` when chunked or absent."""
        if len(self.content_length) != 1 or not _DIGITS.fullmatch(self.content_length[0]):
            return None
        return int(self.content_length[0])

    @property
    def has_body(self) -> bool:
        """Whether a body follows the head (after ``check_framing``)."""
        if self.transfer_encoding:
            return True
        return bool(self.content_length) and (self.body_length or 0) > 0


def check_framing(head: RequestHead, *, max_url_length: int) -> None:
    """Refuse a request whose framing or target two readers could take differently.

    RFC 9112 §6.3: a message with both ``Transfer-Encoding`` and
    ``Content-Length`` "ought to be handled as an error", and differing or
    repeated lengths are the request-smuggling classic (CL.TE, TE.CL, CL.CL:
    CVE-2019-18277 HAProxy, CVE-2022-32213 Node llhttp, CVE-2023-25725 HAProxy).
    A transfer coding other than exactly ``chunked`` would have to be decoded to
    be forwarded; fluxauth does not, so it is refused rather than passed on
    as if it were the body. Two ``Host`` headers are a 400 by RFC 9112 §3.2.
    TRACE and CONNECT are refused (501) whoever asks (``REFUSED_METHODS``).
    A body on a GET, HEAD or OPTIONS is refused (``BODILESS_METHODS``).
    """
    # Compared in upper case: methods are case-sensitive (RFC 9110 §9.1), but
    # some servers fold them. (GET, every tile, skips the fold.)
    if head.method != "GET" and head.method.upper() in REFUSED_METHODS:
        raise UnsupportedMethod("TRACE and CONNECT are not supported")
    if len(head.raw_path) + (len(head.query) + 1 if head.query else 0) > max_url_length:
        raise UriTooLong(f"the request target is longer than {max_url_length} bytes")
    if head.hosts > 1:
        raise BadRequest("more than one Host header")
    if head.transfer_encoding and head.content_length:
        raise BadRequest("both Transfer-Encoding and Content-Length")
    if len(head.content_length) > 1:
        raise BadRequest("more than one Content-Length")
    if head.content_length and not _DIGITS.fullmatch(head.content_length[0]):
        raise BadRequest("Content-Length is not a number")
    if len(head.transfer_encoding) > 1 or (
        head.transfer_encoding and head.transfer_encoding[0].strip().lower() != b"chunked"
    ):
        raise UnsupportedTransferCoding("the only transfer coding accepted is chunked")
    if head.has_body and head.method.upper() in BODILESS_METHODS:
        raise BadRequest(f"a {head.method} request has no body")


def check_body_size(head: RequestHead, *, max_request_body: int) -> None:
    """Refuse a declared body longer than ``max_request_body`` (0: no limit) before reading any of it."""
    length = head.body_length
    if max_request_body and length is not None and length > max_request_body:
        raise BodyTooLarge(f"the request body is larger than {max_request_body} bytes")
