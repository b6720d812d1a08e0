"""xpublish, unchanged, behind fluxauth through routes: xpublish-tiles (TileJSON, tiles, WMS), xpublish-wms (OWSLib).

The routes put ``/datasets/{repo}/tiles/``, ``/datasets/{repo}/wms/`` and
``/datasets/{repo}/cfwms/`` under fluxauth's URLs; ``/datasets`` itself, the
list of every dataset the server holds, is never reachable: the service path
cannot climb out of the route's prefix in any spelling.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx
import pytest
from owslib.wms import WebMapService

from tests.conftest import basic
from tests.support.clients import read_png
from tests.support.readers import basic_value, get_raw
from tests.support.servers import Proxy
from tests.support.stock import StockServers

TILES = "/v1/services/tiles/acme/gfs/main/tiles/"
STYLE = "variables=t2m&style=raster/viridis&colorscalerange=240,300&width=256&height=256"
WMS_TILES = "/v1/services/wms/acme/era5/main/wms"  # xpublish-tiles' WMS
WMS_CF = "/v1/services/wms/acme/gfs/main/wms"  # xpublish-wms
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
client = httpx.Client(timeout=60)


def assert_no_upstream(text: str, stock: StockServers) -> None:
    assert stock.xpublish.removeprefix("http://") not in text


def test_xpublish_tiles_tilejson_then_tiles(routed: Proxy, token: str, stock: StockServers) -> None:
    """The TileJSON's tiles and legend are fluxauth's; a tile from it is xpublish-tiles' own."""
    response = client.get(f"{routed.url}{TILES}WebMercatorQuad/tilejson.json?{STYLE}", headers=basic("acme", token))
    assert response.status_code == 200, response.text
    assert_no_upstream(response.text, stock)
    tilejson = response.json()
    (template,) = tilejson["tiles"]
    assert template.startswith(f"{routed.url}{TILES}WebMercatorQuad/{{z}}/{{y}}/{{x}}?variables=t2m&")
    assert tilejson["legend"].startswith(f"{routed.url}{TILES}legend?")

    for z, y, x in ((0, 0, 0), (1, 0, 1), (2, 1, 2)):
        tile = client.get(template.format(z=z, y=y, x=x), headers=basic("acme", token))
        assert tile.status_code == 200, tile.text
        assert tile.headers["content-type"] == "image/png"
        direct = client.get(
            template.format(z=z, y=y, x=x).replace(routed.url + TILES, f"{stock.xpublish}/datasets/gfs/tiles/")
        )
        assert tile.content == direct.content
        assert read_png(tile.content).width == 256


def test_xpublish_tiles_listing_keeps_relative_links(routed: Proxy, token: str, stock: StockServers) -> None:
    """OGC API tilesets: relative and root-relative links are left as the server wrote them."""
    response = client.get(routed.url + TILES, headers=basic("acme", token))
    assert response.status_code == 200
    links = [link["href"] for tileset in response.json()["tilesets"] for link in tileset["links"]]
    assert "./WebMercatorQuad" in links
    assert "/tileMatrixSets/WebMercatorQuad" in links
    assert_no_upstream(response.text, stock)


@pytest.mark.parametrize(
    "tail",
    [
        b"../../../datasets",
        b"../../../datasets/",
        b"%2e%2e/%2e%2e/%2e%2e/datasets",
        b"%2E%2E/%2e./.%2E/datasets",
        b"..%2f..%2f..%2fdatasets",
        b"%2e%2e%2f%2e%2e%2f%2e%2e%2fdatasets",
        b"%252e%252e/%252e%252e/%252e%252e/datasets",
        b"..;/..;/..;/datasets",
        b"..%5c..%5c..%5cdatasets",
        b"%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/datasets",
        b"%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/datasets",
        b".. /.. /.. /datasets".replace(b" ", b"%20"),
    ],
)
def test_xpublish_dataset_list_stays_unreachable(routed: Proxy, token: str, tail: bytes) -> None:
    """No spelling of a way up from the route's prefix reaches ``/datasets``: 400 from fluxauth."""
    response = get_raw(routed.server.port, TILES.encode() + tail, [(b"Authorization", basic_value("acme", token))])
    assert response.status == 400, response.body
    assert b"secret" not in response.body
    assert response.json()["error"] == "bad_path"


def test_xpublish_other_datasets_only_through_their_repo(routed: Proxy, token: str) -> None:
    """A repository named like the list gets xpublish's 404 for that dataset, not the list."""
    response = client.get(routed.url + "/v1/services/tiles/acme/datasets/main/tiles/", headers=basic("acme", token))
    assert response.status_code == 404
    assert "secret" not in response.text


def test_xpublish_tiles_wms_capabilities_name_fluxauth(routed: Proxy, token: str, stock: StockServers) -> None:
    """xpublish-tiles' WMS: every OnlineResource and operation URL is fluxauth's."""
    response = client.get(
        f"{routed.url}{WMS_TILES}?service=WMS&request=GetCapabilities&version=1.3.0", headers=basic("acme", token)
    )
    assert response.status_code == 200, response.text
    assert_no_upstream(response.text, stock)
    hrefs = {
        element.attrib[XLINK_HREF] for element in ET.fromstring(response.content).iter() if XLINK_HREF in element.attrib
    }
    assert f"{routed.url}{WMS_TILES}/" in hrefs  # as requested: the route's base ends with "/"
    assert all(href.startswith(f"{routed.url}{WMS_TILES}") for href in hrefs if "opengis.net" not in href)


def test_xpublish_wms_with_owslib_getmap_from_the_capabilities(routed: Proxy, token: str, stock: StockServers) -> None:
    """OWSLib reads xpublish-wms' capabilities through fluxauth and gets the map at the URL they give."""
    wms = WebMapService(f"{routed.url}{WMS_CF}", version="1.3.0", username="acme", password=token, timeout=60)
    assert list(wms.contents) == ["t2m"]
    (method,) = wms.getOperationByName("GetMap").methods
    assert method["url"] == f"{routed.url}{WMS_CF}/"  # xpublish-wms names the URL it was asked at
    image = wms.getmap(
        layers=["t2m"],
        styles=["raster/default"],
        srs="EPSG:4326",
        bbox=(-90, -180, 90, 180),
        size=(256, 128),
        format="image/png",
        colorscalerange="240,300",
    )
    assert image.info()["Content-Type"] == "image/png"
    png = read_png(image.read())
    assert (png.width, png.height) == (256, 128)
    unauthenticated = client.get(f"{routed.url}{WMS_CF}?service=WMS&request=GetCapabilities")
    assert unauthenticated.status_code == 401
