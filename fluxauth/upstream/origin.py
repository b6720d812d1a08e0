"""Where requests for one upstream go, and what their heads say of it."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True, slots=True)
class Origin:
    """One upstream: its address, and the ``Host``, path prefix and credentials its requests carry."""

    host: str
    port: int
    tls: bool
    host_header: bytes  # the Host the upstream is sent: its own name
    prefix: bytes  # a base path to put before every request path
    authorization: bytes | None  # Basic credentials from the URL's userinfo, fluxauth's own to the upstream

    @classmethod
    def from_url(cls, url: str) -> Origin:
        parts = urlsplit(url)
        tls = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if tls else 80)
        netloc = parts.netloc.rpartition("@")[2]
        authorization = None
        if parts.username is not None:
            userinfo = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            authorization = b"Basic " + base64.b64encode(userinfo.encode("utf-8"))
        return cls(host, port, tls, netloc.encode("idna"), parts.path.rstrip("/").encode("ascii"), authorization)

    def __repr__(self) -> str:  # never the credentials
        return f"Origin({'https' if self.tls else 'http'}://{self.host}:{self.port})"
