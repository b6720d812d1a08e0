"""Small built-in tile/WMS server used as the upstream for ``fluxauth demo`` and tests.

The proxy forwards full paths (``/v1/services/tiles/acme/era5/main/.../3/2/4``), so
everything except ``/healthz`` goes through one catch-all route that dispatches on
path segments: ``_echo``, ``_big/{n}`` and ``_slow/{ms}`` anywhere in the path, a
trailing ``wms`` segment, a trailing ``tilejson.json`` (tile URLs built from the
request's own Host and path, its query kept, as stock tile servers write them:
the demo's route shows fluxauth mapping them back), or trailing
``{z}/{x}/{y}[.png]`` tile coordinates.
"""

from __future__ import annotations

import asyncio
import colorsys
import functools
import hashlib
import math
import struct
import zlib
from collections.abc import Iterable, Iterator
from xml.sax.saxutils import escape, quoteattr

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

TILE_SIZE = 256
MAX_ZOOM = 22
MAX_MAP_SIZE = 2048
BIG_CHUNK = 64 * 1024
MAX_BIG_BYTES = 64 * 1024 * 1024
MAX_SLOW_MS = 60_000
WMS_LAYERS = {"t2m": "2 m temperature", "precip": "Total precipitation"}
WMS_CRS = ("EPSG:4326", "EPSG:3857")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DARKEN = bytes(v // 2 for v in range(256))
_READ_METHODS = ("GET", "HEAD")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """Encode one PNG chunk (length, type, data, CRC)."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def encode_png(width: int, height: int, rows: Iterable[bytes | bytearray]) -> bytes:
    """Encode 8-bit RGB scanlines (``width * 3`` bytes each) as a PNG, filter type 0."""
    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    if len(raw) != height * (1 + width * 3):
        raise ValueError("scanlines do not match the image size")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw, 6))
        + _png_chunk(b"IEND", b"")
    )


def _rgb_row(reds: bytes, green: int, blue: int) -> bytearray:
    """One RGB scanline: per-pixel red, constant green and blue."""
    n = len(reds)
    row = bytearray(n * 3)
    row[0::3], row[1::3], row[2::3] = reds, bytes([green]) * n, bytes([blue]) * n
    return row


def tile_in_range(z: int, x: int, y: int) -> bool:
    """Whether ``z/x/y`` is a valid WebMercatorQuad tile (z <= 22)."""
    return 0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z


def _zoom_hue(z: int) -> tuple[int, int, int]:
    """A saturated colour whose hue is tied to the zoom level."""
    r, g, b = colorsys.hsv_to_rgb(z / (MAX_ZOOM + 1), 0.7, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


@functools.lru_cache(maxsize=1024)
def render_tile(z: int, x: int, y: int) -> bytes:
    """Render tile ``z/x/y``: world gradient, zoom hue, dark border, id badge."""
    if not tile_in_range(z, x, y):
        raise ValueError(f"tile {z}/{x}/{y} out of range")
    extent = (TILE_SIZE << z) - 1
    hue_r, hue_g, hue_b = _zoom_hue(z)
    reds = bytes(((x * TILE_SIZE + px) * 255 // extent + hue_r) // 2 for px in range(TILE_SIZE))
    badge = hashlib.sha256(f"{z}/{x}/{y}".encode()).digest()[:3] * 16
    rows = []
    for py in range(TILE_SIZE):
        green = ((y * TILE_SIZE + py) * 255 // extent + hue_g) // 2
        row = _rgb_row(reds, green, hue_b)
        if 8 <= py < 24:
            row[8 * 3 : 24 * 3] = badge
        if py in (0, TILE_SIZE - 1):
            row = bytearray(row.translate(_DARKEN))
        for edge in (0, (TILE_SIZE - 1) * 3):
            row[edge : edge + 3] = row[edge : edge + 3].translate(_DARKEN)
        rows.append(row)
    return encode_png(TILE_SIZE, TILE_SIZE, rows)


def _parse_tile(segments: list[str]) -> tuple[int, int, int] | None:
    """Parse trailing ``{z}/{x}/{y}`` or ``{z}/{x}/{y}.png`` segments."""
    if len(segments) < 3:
        return None
    parts = segments[-3:]
    parts[2] = parts[2].removesuffix(".png")
    if not all(p.isascii() and p.isdigit() and len(p) <= 12 for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


async def _tile_response(z: int, x: int, y: int) -> Response:
    """Serve one rendered tile or a 404 when out of range."""
    if not tile_in_range(z, x, y):
        return JSONResponse({"error": "not_found", "detail": "tile out of range"}, 404)
    png = await run_in_threadpool(render_tile, z, x, y)
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=60"})


class WmsError(Exception):
    """A WMS request error ``(code, message)`` reported as a ServiceExceptionReport."""


_GEO_BBOX = (
    "<EX_GeographicBoundingBox><westBoundLongitude>-180</westBoundLongitude>"
    "<eastBoundLongitude>180</eastBoundLongitude>"
    "<southBoundLatitude>-90</southBoundLatitude>"
    "<northBoundLatitude>90</northBoundLatitude></EX_GeographicBoundingBox>"
)
_CAPABILITIES = """<?xml version="1.0" encoding="UTF-8"?>
<WMS_Capabilities version="1.3.0" xmlns="http://www.opengis.net/wms" \
xmlns:xlink="http://www.w3.org/1999/xlink">
<Service><Name>WMS</Name><Title>fluxauth demo WMS</Title>
<Abstract>Synthetic layers served by the fluxauth demo upstream.</Abstract>
<OnlineResource xlink:type="simple" xlink:href={href}/>
<MaxWidth>2048</MaxWidth><MaxHeight>2048</MaxHeight></Service>
<Capability><Request>
<GetCapabilities><Format>text/xml</Format><DCPType><HTTP><Get>
<OnlineResource xlink:type="simple" xlink:href={href}/>
</Get></HTTP></DCPType></GetCapabilities>
<GetMap><Format>image/png</Format><DCPType><HTTP><Get>
<OnlineResource xlink:type="simple" xlink:href={href}/>
</Get></HTTP></DCPType></GetMap>
</Request><Exception><Format>XML</Format></Exception>
<Layer><Title>fluxauth demo</Title><CRS>EPSG:4326</CRS><CRS>EPSG:3857</CRS>{geo}
<BoundingBox CRS="EPSG:4326" minx="-90" miny="-180" maxx="90" maxy="180"/>
<BoundingBox CRS="EPSG:3857" minx="-20037508.34" miny="-20037508.34" \
maxx="20037508.34" maxy="20037508.34"/>
{layers}</Layer></Capability></WMS_Capabilities>
"""


def _public_base_url(request: Request) -> str:
    """The URL the client used for this path, honouring X-Forwarded-Proto/Host."""
    headers = request.headers
    proto = headers.get("x-forwarded-proto", "").split(",")[0].strip() or request.url.scheme
    host = headers.get("x-forwarded-host", "").split(",")[0].strip()
    host = host or headers.get("host", "") or request.url.netloc
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    return f"{proto}://{host}{path}"


def capabilities_xml(base_url: str) -> str:
    """Render the WMS 1.3.0 capabilities document for ``base_url``."""
    href = quoteattr(base_url + "?")
    layers = "".join(
        f'<Layer queryable="0"><Name>{escape(name)}</Name><Title>{escape(title)}</Title>{_GEO_BBOX}</Layer>\n'
        for name, title in WMS_LAYERS.items()
    )
    return _CAPABILITIES.format(href=href, geo=_GEO_BBOX, layers=layers)


def _exception_response(code: str, message: str) -> Response:
    """A WMS 1.3.0 ServiceExceptionReport with status 400."""
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ServiceExceptionReport version="1.3.0" xmlns="http://www.opengis.net/ogc">'
        f"<ServiceException code={quoteattr(code)}>{escape(message)}"
        "</ServiceException></ServiceExceptionReport>\n"
    )
    return Response(body, status_code=400, media_type="text/xml")


def _int_param(params: dict[str, str], key: str) -> int:
    """Parse WIDTH/HEIGHT as an integer in 1..MAX_MAP_SIZE."""
    value = params.get(key, "")
    if value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_MAP_SIZE:
        return int(value)
    raise WmsError("InvalidParameterValue", f"{key} must be in 1..{MAX_MAP_SIZE}")


def _parse_bbox(value: str) -> tuple[float, float, float, float]:
    """Parse ``minx,miny,maxx,maxy`` with finite, ordered values."""
    try:
        a, b, c, d = (float(v) for v in value.split(","))
    except ValueError:
        raise WmsError("InvalidParameterValue", "BBOX must be 4 numbers") from None
    if not all(map(math.isfinite, (a, b, c, d))) or a >= c or b >= d:
        raise WmsError("InvalidParameterValue", "BBOX is empty or not finite")
    return a, b, c, d


def _parse_getmap(
    params: dict[str, str],
) -> tuple[str, str, tuple[float, ...], int, int]:
    """Validate GetMap parameters: (layers, crs, bbox, width, height)."""
    layers = params.get("LAYERS", "")
    if not layers or any(name not in WMS_LAYERS for name in layers.split(",")):
        raise WmsError("LayerNotDefined", f"unknown layer in LAYERS={layers!r}")
    crs = params.get("CRS", params.get("SRS", "")).upper()
    if crs not in WMS_CRS:
        raise WmsError("InvalidCRS", f"CRS must be one of {', '.join(WMS_CRS)}")
    if params.get("FORMAT", "").lower() != "image/png":
        raise WmsError("InvalidFormat", "FORMAT must be image/png")
    bbox = _parse_bbox(params.get("BBOX", ""))
    return layers, crs, bbox, _int_param(params, "WIDTH"), _int_param(params, "HEIGHT")


def render_map(layers: str, crs: str, bbox: tuple[float, ...], width: int, height: int) -> bytes:
    """Render a deterministic gradient PNG whose colours derive from layers/CRS/bbox."""
    seed = hashlib.sha256(f"{layers}|{crs}|{','.join(map(repr, bbox))}".encode()).digest()
    reds = bytes((seed[0] + px * 255 // max(width - 1, 1)) // 2 for px in range(width))
    greens = ((seed[1] + py * 255 // max(height - 1, 1)) // 2 for py in range(height))
    return encode_png(width, height, (_rgb_row(reds, g, seed[2]) for g in greens))


async def _wms(request: Request) -> Response:
    """Handle a WMS 1.3.0 GetCapabilities or GetMap request."""
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key.upper(), value)
    operation = params.get("REQUEST", "").lower()
    try:
        if params.get("SERVICE", "WMS").upper() != "WMS":
            raise WmsError("InvalidParameterValue", "SERVICE must be WMS")
        if operation == "getcapabilities":
            return Response(capabilities_xml(_public_base_url(request)), media_type="text/xml")
        if operation == "getmap":
            png = await run_in_threadpool(render_map, *_parse_getmap(params))
            return Response(png, media_type="image/png")
        if not operation:
            raise WmsError("MissingParameterValue", "REQUEST is required")
        raise WmsError("OperationNotSupported", f"unsupported REQUEST={params['REQUEST']!r}")
    except WmsError as error:
        return _exception_response(*error.args)


async def _echo(request: Request) -> Response:
    """Describe the received request, hashing the body as it streams in."""
    digest, length = hashlib.sha256(), 0
    async for chunk in request.stream():
        digest.update(chunk)
        length += len(chunk)
    scope = request.scope
    raw_path: bytes = scope.get("raw_path") or request.url.path.encode()
    headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]
    return JSONResponse(
        {
            "method": request.method,
            "raw_path": raw_path.decode("latin-1"),
            "query_string": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
            "body_sha256": digest.hexdigest(),
            "body_length": length,
        }
    )


def iter_big_body(n: int) -> Iterator[bytes]:
    """Yield exactly ``n`` deterministic bytes in 64 KiB chunks."""
    for index, start in enumerate(range(0, n, BIG_CHUNK)):
        block = hashlib.sha256(index.to_bytes(8, "big")).digest() * (BIG_CHUNK // 32)
        yield block[: min(BIG_CHUNK, n - start)]


@functools.lru_cache(maxsize=64)
def big_body_sha256(n: int) -> str:
    """SHA-256 hex digest of the ``n``-byte body produced by :func:`iter_big_body`."""
    digest = hashlib.sha256()
    for chunk in iter_big_body(n):
        digest.update(chunk)
    return digest.hexdigest()


async def _big(n: int) -> Response:
    """Stream ``n`` deterministic bytes with their SHA-256 in ``X-Body-Sha256``."""
    if n > MAX_BIG_BYTES:
        return JSONResponse({"error": "too_large", "max": MAX_BIG_BYTES}, 400)
    sha = await run_in_threadpool(big_body_sha256, n)
    headers = {"X-Body-Sha256": sha, "Content-Length": str(n)}
    return StreamingResponse(iter_big_body(n), media_type="application/octet-stream", headers=headers)


async def _slow(ms: int) -> Response:
    """Sleep ``ms`` milliseconds, then answer ``slow``."""
    if ms > MAX_SLOW_MS:
        return JSONResponse({"error": "too_slow", "max": MAX_SLOW_MS}, 400)
    await asyncio.sleep(ms / 1000)
    return PlainTextResponse("slow")


def _segment_int(segments: list[str], name: str) -> int | None:
    """The integer following segment ``name``, if present."""
    for i, segment in enumerate(segments[:-1]):
        nxt = segments[i + 1]
        if segment == name and nxt.isascii() and nxt.isdigit() and len(nxt) <= 12:
            return int(nxt)
    return None


def _tilejson(request: Request) -> Response:
    """A TileJSON whose tile URLs are absolute, next to it, with the request's query, as TiTiler writes them."""
    base = _public_base_url(request).removesuffix("/tilejson.json")
    query = request.url.query
    tiles = base + "/{z}/{x}/{y}.png" + (f"?{query}" if query else "")
    return JSONResponse(
        {
            "tilejson": "3.0.0",
            "tiles": [tiles],
            "minzoom": 0,
            "maxzoom": MAX_ZOOM,
            "bounds": [-180, -85.0511, 180, 85.0511],
        }
    )


async def _dispatch(request: Request) -> Response:
    """Route a request on its path segments (see module docstring)."""
    segments = [s for s in request.url.path.split("/") if s]
    if "_echo" in segments:
        return await _echo(request)
    if (n := _segment_int(segments, "_big")) is not None:
        return await _big(n)
    if (ms := _segment_int(segments, "_slow")) is not None:
        return await _slow(ms)
    if segments and segments[-1] == "tilejson.json" and request.method in _READ_METHODS:
        return _tilejson(request)
    tile = _parse_tile(segments)
    is_wms = bool(segments) and segments[-1].lower() == "wms"
    if not (is_wms or tile):
        return JSONResponse({"error": "not_found"}, 404)
    if request.method not in _READ_METHODS:
        return JSONResponse({"error": "method_not_allowed"}, 405, headers={"Allow": "GET, HEAD"})
    if is_wms:
        return await _wms(request)
    assert tile is not None
    return await _tile_response(*tile)


class _Dispatcher:
    """ASGI endpoint for the catch-all route (accepts every HTTP method)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await _dispatch(Request(scope, receive))
        await response(scope, receive, send)


async def _healthz(request: Request) -> Response:
    """Liveness probe."""
    return PlainTextResponse("ok")


def create_app() -> Starlette:
    """Build the demo upstream application."""
    return Starlette(routes=[Route("/healthz", _healthz), Route("/{path:path}", _Dispatcher())])
