"""MapProxy, unchanged, behind fluxauth through a route: WMS and WMTS with OWSLib, TMS, OGC API links.

The route puts MapProxy's project ``basemap`` (``/basemap/`` of its projects
directory) under ``/v1/services/wms/acme/basemap/main/wms/``: each of the
project's services follows the marker (WMS and WMTS KVP at ``service``,
RESTful WMTS at ``wmts``, TMS at ``tms``, OGC API at ``ogcapi``). MapProxy
writes every URL from the ``Host`` fluxauth sends and its own script path;
fluxauth maps them back. MapProxy's root, the list of every project, and the
project ``secret`` stay out of reach.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from owslib.wms import WebMapService
from owslib.wmts import WebMapTileService

from tests.conftest import basic
from tests.support.clients import read_png
from tests.support.readers import basic_value, get_raw
from tests.support.servers import Proxy
from tests.support.stock import StockServers

BASE = "/v1/services/wms/acme/basemap/main/wms/"
WMS_CAPABILITIES = "service?SERVICE=WMS&REQUEST=GetCapabilities"
OGC_REL = "http://www.opengis.net/def/rel/ogc/1.0/"
HALF = 20037508.342789244  # the Web Mercator square's half width, in metres
client = httpx.Client(timeout=30)


def tile_file(stock: StockServers, z: int, x: int, y: int) -> Path:
    """The PNG the test data holds for tile ``z/x/y`` (row ``y`` from the top) of project ``basemap``."""
    return stock.data / "mapproxy" / "tiles" / "basemap" / str(z) / str(x) / f"{y}.png"


@pytest.mark.parametrize(
    "document",
    [
        WMS_CAPABILITIES + "&VERSION=1.1.1",
        WMS_CAPABILITIES + "&VERSION=1.3.0",
        "service?SERVICE=WMTS&REQUEST=GetCapabilities",
        "wmts/1.0.0/WMTSCapabilities.xml",
        "tms/1.0.0/",
        "tms/1.0.0/surface/EPSG3857",
        "ogcapi?f=json",
        "ogcapi?f=html",
        "ogcapi/api?f=json",
        "ogcapi/api?f=html",  # Swagger UI's scripts at ".../api/../static/..."
        "ogcapi/collections/surface/map/tiles/webmercator?f=html",  # OpenLayers' tile URL in a script
    ],
)
def test_mapproxy_documents_name_fluxauth_only(routed: Proxy, token: str, stock: StockServers, document: str) -> None:
    """Each document is MapProxy's own with every self-URL, and only those, under fluxauth's public base."""
    response = client.get(routed.url + BASE + document, headers=basic("acme", token))
    assert response.status_code == 200, response.text
    direct = client.get(f"{stock.mapproxy}/basemap/{document}")
    assert direct.text.count(f"{stock.mapproxy}/basemap/") >= 1
    assert response.text == direct.text.replace(f"{stock.mapproxy}/basemap/", routed.url + BASE)
    assert stock.mapproxy.removeprefix("http://") not in response.text
    assert int(response.headers["content-length"]) == len(response.content)


def test_mapproxy_wms_with_owslib_getmap_from_the_capabilities(routed: Proxy, token: str, stock: StockServers) -> None:
    """OWSLib reads the WMS capabilities through fluxauth and gets the map at the URL they give."""
    wms = WebMapService(routed.url + BASE + "service", version="1.3.0", username="acme", password=token, timeout=30)
    assert list(wms.contents) == ["surface"]
    assert wms.identification.title == "acme basemap"
    (method,) = wms.getOperationByName("GetMap").methods
    assert method["url"] == f"{routed.url}{BASE}service?"
    image = wms.getmap(
        layers=["surface"],
        srs="EPSG:3857",
        bbox=(0, 0, HALF, HALF),  # tile 1/1/0: the north-east quarter
        size=(256, 256),
        format="image/png",
    )
    assert image.info()["Content-Type"] == "image/png"
    assert read_png(image.read()) == read_png(tile_file(stock, 1, 1, 0).read_bytes())


def test_mapproxy_wmts_with_owslib_tiles_from_the_capabilities(routed: Proxy, token: str, stock: StockServers) -> None:
    """OWSLib reads the RESTful WMTS capabilities; the ResourceURL and the KVP GetTile give the tile written."""
    wmts = WebMapTileService(routed.url + BASE + "wmts/1.0.0/WMTSCapabilities.xml", username="acme", password=token)
    assert list(wmts.contents) == ["surface"]
    (resource,) = wmts.contents["surface"].resourceURLs
    template = resource["template"]
    assert template == f"{routed.url}{BASE}wmts/surface/{{TileMatrixSet}}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
    for z, x, y in ((0, 0, 0), (1, 1, 0), (2, 1, 3)):
        url = template.format(TileMatrixSet="webmercator", TileMatrix=z, TileCol=x, TileRow=y)
        tile = client.get(url, headers=basic("acme", token))
        assert tile.status_code == 200
        assert tile.headers["content-type"] == "image/png"
        assert tile.content == tile_file(stock, z, x, y).read_bytes()
        assert client.get(url).status_code == 401

    kvp = WebMapTileService(
        routed.url + BASE + "service?SERVICE=WMTS&REQUEST=GetCapabilities", username="acme", password=token
    )
    (method,) = kvp.getOperationByName("GetTile").methods
    assert method["url"] == f"{routed.url}{BASE}service?"
    tile = kvp.gettile(layer="surface", tilematrixset="webmercator", tilematrix="2", row=2, column=3)
    assert tile.read() == tile_file(stock, 2, 3, 2).read_bytes()


def test_mapproxy_ogcapi_links_lead_to_a_tile(routed: Proxy, token: str, stock: StockServers) -> None:
    """From the OGC API landing page, link by link, to a tile of the written cache: every link fluxauth's."""
    auth = basic("acme", token)

    def get(url: str) -> dict[str, Any]:
        response = client.get(url, headers=auth)
        assert response.status_code == 200, response.text
        document: dict[str, Any] = response.json()
        return document

    def link(links: list[dict[str, str]], rel: str, kind: str = "application/json") -> str:
        assert all(item["href"].startswith(routed.url + BASE) for item in links if "127.0.0.1" in item["href"])
        return next(item["href"] for item in links if item["rel"] == rel and item["type"] == kind)

    landing = get(routed.url + BASE + "ogcapi?f=json")
    assert link(landing["links"], "self") == f"{routed.url}{BASE}ogcapi?f=json"
    (collection,) = get(link(landing["links"], "data"))["collections"]
    tilesets = get(link(collection["links"], OGC_REL + "tilesets-map"))["tilesets"]
    (webmercator,) = (tileset for tileset in tilesets if tileset["title"] == "surface with webmercator tile matrix set")
    template = link(get(link(webmercator["links"], "self"))["links"], "item", "image/png")
    assert template == f"{routed.url}{BASE}ogcapi/collections/surface/map/tiles/webmercator/" + (
        "{tileMatrix}/{tileRow}/{tileCol}.png"
    )
    tile = client.get(template.format(tileMatrix=1, tileRow=0, tileCol=1), headers=auth)
    assert tile.status_code == 200
    assert tile.content == tile_file(stock, 1, 1, 0).read_bytes()


