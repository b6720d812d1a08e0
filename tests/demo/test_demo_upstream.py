"""Tests for the built-in demo tile/WMS upstream."""

from __future__ import annotations

import hashlib
import struct
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from fluxauth.demo.upstream import (
    big_body_sha256,
    create_app,
    render_tile,
)
from tests.support.clients import read_png

TILE_PATH = "/v1/services/tiles/acme/era5/main/surface/tiles/WebMercatorQuad"
WMS_PATH = "/v1/services/wms/acme/gfs/main/wms"
WMS_NS = {"wms": "http://www.opengis.net/wms", "xlink": "http://www.w3.org/1999/xlink"}
XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
GETMAP = {
    "SERVICE": "WMS",
    "VERSION": "1.3.0",
    "REQUEST": "GetMap",
    "LAYERS": "t2m",
    "STYLES": "",
    "CRS": "EPSG:4326",
    "BBOX": "-90,-180,90,180",
    "WIDTH": "300",
    "HEIGHT": "200",
    "FORMAT": "image/png",
}


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking every CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos : pos + 8])
        data = png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data) & 0xFFFFFFFF
        chunks.append((kind, data))
        pos += 12 + length
    return chunks


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk (8-bit RGB expected)."""
    kind, data = png_chunks(png)[0]
    assert kind == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[:10])
    assert (depth, colour) == (8, 2)
    return width, height


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.text == "ok"


@pytest.mark.parametrize("suffix", ["3/2/4", "3/2/4.png"])
def test_tile_is_valid_png(client: TestClient, suffix: str) -> None:
    response = client.get(f"{TILE_PATH}/{suffix}", params={"variables": "t2m"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "public, max-age=60"
    assert png_size(response.content) == (256, 256)
    assert [kind for kind, _ in png_chunks(response.content)][-1] == b"IEND"
    assert response.content == render_tile(3, 2, 4)


def test_tiles_differ(client: TestClient) -> None:
    tiles = {
        client.get(f"{TILE_PATH}/{z}/{x}/{y}").content
        for z, x, y in [
            (0, 0, 0),
            (1, 0, 0),
            (1, 1, 0),
            (1, 0, 1),
            (3, 2, 4),
        ]
    }
    assert len(tiles) == 5
    assert render_tile(22, 100, 100) != render_tile(22, 101, 100)


def test_tile_pixels_plausible() -> None:
    png = render_tile(2, 1, 1)
    centre = read_png(png).pixel(128, 128)
    border = read_png(png).pixel(0, 128)
    assert all(0 <= c <= 255 for c in centre)
    assert sum(centre) > 0
    assert sum(border) < sum(centre)  # the 1-px border is darker
    # red grows with x across the world extent, green with y
    left, right = read_png(png).pixel(40, 128), read_png(png).pixel(200, 128)
    top, bottom = read_png(png).pixel(128, 40), read_png(png).pixel(128, 200)
    assert right[0] > left[0]
    assert bottom[1] > top[1]


@pytest.mark.parametrize("suffix", ["1/2/0", "1/0/2", "23/0/0", "0/0/1.png"])
def test_tile_out_of_range(client: TestClient, suffix: str) -> None:
    response = client.get(f"{TILE_PATH}/{suffix}")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"


def test_unknown_path(client: TestClient) -> None:
    response = client.get("/nothing/here")
    assert response.status_code == 404
    assert response.json() == {"error": "not_found"}


def test_tile_wrong_method(client: TestClient) -> None:
    assert client.post(f"{TILE_PATH}/0/0/0").status_code == 405


def test_wms_capabilities_uses_forwarded_headers(client: TestClient) -> None:
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "maps.example.com, x"}
    params = {"service": "WMS", "request": "GetCapabilities"}
    response = client.get(WMS_PATH, params=params, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.opengis.net/wms}WMS_Capabilities"
    assert root.get("version") == "1.3.0"
    hrefs = {el.get(XLINK_HREF) for el in root.iter("{http://www.opengis.net/wms}OnlineResource")}
    assert hrefs == {f"https://maps.example.com{WMS_PATH}?"}
    get_map = root.find("wms:Capability/wms:Request/wms:GetMap", WMS_NS)
    assert get_map is not None
    assert get_map.findtext("wms:Format", namespaces=WMS_NS) == "image/png"
    layer = root.find("wms:Capability/wms:Layer", WMS_NS)
    assert layer is not None
    assert [c.text for c in layer.findall("wms:CRS", WMS_NS)] == [
        "EPSG:4326",
        "EPSG:3857",
    ]
    assert layer.find("wms:EX_GeographicBoundingBox", WMS_NS) is not None
    names = {
        el.findtext("wms:Name", namespaces=WMS_NS): el.findtext("wms:Title", namespaces=WMS_NS)
        for el in layer.findall("wms:Layer", WMS_NS)
    }
    assert set(names) == {"t2m", "precip"}
    assert all(names.values())


def test_wms_capabilities_without_forwarding_uses_host(client: TestClient) -> None:
    response = client.get("/a/WMS?SERVICE=WMS&REQUEST=GetCapabilities")
    root = ET.fromstring(response.content)
    hrefs = {el.get(XLINK_HREF) for el in root.iter("{http://www.opengis.net/wms}OnlineResource")}
    assert hrefs == {"http://testserver/a/WMS?"}


def test_wms_getmap(client: TestClient) -> None:
    response = client.get(WMS_PATH, params=GETMAP)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert png_size(response.content) == (300, 200)
    again = client.get(WMS_PATH, params={k.lower(): v for k, v in GETMAP.items()})
    assert again.content == response.content  # keys are case-insensitive, output stable
    other = client.get(WMS_PATH, params={**GETMAP, "LAYERS": "precip"})
    assert other.content != response.content
    assert read_png(response.content).pixel(299, 199) != read_png(response.content).pixel(0, 0)


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"LAYERS": "nope"}, "LayerNotDefined"),
        ({"WIDTH": "0"}, "InvalidParameterValue"),
        ({"HEIGHT": "4096"}, "InvalidParameterValue"),
        ({"WIDTH": "abc"}, "InvalidParameterValue"),
        ({"FORMAT": "image/jpeg"}, "InvalidFormat"),
        ({"BBOX": "1,2,3"}, "InvalidParameterValue"),
        ({"BBOX": "10,0,0,10"}, "InvalidParameterValue"),
        ({"CRS": "EPSG:9999"}, "InvalidCRS"),
        ({"REQUEST": "GetFeatureInfo"}, "OperationNotSupported"),
        ({"REQUEST": ""}, "MissingParameterValue"),
    ],
)
def test_wms_bad_getmap(client: TestClient, override: dict[str, str], code: str) -> None:
    response = client.get(WMS_PATH, params={**GETMAP, **override})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.opengis.net/ogc}ServiceExceptionReport"
    exception = root.find("{http://www.opengis.net/ogc}ServiceException")
    assert exception is not None
    assert exception.get("code") == code


def test_echo_reports_request(client: TestClient) -> None:
    body = b"x" * 100_000
    response = client.put(
        "/v1/services/tiles/acme/era5/main/_echo/a%2Fb",
        params={"q": "1"},
        content=body,
        headers={"X-Custom": "yes"},
    )
    assert response.status_code == 200
    data = response.json()
    assert data["method"] == "PUT"
    assert data["raw_path"] == "/v1/services/tiles/acme/era5/main/_echo/a%2Fb"
    assert data["query_string"] == "q=1"
    assert ["x-custom", "yes"] in data["headers"]
    assert data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["body_length"] == len(body)


def test_echo_any_method(client: TestClient) -> None:
    data = client.request("PROPFIND", "/_echo").json()
    assert data["method"] == "PROPFIND"
    assert data["body_length"] == 0
    assert data["body_sha256"] == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("n", [0, 1, 65_536, 200_001])
def test_big_body(client: TestClient, n: int) -> None:
    response = client.get(f"/v1/services/tiles/acme/era5/main/_big/{n}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert len(response.content) == n
    digest = hashlib.sha256(response.content).hexdigest()
    assert response.headers["x-body-sha256"] == digest == big_body_sha256(n)


def test_big_body_deterministic_and_capped(client: TestClient) -> None:
    assert client.get("/_big/1000").content == client.get("/_big/1000").content
    assert client.get(f"/_big/{64 * 1024 * 1024 + 1}").status_code == 400


def test_slow(client: TestClient) -> None:
    response = client.get("/x/_slow/20")
    assert response.status_code == 200
    assert response.text == "slow"
