"""A web map in a real browser: Debian's Chromium, MapLibre GL JS from npm, fluxauth on another origin.

The page is the README's MapLibre snippet, served by a second server: from
``http://localhost:<port>`` (an allowed origin) or ``http://127.0.0.1:<port>``
(the same server, an origin fluxauth does not allow). fluxauth is at
``http://127.0.0.1:<its port>``. ``tests/browser/drive.mjs`` drives Chromium with
playwright-core and reports what the page saw and every login challenge that
Chromium raised (CDP ``Fetch.authRequired``); recorders at the proxy and at the
upstream say what each received.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from tests.support.browser import (
    allowed_origin,
    assert_blank,
    assert_shows,
    open_map,
    other_origin,
    page_server,
)
from tests.support.clients import PRINCIPAL, TILE_PATH, Stack, mosaic, running_stack, wrong_secret
from tests.support.servers import ServerThread

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

# The README's map is MapLibre's zoom 0, a world 512 pixels wide: on the page's 512 x 512
# canvas it is the four 256-pixel tiles 1/x/y, pixel for pixel.
ZOOM1_TILES = [TILE_PATH.format(z=1, x=x, y=y) for x in (0, 1) for y in (0, 1)]


@pytest.fixture(scope="module")
def pages() -> Iterator[ServerThread]:
    with page_server() as server:
        yield server


@pytest.fixture
def stack(settings: Settings, store_path: str, clock: FakeClock, pages: ServerThread) -> Iterator[Stack]:
    with running_stack(settings, store_path, clock, cors_allow_origins=(allowed_origin(pages),)) as stack:
        yield stack


def tile_urls(report: dict[str, Any], key: str, stack: Stack) -> set[str]:
    """The paths of the tile requests under ``report[key]`` (requests to fluxauth only)."""
    return {item["url"].removeprefix(stack.url) for item in report[key] if item["url"].startswith(stack.url + "/")}


def test_browser_map_renders_tiles_through_fluxauth(
    tmp_path: Path, stack: Stack, token: str, pages: ServerThread
) -> None:
    """Preflights are answered, the tiles arrive authenticated, and the canvas shows the upstream's pixels."""
    origin = allowed_origin(pages)
    report, shot = open_map(tmp_path, origin, stack.url, token)

    assert report["map"]["errors"] == []
    assert report["authRequired"] == []
    basic = "Basic " + base64.b64encode(f"acme:{token}".encode()).decode()
    for path in ZOOM1_TILES:
        preflights = [e for e in stack.at_proxy.to(path) if e.method == "OPTIONS"]
        assert preflights, f"no preflight for {path}"
        for preflight in preflights:  # answered by fluxauth itself, without credentials
            assert preflight.headers["origin"] == origin
            assert "authorization" in preflight.headers["access-control-request-headers"].lower()
            assert "authorization" not in preflight.headers
            assert preflight.status == 204
            assert preflight.response_headers["access-control-allow-origin"] == origin
            assert "authorization" in preflight.response_headers["access-control-allow-headers"].lower()
        gets = [e for e in stack.at_proxy.to(path) if e.method == "GET"]
        assert gets, f"no request for {path}"
        for get in gets:
            assert get.headers["authorization"] == basic
            assert get.status == 200
            assert get.response_headers["access-control-allow-origin"] == origin
        forwarded = stack.at_upstream.to(path)
        assert len(forwarded) == len(gets)
        for request in forwarded:
            assert request.headers["x-fluxauth-principal"] == PRINCIPAL
            assert "authorization" not in request.headers
    assert all(e.method == "GET" for e in stack.at_upstream.exchanges), "a preflight was forwarded"
    assert tile_urls(report, "intercepted", stack) >= set(ZOOM1_TILES)
    assert_shows(shot, mosaic(1))


def test_browser_wrong_key_shows_no_tile_and_no_login_dialog(
    tmp_path: Path, stack: Stack, token: str, pages: ServerThread
) -> None:
    """With a wrong key the map sees each 401, draws nothing, and Chromium asks nobody for credentials.

    The control at the end opens a tile URL as a page, where Chromium does raise the
    challenge: the same watch that saw nothing for the map would have seen a dialog.
    """
    origin = allowed_origin(pages)
    navigate = stack.url + TILE_PATH.format(z=3, x=2, y=4)  # a tile the map does not show
    report, shot = open_map(tmp_path, origin, stack.url, wrong_secret(token), navigate=navigate)

    statuses = {(error["url"] or "").removeprefix(stack.url): error["status"] for error in report["map"]["errors"]}
    assert {path: statuses.get(path) for path in ZOOM1_TILES} == dict.fromkeys(ZOOM1_TILES, 401)  # readable: CORS
    for path in ZOOM1_TILES:
        gets = [e for e in stack.at_proxy.to(path) if e.method == "GET"]
        assert gets, f"no request for {path}"
        for get in gets:  # one per copy of the world that shows the tile
            assert "authorization" in get.headers
            assert get.status == 401
            assert get.response_headers["www-authenticate"] == 'Basic realm="fluxauth", charset="UTF-8"'
            assert get.response_headers["access-control-allow-origin"] == origin
    assert tile_urls(report, "intercepted", stack) >= set(ZOOM1_TILES), "the watch for challenges saw no tile"
    assert_blank(shot)
    assert report["dialogs"] == []
    assert stack.at_upstream.exchanges == []

    # The control: a top-level page on the same URL gets the login challenge.
    assert report["navigation"] == {"url": navigate, "status": 401}
    assert [(a["url"], a["scheme"].lower(), a["realm"]) for a in report["authRequired"]] == [
        (navigate, "basic", "fluxauth")
    ]


def test_browser_page_on_another_origin_is_refused_and_nothing_forwarded(
    tmp_path: Path, stack: Stack, token: str, pages: ServerThread
) -> None:
    """A page from an origin fluxauth does not allow stops at the preflight: no tile, nothing upstream."""
    origin = other_origin(pages)
    report, shot = open_map(tmp_path, origin, stack.url, token)

    statuses = {(error["url"] or "").removeprefix(stack.url): error["status"] for error in report["map"]["errors"]}
    assert {path: statuses.get(path) for path in ZOOM1_TILES} == dict.fromkeys(ZOOM1_TILES, 0)  # a network error
    assert tile_urls(report, "failed", stack) >= set(ZOOM1_TILES)  # Chromium refused them
    assert stack.at_proxy.exchanges, "the browser sent nothing to fluxauth"
    for exchange in stack.at_proxy.exchanges:  # preflights only, refused, with no CORS grant
        assert exchange.method == "OPTIONS"
        assert exchange.headers["origin"] == origin
        assert exchange.status == 403
        assert "access-control-allow-origin" not in exchange.response_headers
    assert {e.path for e in stack.at_proxy.exchanges} >= set(ZOOM1_TILES)
    assert stack.at_upstream.exchanges == []
    assert stack.app.outcomes == {403: len(stack.at_proxy.exchanges)}
    assert report["authRequired"] == []
    assert_blank(shot)
