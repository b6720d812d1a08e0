"""Tests for fluxauth.proxy.selfurls: every self-URL under the upstream base names the public base instead."""

from __future__ import annotations

import gzip
import zlib

import pytest

from fluxauth.errors import UnwritableHost, UpstreamUnmappable
from fluxauth.proxy.selfurls import JSON, MARKUP, Rewrite, SelfUrls, metadata_kind
from fluxauth.types import Headers

PUBLIC = b"https://maps.example.org/v1/services/tiles/acme/era5/main/surface/tiles/"
TITILER = SelfUrls(b"127.0.0.1:9000", b"/cog/", PUBLIC, frozenset({"url"}))
WMS_PUBLIC = b"http://127.0.0.1:8000/v1/services/wms/acme/gfs/main/wms/"
XPUBLISH_WMS = SelfUrls(b"127.0.0.1:9001", b"/datasets/gfs/wms/", WMS_PUBLIC, frozenset())

MAPPED = [
    # TileJSON as TiTiler writes it: the pinned url= goes, tilesize stays.
    pytest.param(
        TITILER,
        JSON,
        b'{"tiles":["http://127.0.0.1:9000/cog/tiles/WebMercatorQuad/{z}/{x}/{y}?url=%2Fdata%2Fa.tif&tilesize=512"]}',
        b'{"tiles":["' + PUBLIC + b'tiles/WebMercatorQuad/{z}/{x}/{y}?tilesize=512"]}',
        id="tilejson",
    ),
    pytest.param(
        TITILER,
        JSON,
        b'{"tiles":["https://127.0.0.1:9000/cog/tiles/1/2/3?tilesize=512&url=%2Fdata%2Fa.tif"]}',
        b'{"tiles":["' + PUBLIC + b'tiles/1/2/3?tilesize=512"]}',
        id="https-pinned-last",
    ),
    pytest.param(TITILER, JSON, b'"http://127.0.0.1:9000/cog/x?url=a"', b'"' + PUBLIC + b'x"', id="only-pinned"),
    pytest.param(
        TITILER, JSON, b'"http://127.0.0.1:9000/cog/x?URL=a&b=1#f"', b'"' + PUBLIC + b'x?b=1#f"', id="pinned-any-case"
    ),
    pytest.param(
        TITILER, JSON, b'"http://127.0.0.1:9000/cog/x?%75rl=a&b=1"', b'"' + PUBLIC + b'x?b=1"', id="pinned-encoded"
    ),
    pytest.param(
        TITILER,
        JSON,
        b'"http:\\/\\/127.0.0.1:9000\\/cog\\/x?url=a\\u0026b=1"',
        b'"' + PUBLIC + b'x?b=1"',
        id="json-escaped-slashes-and-ampersand",
    ),
    pytest.param(
        TITILER, JSON, b'"http://127.0.0.1:9000/cog/x?a=1\\u0026url=2"', b'"' + PUBLIC + b'x?a=1"', id="json-u0026"
    ),
    pytest.param(TITILER, JSON, b'"HTTP://127.0.0.1:9000/cog/"', b'"' + PUBLIC + b'"', id="scheme-case"),
    pytest.param(TITILER, JSON, b'"http://127.0.0.1:9000/cog"', b'"' + PUBLIC[:-1] + b'"', id="base-without-slash"),
    pytest.param(
        TITILER, JSON, b'"http://127.0.0.1:9000/cog?url=a&x=1"', b'"' + PUBLIC[:-1] + b'?x=1"', id="base-then-query"
    ),
    # Capabilities: xpublish's OnlineResource has no final "/"; parameters apart by &amp;.
    pytest.param(
        XPUBLISH_WMS,
        MARKUP,
        b'<OnlineResource xlink:href="http://127.0.0.1:9001/datasets/gfs/wms" xlink:type="simple" />',
        b'<OnlineResource xlink:href="' + WMS_PUBLIC[:-1] + b'" xlink:type="simple" />',
        id="wms-online-resource",
    ),
    pytest.param(
        XPUBLISH_WMS,
        MARKUP,
        b'href="http://127.0.0.1:9001/datasets/gfs/wms?service=WMS&amp;request=GetLegendGraphic"',
        b'href="' + WMS_PUBLIC[:-1] + b'?service=WMS&amp;request=GetLegendGraphic"',
        id="wms-legend",
    ),
    pytest.param(
        TITILER,
        MARKUP,
        b'<ResourceURL template="http://127.0.0.1:9000/cog/tiles/{TileMatrix}/{TileCol}/{TileRow}.png?a=1&amp;url=%2Fx&amp;b=2"/>',
        b'<ResourceURL template="' + PUBLIC + b'tiles/{TileMatrix}/{TileCol}/{TileRow}.png?a=1&amp;b=2"/>',
        id="wmts-resource-url",
    ),
    pytest.param(
        TITILER,
        MARKUP,
        b'<ows:Get xlink:href="http://127.0.0.1:9000/cog/WMTSCapabilities.xml?url=/data/a.tif">',
        b'<ows:Get xlink:href="' + PUBLIC + b'WMTSCapabilities.xml">',
        id="wmts-get-unencoded-value",
    ),
    pytest.param(
        TITILER, MARKUP, b'"http://127.0.0.1:9000/cog/x?url&#38;a=1"', b'"' + PUBLIC + b'x?a=1"', id="numeric-entity"
    ),
    # HTML pages: JavaScript strings in quotes and backticks.
    pytest.param(
        TITILER,
        MARKUP,
        b"fetch('http://127.0.0.1:9000/cog/WebMercatorQuad/tilejson.json?url=%2Fa.tif&tilesize=256')",
        b"fetch('" + PUBLIC + b"WebMercatorQuad/tilejson.json?tilesize=256')",
        id="html-single-quotes",
    ),
    pytest.param(
        TITILER,
        MARKUP,
        b"fetch(`http://127.0.0.1:9000/cog/point/{lon},{lat}?url=%2Fa.tif`.replace(",
        b"fetch(`" + PUBLIC + b"point/{lon},{lat}`.replace(",
        id="html-backticks",
    ),
    pytest.param(
        TITILER,
        MARKUP,
        b"<a href=http://127.0.0.1:9000/cog/x?url=1>x</a> and http://127.0.0.1:9000/cog/y in text",
        b"<a href=" + PUBLIC + b"x>x</a> and " + PUBLIC + b"y in text",
        id="html-unquoted-and-text",
    ),
    # Several in one body, each mapped.
    pytest.param(
        TITILER,
        JSON,
        b'["http://127.0.0.1:9000/cog/a", "http://127.0.0.1:9000/cog/b?url=1"]',
        b'["' + PUBLIC + b'a", "' + PUBLIC + b'b"]',
        id="several",
    ),
    # Nested in another URL's query, still the upstream: mapped.
    pytest.param(
        TITILER,
        JSON,
        b'"https://viewer.example/?src=http://127.0.0.1:9000/cog/x"',
        b'"https://viewer.example/?src=' + PUBLIC + b'x"',
        id="nested",
    ),
]


