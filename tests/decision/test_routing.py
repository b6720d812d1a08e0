"""Tests for fluxauth.decision.routing: the most specific route wins, templates expand, pinned parameters hold."""

from __future__ import annotations

from typing import Any

import pytest

from fluxauth.config.routes import parse_routes
from fluxauth.config.settings import DEFAULT_PROTOCOLS, redact_url
from fluxauth.decision.routing import PinnedParameter, Routed, Routes, parameter_name
from fluxauth.decision.target import parse_target
from fluxauth.errors import AmbiguousPath, NotComputePath, PathError

PROTOCOLS = frozenset(DEFAULT_PROTOCOLS)
TITILER = {
    "protocol": "tiles",
    "org": "acme",
    "upstream": "http://127.0.0.1:9000/cog/{path}",
    "query": {"url": "/data/{org}/{repo}/{ref}/{group}.tif"},
}
XPUBLISH_TILES = {"protocol": "tiles", "upstream": "http://127.0.0.1:9001/datasets/{repo}/tiles/{path}"}
XPUBLISH_WMS = {
    "protocol": "wms",
    "org": "acme",
    "repo": "gfs",
    "upstream": "http://127.0.0.1:9001/datasets/{repo}/wms/{path}",
}
OPENDAP = {
    "protocol": "dap2",
    "marker": "opendap",
    "upstream": "http://127.0.0.1:9002/{org}/{repo}/{ref}/{group}/{path}",
}


def routes(*raw: dict[str, Any], upstreams: dict[str, str] | None = None) -> Routes:
    return Routes(parse_routes(list(raw), DEFAULT_PROTOCOLS, redact_url), upstreams or {})


def route(table: Routes, path: bytes, query: bytes = b"") -> Routed:
    routed = parse_target(path, PROTOCOLS, table, query).routed
    assert routed is not None
    return routed


EXPANDED = [
    # path, query -> upstream path, upstream query, base, public base
    pytest.param(
        XPUBLISH_TILES,
        b"/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/3/2/4",
        b"variables=t2m",
        (
            b"/datasets/era5/tiles/WebMercatorQuad/3/2/4",
            b"variables=t2m",
            b"/datasets/era5/tiles/",
            b"/v1/services/tiles/acme/era5/main/tiles/",
        ),
        id="xpublish-tiles-empty-group",
    ),
    pytest.param(
        XPUBLISH_TILES,
        b"/v1/services/tiles/acme/era5/main/surface/tiles/WebMercatorQuad/tilejson.json",
        b"",
        (
            b"/datasets/era5/tiles/WebMercatorQuad/tilejson.json",
            b"",
            b"/datasets/era5/tiles/",
            b"/v1/services/tiles/acme/era5/main/surface/tiles/",
        ),
        id="xpublish-tiles-group",
    ),
    pytest.param(
        TITILER,
        b"/v1/services/tiles/acme/era5/main/surface/2m/tiles/WebMercatorQuad/tilejson.json",
        b"tilesize=256",
        (
            b"/cog/WebMercatorQuad/tilejson.json",
            b"tilesize=256&url=%2Fdata%2Facme%2Fera5%2Fmain%2Fsurface%2F2m.tif",
            b"/cog/",
            b"/v1/services/tiles/acme/era5/main/surface/2m/tiles/",
        ),
        id="titiler-pinned-url",
    ),
    pytest.param(
        TITILER,
        b"/v1/services/tiles/acme/era5/main/g/tiles/tiles/WebMercatorQuad/1/0/0",
        b"",
        (
            b"/cog/tiles/WebMercatorQuad/1/0/0",
            b"url=%2Fdata%2Facme%2Fera5%2Fmain%2Fg.tif",
            b"/cog/",
            b"/v1/services/tiles/acme/era5/main/g/tiles/",
        ),
        id="titiler-marker-then-tiles",
    ),
    pytest.param(
        XPUBLISH_WMS,
        b"/v1/services/wms/acme/gfs/main/wms",
        b"service=WMS&request=GetCapabilities",
        (
            b"/datasets/gfs/wms/",
            b"service=WMS&request=GetCapabilities",
            b"/datasets/gfs/wms/",
            b"/v1/services/wms/acme/gfs/main/wms/",
        ),
        id="wms-no-slash",
    ),
    pytest.param(
        XPUBLISH_WMS,
        b"/v1/services/wms/acme/gfs/main/wms/",
        b"",
        (b"/datasets/gfs/wms/", b"", b"/datasets/gfs/wms/", b"/v1/services/wms/acme/gfs/main/wms/"),
        id="wms-slash",
    ),
    pytest.param(
        OPENDAP,
        b"/v1/services/dap2/acme/hindcast/main/regrid/main/opendap/x.nc.dds",
        b"",
        (
            b"/acme/hindcast/main/regrid/main/x.nc.dds",
            b"",
            b"/acme/hindcast/main/regrid/main/",
            b"/v1/services/dap2/acme/hindcast/main/regrid/main/opendap/",
        ),
        id="opendap-marker-ends-group",
    ),
    pytest.param(
        XPUBLISH_TILES,
        b"/v1/services/tiles/acme/era5/main/tiles/a%20b/tiles/c",
        b"",
        (
            b"/datasets/era5/tiles/a%20b/tiles/c",
            b"",
            b"/datasets/era5/tiles/",
            b"/v1/services/tiles/acme/era5/main/tiles/",
        ),
        id="first-marker-wins-tail-raw",
    ),
    pytest.param(
        XPUBLISH_WMS,
        b"/v1/services/wms/acme/gfs/main/g/h/wms",
        b"",
        (b"/datasets/gfs/wms/", b"", b"/datasets/gfs/wms/", b"/v1/services/wms/acme/gfs/main/g/h/wms/"),
        id="group-then-marker-at-the-end",
    ),
    pytest.param(
        XPUBLISH_WMS,
        b"/v1/services/wms/acme/gfs/main/a/wms/b/wms",
        b"",
        (b"/datasets/gfs/wms/b/wms", b"", b"/datasets/gfs/wms/", b"/v1/services/wms/acme/gfs/main/a/wms/"),
        id="marker-inside-before-marker-at-the-end",
    ),
    pytest.param(
        XPUBLISH_WMS,
        b"/v1/services/wms/acme/gfs/main/wmsx/wms",
        b"",
        (b"/datasets/gfs/wms/", b"", b"/datasets/gfs/wms/", b"/v1/services/wms/acme/gfs/main/wmsx/wms/"),
        id="a-segment-that-starts-like-the-marker",
    ),
]


