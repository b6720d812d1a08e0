"""TiTiler, unchanged, behind fluxauth through a route: TileJSON, tiles, WMTS, its map page.

The route pins ``url`` to ``{data}/cogs/{org}/{repo}/{ref}/{group}.tif``: a key
holder reads the COG of the repository it may read, and no other file TiTiler
can reach. Every URL TiTiler writes names fluxauth's public base instead of
TiTiler's address, without the pinned ``url``.
"""

from __future__ import annotations

import gzip
import logging
from urllib.parse import quote

import httpx
import pytest

from fluxauth.config.settings import Settings
from tests.conftest import ProxyFactory, basic
from tests.stock.conftest import routed_settings
from tests.support.readers import basic_value, get_raw, send_raw
from tests.support.servers import Proxy
from tests.support.stock import StockServers

SURFACE = "/v1/services/tiles/acme/era5/main/surface/tiles/"
TILEJSON = SURFACE + "WebMercatorQuad/tilejson.json?tilesize=256&tile_format=png"
client = httpx.Client(timeout=30)


def titiler_direct(stock: StockServers, path: str, query: str = "") -> httpx.Response:
    """What TiTiler itself answers for ``path`` with the route's pinned ``url``."""
    return client.get(f"{stock.titiler}/cog/{path}?url={quote(str(stock.cog), safe='')}{'&' + query if query else ''}")


def assert_no_upstream(text: str, stock: StockServers) -> None:
    """Nothing in ``text`` names TiTiler's address, and no URL carries the pinned ``url``.

    (TiTiler shows the file it opened in titles and identifiers: pinned values
    are not secrets, only the client's choice of them is.)
    """
    assert stock.titiler.removeprefix("http://") not in text
    assert "url=" not in text.lower()
    assert quote(str(stock.data), safe="") not in text


def test_titiler_tilejson_then_a_tile_from_it(routed: Proxy, token: str, stock: StockServers) -> None:
    """The TileJSON names fluxauth's tiles; the tile fetched from it is TiTiler's own, byte for byte."""
    response = client.get(routed.url + TILEJSON, headers=basic("acme", token))
    assert response.status_code == 200, response.text
    tilejson = response.json()
    assert_no_upstream(response.text, stock)
    (template,) = tilejson["tiles"]
    assert template == f"{routed.url}{SURFACE}tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?tilesize=256"
    assert int(response.headers["content-length"]) == len(response.content)

    tile = client.get(template.format(z=1, x=1, y=0), headers=basic("acme", token))
    assert tile.status_code == 200
    assert tile.headers["content-type"] == "image/png"
    assert tile.content == titiler_direct(stock, "tiles/WebMercatorQuad/1/1/0.png", "tilesize=256").content
    assert tile.headers["cache-control"].startswith("private")


def test_titiler_tiles_and_metadata_on_the_hot_path(routed: Proxy, token: str, stock: StockServers) -> None:
    """Once the key is cached, tiles and the rewritten TileJSON are relayed without the ASGI app."""
    auth = basic("acme", token)
    first = client.get(routed.url + TILEJSON, headers=auth)
    tile_url = first.json()["tiles"][0].format(z=1, x=0, y=1)
    client.get(tile_url, headers=auth)
    before = routed.app.hot_path["forward"]
    again = client.get(routed.url + TILEJSON, headers=auth)
    tile = client.get(tile_url, headers=auth)
    assert routed.app.hot_path["forward"] - before == 2
    assert again.content == first.content
    assert tile.status_code == 200
    assert tile.content == titiler_direct(stock, "tiles/WebMercatorQuad/1/0/1.png", "tilesize=256").content


def test_titiler_compressed_metadata_is_decoded_and_mapped(routed: Proxy, token: str, stock: StockServers) -> None:
    """TiTiler gzips JSON for a client that accepts it: fluxauth asks only for what it can decode, and maps it."""
    assert (
        titiler_direct(stock, "WebMercatorQuad/tilejson.json").headers.get("content-encoding") == "gzip"
    )  # httpx asks gzip
    for _ in range(2):  # the ASGI path, then the hot path
        raw = get_raw(
            routed.server.port,
            TILEJSON.encode(),
            [(b"Authorization", basic_value("acme", token)), (b"Accept-Encoding", b"gzip, br, zstd")],
        )
        assert raw.status == 200
        body = gzip.decompress(raw.body) if raw.header("content-encoding") == "gzip" else raw.body
        assert raw.header("content-length") == str(len(raw.body))
        assert (
            b"http://fluxauth.test" + SURFACE.encode() + b"tiles/WebMercatorQuad/{z}/{x}/{y}.png?tilesize=256" in body
        )
        assert_no_upstream(body.decode(), stock)


def test_titiler_behind_a_trusted_tls_proxy_writes_https(
    proxy_factory: ProxyFactory, settings: Settings, stock: StockServers, token: str
) -> None:
    """Behind a trusted proxy, the public base is the scheme and host the client used there."""
    proxy = proxy_factory(routed_settings(settings, stock, trusted_proxies=settings.trusted_proxies + _loopback()))
    headers = {**basic("acme", token), "X-Forwarded-Proto": "https", "X-Forwarded-Host": "maps.example.org"}
    tilejson = client.get(proxy.url + TILEJSON, headers=headers).json()
    assert tilejson["tiles"] == [
        f"https://maps.example.org{SURFACE}tiles/WebMercatorQuad/{{z}}/{{x}}/{{y}}.png?tilesize=256"
    ]


