"""The parts of an ASGI request that deciding needs, gathered in one pass over the headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Scope = dict[str, Any]


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
    peer: str | None = None

    @classmethod
    def from_scope(cls, scope: Scope) -> RequestHead:
        raw_path = scope.get("raw_path")
        if raw_path is None:  # servers that omit raw_path: re-encode what they decoded
            raw_path = scope["path"].encode("utf-8", "surrogateescape")
        client = scope.get("client")
        head = cls(scope["method"], raw_path, scope.get("query_string", b""), peer=client[0] if client else None)
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