@pytest.mark.parametrize(("raw", "path", "query", "expected"), EXPANDED)
def test_route_expands_template(raw: dict[str, Any], path: bytes, query: bytes, expected: tuple[bytes, ...]) -> None:
    """Placeholders filled from the raw path; the tail and the client's query kept, pinned parameters after."""
    routed = route(routes(raw), path, query)
    assert (routed.path, routed.query, routed.base, routed.public) == expected


def test_route_pinned_values_are_percent_encoded_whole() -> None:
    """A group holding '&url=' cannot add a parameter: every pinned value is encoded, '/' and '&' included."""
    routed = route(routes(TITILER), b"/v1/services/tiles/acme/era5/main/x&url=evil/tiles/t", b"")
    assert routed.query == b"url=%2Fdata%2Facme%2Fera5%2Fmain%2Fx%26url%3Devil.tif"


def test_route_most_specific_wins() -> None:
    """org+repo, then org, then protocol."""
    table = routes(
        {"protocol": "tiles", "upstream": "http://a/{path}"},
        {"protocol": "tiles", "org": "acme", "upstream": "http://b/{path}"},
        {"protocol": "tiles", "org": "acme", "repo": "era5", "upstream": "http://c/{path}"},
    )
    origin = {
        path: route(table, path).route.origin
        for path in (
            b"/v1/services/tiles/acme/era5/main/tiles/x",
            b"/v1/services/tiles/acme/gfs/main/tiles/x",
            b"/v1/services/tiles/other/era5/main/tiles/x",
        )
    }
    assert list(origin.values()) == ["http://c", "http://b", "http://a"]


def test_route_no_route_for_a_routed_protocol_is_404() -> None:
    """A protocol that routes serve and no [upstreams] entry does: a repository none of them takes is 404."""
    table = routes(TITILER)
    with pytest.raises(NotComputePath, match="no route serves this repository"):
        parse_target(b"/v1/services/tiles/other/era5/main/tiles/x", PROTOCOLS, table, b"")


def test_route_falls_back_to_the_protocols_upstream() -> None:
    """With an [upstreams] entry for the protocol, an unrouted repository goes there, its path unchanged."""
    table = routes(TITILER, upstreams={"tiles": "http://plain:8001"})
    assert parse_target(b"/v1/services/tiles/other/era5/main/tiles/x", PROTOCOLS, table).routed is None