@pytest.mark.parametrize(("urls", "kind", "body", "expected"), MAPPED)
def test_map_body_names_the_public_base(urls: SelfUrls, kind: str, body: bytes, expected: bytes) -> None:
    """Under the upstream base, in any spelling the document uses: mapped, pinned parameters removed."""
    assert urls.map(body, kind) == expected


UNTOUCHED = [
    pytest.param(b'"/cog/tiles/1/2/3?url=x"', id="root-relative"),
    pytest.param(b'"./WebMercatorQuad"', id="relative"),
    pytest.param(b'"/tileMatrixSets/WebMercatorQuad"', id="root-relative-outside"),
    pytest.param(b'"http://127.0.0.1:9000/api"', id="same-upstream-outside-base"),
    pytest.param(b'"http://127.0.0.1:9000/cogs/x"', id="longer-segment"),
    pytest.param(b'"http://127.0.0.1:9000/cog.json"', id="segment-continues"),
    pytest.param(b'"http://127.0.0.1:90000/cog/x"', id="other-port"),
    pytest.param(b'"http://127.0.0.1:9001/cog/x"', id="other-upstream"),
    pytest.param(b'"http://127.0.0.10:9000/cog/x"', id="other-host"),
    pytest.param(b'"http://www.opengis.net/def/crs/EPSG/0/3857"', id="namespace-uri"),
    pytest.param(b"no urls at all", id="plain"),
]


@pytest.mark.parametrize("body", UNTOUCHED)
def test_map_body_leaves_other_urls_alone(body: bytes) -> None:
    """Relative and root-relative links, and URLs not under the base, stay as they are."""
    assert TITILER.map(body, JSON) == body


@pytest.mark.parametrize(
    ("authority", "written"),
    [
        (b"tiles.internal", b"http://tiles.internal:80/cog/x"),
        (b"tiles.internal", b"https://tiles.internal:443/cog/x"),
        (b"tiles.internal:80", b"http://tiles.internal/cog/x"),
        (b"tiles.internal", b"http://TILES.internal/cog/x"),
        (b"[::1]:9000", b"http://[::1]:9000/cog/x"),
    ],
)
def test_map_body_default_ports_and_host_case(authority: bytes, written: bytes) -> None:
    """A default port may be written or not, the host in any case: the same upstream."""
    urls = SelfUrls(authority, b"/cog/", PUBLIC, frozenset())
    assert urls.map(b'"' + written + b'"', JSON) == b'"' + PUBLIC + b'x"'


