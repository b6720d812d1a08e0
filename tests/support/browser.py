"""What the browser tests share: the map page (a README snippet in tests/browser/map.html) and Chromium's driver.

The page server answers ``/map.html?fluxauth=URL&token=T[&snippet=TITLE]``: the
README's MapLibre snippet titled ``TITLE`` (by default the XYZ one), its URLs
aimed at ``fluxauth``. ``tests/browser/drive.mjs`` opens it in Debian's Chromium
with playwright-core and reports what the page saw (see there).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from tests.support.clients import README_BROWSER_ORIGIN, Image, read_png, readme_snippet
from tests.support.servers import ServerThread

BROWSER = Path(__file__).resolve().parent.parent / "browser"
MAPLIBRE = BROWSER / "node_modules" / "maplibre-gl" / "dist"
XYZ_SNIPPET = "MapLibre GL JS / Mapbox GL JS"


def page_app() -> Starlette:
    """The web map: a README MapLibre snippet aimed at ``?fluxauth=`` with ``?token=``."""
    template = (BROWSER / "map.html").read_text(encoding="utf-8")

    async def page(request: Request) -> HTMLResponse:
        fluxauth, token = request.query_params["fluxauth"], request.query_params["token"]
        snippet = readme_snippet(request.query_params.get("snippet", XYZ_SNIPPET), "js")
        script = snippet.replace(README_BROWSER_ORIGIN, fluxauth)
        html = template.replace("/*TOKEN*/", json.dumps(token)).replace("/*README SNIPPET*/", script)
        return HTMLResponse(html, headers={"Cache-Control": "no-store"})

    return Starlette(
        routes=[
            Route("/map.html", page),
            Route("/maplibre-gl.js", lambda _: FileResponse(MAPLIBRE / "maplibre-gl.js")),
            Route("/maplibre-gl.css", lambda _: FileResponse(MAPLIBRE / "maplibre-gl.css")),
            Route("/favicon.ico", lambda _: Response(status_code=204)),
        ]
    )


def page_server() -> ServerThread:
    assert (MAPLIBRE / "maplibre-gl.js").is_file(), "run scripts/system-deps.sh (npm ci in tests/browser)"
    return ServerThread(page_app())


def allowed_origin(pages: ServerThread) -> str:
    return f"http://localhost:{pages.port}"


def other_origin(pages: ServerThread) -> str:
    return f"http://127.0.0.1:{pages.port}"


def run_driver(script: str, request: dict[str, Any], *, timeout: float = 60) -> dict[str, Any]:
    """Run one of tests/browser's Chromium drivers on ``request``; its JSON report."""
    done = subprocess.run(
        ["node", str(BROWSER / script)],
        input=json.dumps({"timeoutMs": 20000, **request}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def open_map(
    tmp_path: Path, origin: str, fluxauth: str, token: str, navigate: str | None = None, snippet: str = XYZ_SNIPPET
) -> tuple[dict[str, Any], Image]:
    """Open the map page from ``origin`` in Chromium; return the driver's report and the map's screenshot."""
    screenshot = tmp_path / "map.png"
    query = urlencode({"fluxauth": fluxauth, "token": token, "snippet": snippet})
    request = {"page": f"{origin}/map.html?{query}", "screenshot": str(screenshot), "navigate": navigate}
    report = run_driver("drive.mjs", request)
    assert report["map"] is not None, report
    assert not report["map"].get("timedOut"), report
    assert not report["pageErrors"], report
    return report, read_png(screenshot.read_bytes())


def assert_shows(shot: Image, expected: Image) -> None:
    """Every pixel of the map is the expected one (within 2 levels of resampling noise)."""
    assert (shot.width, shot.height) == (expected.width, expected.height)
    worst = max(
        max(abs(a - b) for a, b in zip(got, want, strict=True))
        for got, want in zip(shot.rows, expected.rows, strict=True)
    )
    assert worst <= 2, f"the map differs from the upstream's tiles by up to {worst} levels"


def assert_blank(shot: Image) -> None:
    """No tile is drawn: the map shows only the page's black background."""
    assert all(not any(row) for row in shot.rows), "the map shows pixels other than the background"
