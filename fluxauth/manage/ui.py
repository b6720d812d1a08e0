"""The "API Clients" page, ``/_fluxauth/ui/``: static files, served from memory with a strict policy.

The page is plain HTML, JavaScript and CSS (``static/``), no build step. It
talks to the management API with the credentials its sign-in form was given,
held in a variable of the page: never a cookie, storage or the browser's
Basic-auth cache, so no other site can act with them, and a reload signs out.
Its requests carry ``X-Requested-With``, so the API's 401s come without a
challenge and the browser never opens its login dialog.

Every file goes out with a Content-Security-Policy that allows scripts,
styles and requests from fluxauth itself only (no inline script or style),
no framing (``frame-ancestors 'none'``), no form posting anywhere, plus
``nosniff``, ``no-referrer`` and a same-origin opener policy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from fluxauth.manage.api import SECURITY_HEADERS
from fluxauth.types import Headers, Scope, Send

PREFIX = b"/_fluxauth/ui/"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self';"
    " form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS: Headers = [
    *SECURITY_HEADERS,
    (b"content-security-policy", CSP.encode("ascii")),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]
TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: bytes
    etag: bytes


def _load() -> dict[bytes, StaticFile]:
    files: dict[bytes, StaticFile] = {}
    for entry in resources.files("fluxauth.manage").joinpath("static").iterdir():
        suffix = entry.name.rpartition(".")[2]
        if suffix not in TYPES:
            continue
        body = entry.read_bytes()
        etag = b'"' + hashlib.sha256(body).hexdigest()[:20].encode("ascii") + b'"'
        files[entry.name.encode("ascii")] = StaticFile(body, TYPES[suffix], etag)
    files[b""] = files[b"index.html"]
    return files


class Page:
    """Serves the page's files; anything else under ``/_fluxauth/ui/`` is 404."""

    def __init__(self) -> None:
        self.files = _load()

    async def __call__(self, rest: bytes, scope: Scope, send: Send) -> None:
        """Answer ``/_fluxauth/ui`` + ``rest`` (``rest`` starts after ``ui``)."""
        if rest == b"":  # /_fluxauth/ui: relative URLs in the page need the slash
            await _send(send, 308, b"", [(b"location", PREFIX)], b"text/plain")
            return
        file = self.files.get(rest[1:]) if rest.startswith(b"/") else None
        if file is None:
            await _send(send, 404, b"not found\n", [], b"text/plain; charset=utf-8")
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, b"", [(b"allow", b"GET, HEAD")], b"text/plain")
            return
        headers: Headers = [(b"etag", file.etag), (b"cache-control", b"no-cache")]
        if any(name == b"if-none-match" and file.etag in value for name, value in scope["headers"]):
            await _send(send, 304, b"", headers, None)
            return
        body = b"" if scope["method"] == "HEAD" else file.body
        await _send(send, 200, body, headers, file.content_type, length=len(file.body))


async def _send(
    send: Send, status: int, body: bytes, headers: Headers, content_type: bytes | None, *, length: int | None = None
) -> None:
    out = [*PAGE_HEADERS, *headers]
    if content_type is not None:
        out += [
            (b"content-type", content_type),
            (b"content-length", str(len(body) if length is None else length).encode()),
        ]
    if not any(name == b"cache-control" for name, _ in out):
        out.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": body})