def test_map_body_escapes_the_public_base_for_the_document() -> None:
    """A group with '&' or '"' in it (raw path bytes) is written escaped: XML stays XML, JSON stays JSON."""
    public = b'https://maps.example.org/v1/services/tiles/acme/era5/main/a&b"c/tiles/'
    urls = SelfUrls(b"127.0.0.1:9000", b"/cog/", public, frozenset())
    assert (
        urls.map(b'"http://127.0.0.1:9000/cog/x"', JSON)
        == b'"https://maps.example.org/v1/services/tiles/acme/era5/main/a&b\\"c/tiles/x"'
    )
    assert urls.map(b'href="http://127.0.0.1:9000/cog/x"', MARKUP) == (
        b'href="https://maps.example.org/v1/services/tiles/acme/era5/main/a&amp;b&quot;c/tiles/x"'
    )


HEADERS = [
    pytest.param(b"location", b"http://127.0.0.1:9000/cog/next?url=a", PUBLIC + b"next", id="location"),
    pytest.param(b"content-location", b"https://127.0.0.1:9000/cog/x", PUBLIC + b"x", id="content-location"),
    pytest.param(b"location", b"/cog/next", b"/cog/next", id="location-root-relative"),
    pytest.param(
        b"link",
        b'<http://127.0.0.1:9000/cog/a?url=x&p=2>; rel="next", <http://127.0.0.1:9000/other>; rel="up"',
        b"<" + PUBLIC + b'a?p=2>; rel="next", <http://127.0.0.1:9000/other>; rel="up"',
        id="link",
    ),
    pytest.param(b"content-type", b"http://127.0.0.1:9000/cog/x", b"http://127.0.0.1:9000/cog/x", id="other-header"),
]


@pytest.mark.parametrize(("name", "value", "expected"), HEADERS)
def test_map_headers_location_content_location_link(name: bytes, value: bytes, expected: bytes) -> None:
    assert TITILER.map_headers([(name, value)]) == [(name, expected)]


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        (b"application/json", JSON),
        (b"application/json; charset=utf-8", JSON),
        (b"Application/JSON", JSON),
        (b"application/geo+json", JSON),
        (b"application/vnd.oai.openapi+json;version=3.0", JSON),
        (b"text/xml; charset=utf-8", MARKUP),
        (b"application/xml", MARKUP),
        (b"application/vnd.ogc.wms_xml", MARKUP),
        (b"application/vnd.ogc.se_xml", MARKUP),
        (b"application/gml+xml", MARKUP),
        (b"text/html; charset=utf-8", MARKUP),
        (b"application/xhtml+xml", MARKUP),
        (b"image/png", None),
        (b"image/jpeg", None),
        (b"application/vnd.mapbox-vector-tile", None),
        (b"application/octet-stream", None),
        (b"text/plain", None),
        (None, None),
    ],
)
def test_metadata_kind(content_type: bytes | None, kind: str | None) -> None:
    """JSON, XML and HTML bodies are metadata; tiles and the rest are not."""
    assert metadata_kind(content_type) == kind


TILEJSON = b'{"tiles":["http://127.0.0.1:9000/cog/tiles/{z}/{x}/{y}?url=%2Fa.tif"]}'
MAPPED_TILEJSON = b'{"tiles":["' + PUBLIC + b'tiles/{z}/{x}/{y}"]}'


def run(
    status: int, headers: Headers, body: bytes, *, limit: int = 1 << 20, head_only: bool = False
) -> tuple[Headers, bytes | None]:
    """One response through a ``Rewrite``: what goes to the client (``None`` body: streamed untouched)."""
    rewrite = Rewrite(lambda: TITILER, limit)
    sent = rewrite.head(status, headers, head_only=head_only)
    if not rewrite.collect:
        return sent, None
    for at in range(0, len(body), 7):  # in pieces, as a connection delivers them
        rewrite.feed(body[at : at + 7])
    return rewrite.finish()