@pytest.mark.parametrize(
    "tail",
    [b"..", b"../", b"../secret/service", b"%2e%2e/secret/service", b"..%2fsecret%2fservice", b".%2E/.%2e/"],
)
def test_mapproxy_projects_list_and_other_projects_stay_unreachable(
    routed: Proxy, token: str, stock: StockServers, tail: bytes
) -> None:
    """No spelling of a way up from ``/basemap/`` reaches MapProxy's list of projects or ``secret``: 400."""
    assert "/secret/" in client.get(stock.mapproxy + "/").text  # the list, one step up
    target = BASE.encode() + tail + b"?SERVICE=WMS&REQUEST=GetCapabilities"
    response = get_raw(routed.server.port, target, [(b"Authorization", basic_value("acme", token))])
    assert response.status == 400, response.body
    assert response.json()["error"] == "bad_path"


def test_mapproxy_script_name_from_the_client_is_not_believed(routed: Proxy, token: str, stock: StockServers) -> None:
    """MapProxy takes ``X-Script-Name`` off the path (its prefix behind a proxy): a client's would open ``secret``."""
    secret = "secret/service?SERVICE=WMS&REQUEST=GetCapabilities"
    direct = client.get(f"{stock.mapproxy}/basemap/{secret}", headers={"X-Script-Name": "/basemap"})
    assert "secret project" in direct.text  # what MapProxy does when it believes the header
    response = client.get(routed.url + BASE + secret, headers={**basic("acme", token), "X-Script-Name": "/basemap"})
    assert response.status_code == 404
    assert "secret" not in response.text


def test_mapproxy_needs_credentials(routed: Proxy) -> None:
    response = client.get(routed.url + BASE + WMS_CAPABILITIES)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="fluxauth", charset="UTF-8"'