def test_route_other_protocols_untouched() -> None:
    """Protocols without routes keep the default upstream, as before routes existed."""
    table = routes(TITILER)
    assert parse_target(b"/v1/services/wms/acme/gfs/main/wms", PROTOCOLS, table).routed is None


NOT_EXPANDABLE = [
    pytest.param(
        TITILER, b"/v1/services/tiles/acme/era5/main/tiles/x", "needs {group}", id="empty-group-in-pinned-value"
    ),
    pytest.param(OPENDAP, b"/v1/services/dap2/acme/h/main/opendap/x", "needs {group}", id="empty-group-segment"),
    pytest.param(XPUBLISH_TILES, b"/v1/services/tiles/acme/era5/main/surface/x", "no service path", id="no-marker"),
    pytest.param(XPUBLISH_TILES, b"/v1/services/tiles/acme/era5/main", "no service path", id="nothing-after-ref"),
    pytest.param(XPUBLISH_TILES, b"/v1/services/tiles/acme/era5/main/", "no service path", id="slash-after-ref"),
    pytest.param(XPUBLISH_TILES, b"/v1/services/tiles/acme/era5/main/Tiles/x", "no service path", id="marker-case"),
]


@pytest.mark.parametrize(("raw", "path", "detail"), NOT_EXPANDABLE)
def test_route_not_expandable_is_404(raw: dict[str, Any], path: bytes, detail: str) -> None:
    """A URL the route cannot be expanded for is a 404 (a JSON refusal), never a server error."""
    with pytest.raises(NotComputePath, match=detail.replace("{", r"\{").replace("}", r"\}")) as raised:
        parse_target(path, PROTOCOLS, routes(raw), b"")
    assert raised.value.status == 404


PINNED_QUERIES = [
    b"url=/etc/passwd",
    b"URL=/etc/passwd",
    b"Url=x",
    b"%75rl=x",
    b"%55%52%4C=x",
    b"%2575rl=x",  # decoded twice
    b"url[]=x",  # PHP reads url[] as url
    b"url",
    b"a=1&url=x",
    b"a=1;url=x",  # split on ';' by some servers
    b"+url=x",  # a space, trimmed by some
]


@pytest.mark.parametrize("query", PINNED_QUERIES)
def test_route_client_sending_a_pinned_parameter_is_400(query: bytes) -> None:
    """A pinned parameter's name is compared decoded and case-insensitively: the client never chooses it."""
    with pytest.raises(PinnedParameter) as raised:
        parse_target(b"/v1/services/tiles/acme/era5/main/g/tiles/x", PROTOCOLS, routes(TITILER), query)
    assert raised.value.status == 400
    assert raised.value.error == "pinned_parameter"


@pytest.mark.parametrize("query", [b"urls=x", b"curl=x", b"u-rl=x", b"x=url", b"bidx=1&rescale=0,255"])
def test_route_other_parameters_pass(query: bytes) -> None:
    """Names that only resemble a pinned one, or carry it as a value, go through."""
    routed = route(routes(TITILER), b"/v1/services/tiles/acme/era5/main/g/tiles/x", query)
    assert routed.query.startswith(query + b"&url=")


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/services/tiles/acme/era5/main/tiles/../../datasets",
        b"/v1/services/tiles/acme/era5/main/tiles/%2e%2e/%2e%2e/datasets",
        b"/v1/services/tiles/acme/era5/main/tiles/..%2f..%2fdatasets",
        b"/v1/services/tiles/acme/era5/main/tiles/%252e%252e/x",
        b"/v1/services/tiles/acme/era5/main/tiles/..;/x",
        b"/v1/services/tiles/acme/era5/main/tiles/a%5c..%5cx",
    ],
)
def test_route_tail_cannot_leave_the_prefix(path: bytes) -> None:
    """The tail is checked like the decided segments before any route sees it: 400."""
    with pytest.raises(AmbiguousPath):
        parse_target(path, PROTOCOLS, routes(XPUBLISH_TILES), b"")


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("url", "url"),
        ("URL", "url"),
        ("%75rl", "url"),
        ("%2575rl", "url"),
        ("url[0]", "url"),
        ("u+rl", "u rl"),
        (" url ", "url"),
    ],
)
def test_parameter_name_reads_as_liberally_as_any_server(name: str, read: str) -> None:
    assert parameter_name(name) == read


def test_route_errors_are_path_errors() -> None:
    """The gate answers every routing refusal as it answers path errors: a JSON body with the status."""
    assert issubclass(PinnedParameter, PathError)