def test_rewrite_metadata_body_with_new_length() -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"999"),
        (b"etag", b'"abc"'),
        (b"vary", b"Origin"),
    ]
    sent, body = run(200, headers, TILEJSON)
    assert body == MAPPED_TILEJSON
    assert sent == [
        (b"content-type", b"application/json"),
        (b"etag", b'W/"abc"'),  # the bytes changed: no longer a strong validator
        (b"vary", b"Origin"),
        (b"content-length", str(len(MAPPED_TILEJSON)).encode()),
    ]


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        (b"gzip", gzip.compress(TILEJSON)),
        (b"x-gzip", gzip.compress(TILEJSON)),
        (b"deflate", zlib.compress(TILEJSON)),
        (b"deflate", zlib.compress(TILEJSON)[2:-4]),  # raw deflate, as some servers send it
        (b"identity", TILEJSON),
    ],
)
def test_rewrite_decodes_compressed_metadata(coding: bytes, encoded: bytes) -> None:
    """A compressed metadata body is decompressed, mapped, and sent uncompressed."""
    headers = [
        (b"content-type", b"application/json"),
        (b"content-encoding", coding),
        (b"content-length", str(len(encoded)).encode()),
    ]
    sent, body = run(200, headers, encoded)
    assert body == MAPPED_TILEJSON
    assert (b"content-encoding", coding) not in sent
    assert dict(sent)[b"content-length"] == str(len(body)).encode()


def test_rewrite_tiles_stream_untouched() -> None:
    """A tile's headers pass as they are (mapped Location aside) and its body is not collected."""
    headers = [(b"content-type", b"image/png"), (b"content-length", b"4"), (b"content-encoding", b"br")]
    assert run(200, headers, b"\x89PNG") == (headers, None)


def test_rewrite_maps_location_of_any_response() -> None:
    sent, body = run(302, [(b"location", b"http://127.0.0.1:9000/cog/x?url=a"), (b"content-length", b"0")], b"")
    assert (sent, body) == ([(b"location", PUBLIC + b"x"), (b"content-length", b"0")], None)


def test_rewrite_head_drops_the_length_a_get_would_not_have() -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"70"), (b"content-encoding", b"gzip")]
    assert run(200, headers, b"", head_only=True) == ([(b"content-type", b"application/json")], None)


def test_rewrite_not_modified_passes() -> None:
    headers = [(b"content-type", b"application/json"), (b"etag", b'"abc"')]
    assert run(304, headers, b"") == (headers, None)


UNMAPPABLE = [
    pytest.param(
        200,
        [(b"content-type", b"application/json"), (b"content-length", b"2048")],
        b"x" * 2048,
        "over max_metadata_body",
        id="length-over",
    ),
    pytest.param(
        200, [(b"content-type", b"application/json")], b"x" * 2048, "over max_metadata_body", id="chunked-over"
    ),
    pytest.param(
        200,
        [(b"content-type", b"application/json"), (b"content-encoding", b"gzip")],
        gzip.compress(b" " * 65536),
        "once decompressed",
        id="gzip-bomb",
    ),
    pytest.param(
        200, [(b"content-type", b"text/xml"), (b"content-encoding", b"br")], b"...", "content coding 'br'", id="brotli"
    ),
    pytest.param(
        200,
        [(b"content-type", b"text/xml"), (b"content-encoding", b"gzip")],
        b"not gzip",
        "not valid gzip",
        id="bad-gzip",
    ),
    pytest.param(
        200,
        [(b"content-type", b"text/xml"), (b"content-encoding", b"gzip")],
        gzip.compress(TILEJSON)[:-12],
        "truncated",
        id="truncated-gzip",
    ),
    pytest.param(206, [(b"content-type", b"application/json")], b"{", "partial", id="partial"),
]


@pytest.mark.parametrize(("status", "headers", "body", "reason"), UNMAPPABLE)
def test_rewrite_refuses_what_it_cannot_map(status: int, headers: Headers, body: bytes, reason: str) -> None:
    """Too large, undecodable or partial: UpstreamUnmappable (502), never the body with upstream URLs in it."""
    with pytest.raises(UpstreamUnmappable, match=reason):
        run(status, headers, body, limit=1024)


def test_rewrite_makes_no_mapping_for_a_tile() -> None:
    """A tile's headers are looked at, nothing more: the mapping (the client's host) is never made."""
    made: list[bool] = []

    def urls() -> SelfUrls:
        made.append(True)
        return TITILER

    rewrite = Rewrite(urls, 1024)
    rewrite.head(200, [(b"content-type", b"image/png"), (b"content-length", b"4")], head_only=False)
    assert (made, rewrite.collect) == ([], False)


@pytest.mark.parametrize(
    "headers",
    [[(b"content-type", b"application/json")], [(b"content-type", b"image/png"), (b"location", b"http://x/")]],
)
def test_rewrite_refuses_a_host_it_cannot_write(headers: Headers) -> None:
    """Metadata or a mapped header for a client whose Host is no plain host: 400, before any body is read."""
    rewrite = Rewrite(lambda: None, 1024)
    with pytest.raises(UnwritableHost) as raised:
        rewrite.head(200, headers, head_only=False)
    assert raised.value.status == 400
    assert rewrite.head(200, [(b"content-type", b"image/png")], head_only=False) == [(b"content-type", b"image/png")]