def _loopback() -> tuple[object, ...]:
    import ipaddress

    return (ipaddress.ip_network("127.0.0.1/32"),)


def test_titiler_wmts_capabilities_name_fluxauth(routed: Proxy, token: str, stock: StockServers) -> None:
    """WMTS ``ResourceURL`` templates and operation URLs: fluxauth's, without ``url``."""
    response = client.get(routed.url + SURFACE + "WMTSCapabilities.xml", headers=basic("acme", token))
    assert response.status_code == 200, response.text
    assert_no_upstream(response.text, stock)
    assert (
        f'template="{routed.url}{SURFACE}tiles/WebMercatorQuad/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"'
        in response.text
    )
    assert f'xlink:href="{routed.url}{SURFACE}WMTSCapabilities.xml"' in response.text


def test_titiler_map_page_fetches_through_fluxauth(routed: Proxy, token: str, stock: StockServers) -> None:
    """TiTiler's HTML viewer: the TileJSON it fetches is fluxauth's."""
    response = client.get(routed.url + SURFACE + "WebMercatorQuad/map.html", headers=basic("acme", token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert f"fetch('{routed.url}{SURFACE}WebMercatorQuad/tilejson.json" in response.text
    assert_no_upstream(response.text, stock)


def test_titiler_redirect_location_is_mapped(routed: Proxy, token: str, stock: StockServers) -> None:
    """FastAPI's trailing-slash redirect names TiTiler's address; the client gets fluxauth's."""
    response = client.get(routed.url + SURFACE + "WebMercatorQuad/tilejson.json/", headers=basic("acme", token))
    assert response.status_code == 307
    assert response.headers["location"] == f"{routed.url}{SURFACE}WebMercatorQuad/tilejson.json"


@pytest.mark.parametrize("query", ["url=/etc/passwd", "URL=/etc/passwd", "%75rl=/etc/passwd", "bidx=1&url=x"])
def test_titiler_client_cannot_choose_the_file(routed: Proxy, token: str, query: str) -> None:
    """A client sending ``url`` itself, in any spelling, is refused: only the route names the file."""
    response = client.get(f"{routed.url}{SURFACE}WebMercatorQuad/tilejson.json?{query}", headers=basic("acme", token))
    assert response.status_code == 400
    assert response.json()["error"] == "pinned_parameter"


def test_titiler_needs_credentials(routed: Proxy) -> None:
    response = client.get(routed.url + TILEJSON)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Basic realm="fluxauth", charset="UTF-8"'


def test_titiler_route_not_expandable_is_404(routed: Proxy, token: str) -> None:
    """The pinned ``url`` needs a group: a URL without one is 404 with JSON, and nothing reaches TiTiler."""
    response = client.get(
        routed.url + "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/tilejson.json",
        headers=basic("acme", token),
    )
    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "detail": "this service needs {group} in the URL, and it is empty here",
    }


def test_titiler_metadata_over_the_bound_is_502(
    proxy_factory: ProxyFactory, settings: Settings, stock: StockServers, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A metadata body larger than max_metadata_body is answered 502, with a log line, on both paths."""
    proxy = proxy_factory(routed_settings(settings, stock, max_metadata_body=4096))
    caplog.set_level(logging.WARNING, logger="fluxauth.forward")
    auth = basic("acme", token)
    assert client.get(proxy.url + TILEJSON, headers=auth).status_code == 200  # small: mapped
    hot = proxy.app.hot_path["forward"]
    # The first on the hot path (the key is cached, a connection idle); its
    # connection is closed with the body unread, so the second takes the ASGI path.
    for _ in range(2):
        response = client.get(proxy.url + SURFACE + "WMTSCapabilities.xml", headers=auth)
        assert response.status_code == 502
        assert response.json() == {
            "error": "bad_gateway",
            "detail": "the upstream's metadata response cannot be rewritten",
        }
    assert proxy.app.hot_path["forward"] - hot == 1
    lines = [record.getMessage() for record in caplog.records if "max_metadata_body" in record.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith("routes[1] (tiles acme/era5): a metadata response of ")


@pytest.mark.parametrize("host", [b'fluxauth.test"><script>', b"user@fluxauth.test", b"fluxauth.test:port"])
def test_titiler_host_that_cannot_be_written_is_400(routed: Proxy, token: str, host: bytes) -> None:
    """A Host that is no plain host and port never gets near TiTiler's TileJSON: 400, before any forwarding."""
    request = b"GET " + TILEJSON.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: "
    request += basic_value("acme", token) + b"\r\n\r\n"
    assert client.get(routed.url + TILEJSON, headers=basic("acme", token)).status_code == 200  # the key cached
    hot = routed.app.hot_path["forward"]
    for _ in range(2):
        raw = send_raw(routed.port, request)
        assert raw.status == 400, raw.body
        assert raw.json()["error"] == "bad_host"
    assert routed.app.hot_path["forward"] == hot
