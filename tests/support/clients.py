"""What the tests of real clients share: recording servers, the README's snippets, a PNG reader.

The clients (Chromium with MapLibre, GDAL, OWSLib, curl, requests) talk to a real
fluxauth in front of a real demo upstream, each in a ``ServerThread``. A
``Recorder`` around each keeps what arrived and how it was answered, so a test
can say what the proxy answered and what reached the upstream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.demo.upstream import create_app, render_tile
from fluxauth.manage.admin import Admin
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.store.sqlite import SQLiteStore
from tests.support.servers import ServerThread

README = Path(__file__).resolve().parents[2] / "README.md"
# The URLs of the README's snippets; tests point them at the servers they start.
README_HOST = "localhost:8000"
README_ORIGIN = f"http://{README_HOST}"
README_BROWSER_ORIGIN = "https://fluxauth.example.org"
TILE_PATH = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/{z}/{x}/{y}.png"
WMS_PATH = "/v1/services/wms/acme/gfs/main/wms"
PRINCIPAL = "maps@acme"


def make_acme(admin: Admin) -> str:
    """The org of the README (tiles and WMS enabled) and a read key ``maps``; returns its token."""
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    admin.enable_service("acme", "wms")
    return admin.create_key("acme", "maps", permissions=["read"]).token


def escaped_userinfo(org: str, token: str) -> str:
    """``org:token`` with percent-escapes of plain characters (``a``, ``_``, ``-``), as a URL's userinfo may carry."""
    return org.replace("a", "%61") + ":" + token.replace("_", "%5F").replace("-", "%2D")


def wrong_secret(token: str) -> str:
    """A well-formed token with the right id and a wrong secret."""
    return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")


@dataclasses.dataclass
class Exchange:
    """One HTTP request as a server received it, and the status and headers it answered with."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    status: int = 0
    response_headers: dict[str, str] = dataclasses.field(default_factory=dict)


def _header_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


class Recorder:
    """An ASGI wrapper that records every HTTP exchange of the app it wraps (lifespan passes through)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(
            method=scope["method"],
            path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=_header_dict(scope["headers"]),
        )
        self.exchanges.append(exchange)

        async def recording_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                exchange.response_headers = _header_dict(message.get("headers", []))
            await send(message)

        await self.app(scope, receive, recording_send)

    def to(self, path: str) -> list[Exchange]:
        """The exchanges for ``path``, in order."""
        return [exchange for exchange in self.exchanges if exchange.path == path]


@dataclasses.dataclass
class Stack:
    """fluxauth in front of the demo upstream, each behind a recorder."""

    proxy: ServerThread
    app: FluxAuthApp
    at_proxy: Recorder
    at_upstream: Recorder
    upstream: ServerThread

    @property
    def url(self) -> str:
        return self.proxy.url


@contextlib.contextmanager
def running_stack(settings: Settings, store_path: str, clock: FakeClock, **changes: Any) -> Iterator[Stack]:
    """Start a recorded demo upstream and a recorded fluxauth in front of it (``settings`` with ``changes``)."""
    at_upstream = Recorder(create_app())
    with ServerThread(at_upstream) as upstream:
        settings = dataclasses.replace(settings, upstream=upstream.url, **changes)
        app = FluxAuthApp(settings, SQLiteStore(store_path), clock=clock)
        at_proxy = Recorder(app)
        with ServerThread(at_proxy) as proxy:
            yield Stack(proxy, app, at_proxy, at_upstream, upstream)


def readme_snippet(title: str, lang: str) -> str:
    """The first ``lang`` code block after ``**title**`` in the README's "Use it from..." section."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Use it from...\n", 1)[1].split("\n## ", 1)[0]
    after = section.split(f"\n**{title}**", 1)[1]
    found = re.search(rf"^```{re.escape(lang)}\n(.*?)^```$", after, flags=re.DOTALL | re.MULTILINE)
    assert found is not None, f"no {lang} block after **{title}** in README.md"
    return found.group(1)


# -- PNG -----------------------------------------------------------------------

_CHANNELS = {2: 3, 6: 4}  # PNG colour types: RGB, RGBA


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    return b if pb <= pc else c


def _unfilter(kind: int, line: bytearray, prior: bytes, bpp: int) -> bytearray:
    """Undo one scanline's filter (PNG spec §9), in place."""
    if kind == 1:
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:
        line = bytearray((x + y) & 0xFF for x, y in zip(line, prior, strict=True))
    elif kind == 3:
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + ((left + prior[i]) >> 1)) & 0xFF
    elif kind == 4:
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            upper_left = prior[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + _paeth(left, prior[i], upper_left)) & 0xFF
    elif kind != 0:
        raise ValueError(f"unknown PNG filter {kind}")
    return line


@dataclasses.dataclass(frozen=True)
class Image:
    """Decoded RGB pixels: ``rows[y][3 * x : 3 * x + 3]``."""

    width: int
    height: int
    rows: list[bytes]

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        if not (0 <= x < self.width and 0 <= y < self.height):
            raise ValueError("pixel outside the image")
        r, g, b = self.rows[y][3 * x : 3 * x + 3]
        return r, g, b


def read_png(png: bytes) -> Image:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium and GDAL write) to RGB."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        if kind == b"IHDR":
            header = png[pos + 8 : pos + 8 + 13]
        elif kind == b"IDAT":
            idat += png[pos + 8 : pos + 8 + length]
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in _CHANNELS or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    bpp = _CHANNELS[colour]
    raw = zlib.decompress(bytes(idat))
    stride = 1 + width * bpp
    rows, prior = [], bytes(width * bpp)
    for y in range(height):
        line = _unfilter(raw[y * stride], bytearray(raw[y * stride + 1 : (y + 1) * stride]), prior, bpp)
        prior = bytes(line)
        rows.append(prior if bpp == 3 else bytes(b for i, b in enumerate(prior) if i % 4 != 3))
    return Image(width, height, rows)


def tile_image(z: int, x: int, y: int) -> Image:
    """The pixels the demo upstream serves for tile ``z/x/y``."""
    return read_png(render_tile(z, x, y))


def mosaic(z: int) -> Image:
    """All tiles of zoom ``z`` side by side, as a map of the world at that zoom shows them."""
    n = 2**z
    tiles = {(x, y): tile_image(z, x, y) for x in range(n) for y in range(n)}
    rows = [b"".join(tiles[x, y].rows[py] for x in range(n)) for y in range(n) for py in range(256)]
    return Image(256 * n, 256 * n, rows)
