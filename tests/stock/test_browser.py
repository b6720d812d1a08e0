"""MapLibre in Chromium with a TileJSON source: TiTiler's, through a route, on another origin than the page.

The README's snippet loads the TileJSON through fluxauth; its tile URLs must be
fluxauth's (the page authenticates only those), and the map must show
TiTiler's tiles pixel for pixel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from fluxauth.config.settings import Settings
from tests.conftest import ProxyFactory
from tests.stock.conftest import routed_settings
from tests.support.browser import allowed_origin, assert_shows, open_map, page_server
from tests.support.clients import Image, read_png
from tests.support.servers import ServerThread
from tests.support.stock import StockServers

SNIPPET = "MapLibre GL JS with a TileJSON source"
SURFACE = "/v1/services/tiles/acme/era5/main/surface/tiles/"


@pytest.fixture(scope="module")
def pages() -> Iterator[ServerThread]:
    with page_server() as server:
        yield server


def titiler_mosaic(stock: StockServers) -> Image:
    """TiTiler's own four tiles of zoom 1, side by side: what the page's 512-pixel world at zoom 0 shows."""
    url = quote(str(stock.cog), safe="")
    tiles = {
        (x, y): read_png(
            httpx.get(
                f"{stock.titiler}/cog/tiles/WebMercatorQuad/1/{x}/{y}.png?url={url}&tilesize=256", timeout=30
            ).content
        )
        for x in (0, 1)
        for y in (0, 1)
    }
    rows = [b"".join(tiles[x, y].rows[row] for x in (0, 1)) for y in (0, 1) for row in range(256)]
    return Image(512, 512, rows)


def test_browser_maplibre_tilejson_source_through_a_route(
    tmp_path: Path,
    proxy_factory: ProxyFactory,
    settings: Settings,
    stock: StockServers,
    token: str,
    pages: ServerThread,
) -> None:
    """TileJSON and tiles both through fluxauth, authenticated; the canvas shows TiTiler's pixels."""
    proxy = proxy_factory(routed_settings(settings, stock, cors_allow_origins=(allowed_origin(pages),)))
    report, shot = open_map(tmp_path, allowed_origin(pages), proxy.url, token, snippet=SNIPPET)

    assert report["map"]["errors"] == []
    assert report["authRequired"] == []
    fetched = {item["url"] for item in report["responses"] if item["method"] == "GET"}
    assert f"{proxy.url}{SURFACE}WebMercatorQuad/tilejson.json?tilesize=256&tile_format=png" in fetched
    tiles = {f"{proxy.url}{SURFACE}tiles/WebMercatorQuad/1/{x}/{y}.png?tilesize=256" for x in (0, 1) for y in (0, 1)}
    assert tiles <= fetched
    # Nothing went to TiTiler itself (blob: URLs are MapLibre's own worker script).
    reached = {item["url"].split("/")[2] for item in report["responses"] if item["url"].startswith("http")}
    assert reached == {proxy.url.removeprefix("http://"), allowed_origin(pages).removeprefix("http://")}
    assert_shows(shot, titiler_mosaic(stock))
