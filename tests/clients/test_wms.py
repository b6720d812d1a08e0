"""WMS 1.3.0 through fluxauth: OWSLib as the README shows it, and capabilities that point back through fluxauth.

A client takes the GetMap URL from the capabilities document. If that URL named
the upstream, OWSLib, QGIS or GDAL would fetch maps from it directly, around
fluxauth; the demo upstream builds it from the ``X-Forwarded-Proto/Host`` that
fluxauth sends, so it names fluxauth, or the public host of a trusted proxy in
front of it.
"""

from __future__ import annotations

import base64
import ipaddress
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from owslib.util import ServiceException

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from tests.conftest import basic
from tests.support.clients import (
    PRINCIPAL,
    README_ORIGIN,
    WMS_PATH,
    Stack,
    read_png,
    readme_snippet,
    running_stack,
    wrong_secret,
)

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
CAPABILITIES = "?service=WMS&request=GetCapabilities&version=1.3.0"


def run_owslib_snippet(stack: Stack, token: str) -> dict[str, Any]:
    """Run the README's OWSLib snippet against ``stack``; return its variables."""
    code = readme_snippet("OWSLib", "python")
    assert README_ORIGIN in code
    namespace: dict[str, Any] = {"token": token}
    exec(compile(code.replace(README_ORIGIN, stack.url), "README.md", "exec"), namespace)  # noqa: S102 - our README
    return namespace


def operation(query: str) -> str:
    """The WMS ``REQUEST`` of a query string (parameter names are case-insensitive)."""
    return {name.lower(): value for name, value in parse_qsl(query)}["request"].lower()


def hrefs(capabilities: bytes) -> set[str]:
    """Every ``xlink:href`` in a capabilities document."""
    return {
        element.attrib[XLINK_HREF] for element in ET.fromstring(capabilities).iter() if XLINK_HREF in element.attrib
    }


def test_wms_owslib_lists_layers_and_gets_a_map_through_fluxauth(stack: Stack, token: str) -> None:
    """OWSLib with username/password: capabilities and GetMap both pass fluxauth, pixels as the upstream's."""
    found = run_owslib_snippet(stack, token)

    assert found["layers"] == ["t2m", "precip"]
    service_url = stack.url + WMS_PATH + "?"
    assert [method["url"] for method in found["wms"].getOperationByName("GetMap").methods] == [service_url]
    image = found["image"].read()

    requests = stack.at_proxy.to(WMS_PATH)
    assert [operation(e.query) for e in requests] == ["getcapabilities", "getmap"]
    basic_header = "Basic " + base64.b64encode(f"acme:{token}".encode()).decode()
    for exchange in requests:
        assert exchange.headers["authorization"] == basic_header
        assert exchange.status == 200
    assert len(stack.at_upstream.exchanges) == 2
    for exchange in stack.at_upstream.exchanges:
        assert exchange.headers["x-fluxauth-principal"] == PRINCIPAL
        assert "authorization" not in exchange.headers
    getmap = stack.at_upstream.exchanges[1]
    direct = httpx.get(f"{stack.upstream.url}{getmap.path}?{getmap.query}", timeout=10)
    assert direct.headers["content-type"] == "image/png"
    assert image == direct.content
    png = read_png(image)
    assert (png.width, png.height) == (512, 256)


def test_wms_owslib_wrong_key_is_refused(stack: Stack, token: str) -> None:
    """A wrong key: OWSLib raises on the 401, and nothing reaches the upstream."""
    with pytest.raises(ServiceException, match="unauthorized"):
        run_owslib_snippet(stack, wrong_secret(token))
    assert [e.status for e in stack.at_proxy.exchanges] == [401]
    assert stack.at_upstream.exchanges == []


def test_wms_capabilities_name_the_public_host_of_a_trusted_proxy(
    settings: Settings, store_path: str, clock: FakeClock, token: str
) -> None:
    """Behind a trusted TLS terminator, the capabilities' URLs are its public https:// ones."""
    trusted = (ipaddress.ip_network("127.0.0.1/32"),)
    with running_stack(settings, store_path, clock, trusted_proxies=trusted) as stack:
        response = httpx.get(
            stack.url + WMS_PATH + CAPABILITIES,
            headers={**basic("acme", token), "X-Forwarded-Proto": "https", "X-Forwarded-Host": "maps.example.org"},
            timeout=10,
        )
    assert response.status_code == 200
    assert hrefs(response.content) == {"https://maps.example.org" + WMS_PATH + "?"}


def test_wms_capabilities_ignore_forwarded_headers_from_untrusted_clients(stack: Stack, token: str) -> None:
    """A client's own X-Forwarded-Host cannot point the capabilities elsewhere: they name fluxauth."""
    response = httpx.get(
        stack.url + WMS_PATH + CAPABILITIES,
        headers={**basic("acme", token), "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"},
        timeout=10,
    )
    assert response.status_code == 200
    assert hrefs(response.content) == {stack.url + WMS_PATH + "?"}
