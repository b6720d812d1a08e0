"""FluxAuthMiddleware in front of a small Starlette tile app, served by uvicorn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.demo.upstream import render_tile
from fluxauth.manage.admin import Admin
from fluxauth.proxy.middleware import FluxAuthMiddleware
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import basic, http
from tests.support.servers import ServerThread


async def tile(request: Request) -> Response:
    p = request.path_params
    return Response(render_tile(p["z"], p["x"], p["y"]), media_type="image/png")


async def whoami(request: Request) -> Response:
    principal = request.scope["fluxauth"]["principal"]
    return JSONResponse(
        {
            "principal": principal.label if principal else None,
            "authorization": request.headers.get("authorization"),
            "org": request.headers.get("x-fluxauth-org"),
            "principal_header": request.headers.getlist("x-fluxauth-principal"),
        }
    )


async def health(request: Request) -> Response:
    return Response("ok")


def tile_app() -> Starlette:
    prefix = "/v1/services/tiles/{org}/{repo}/{ref}"
    return Starlette(
        routes=[
            Route(prefix + "/tiles/{z:int}/{x:int}/{y:int}", tile),
            Route(prefix + "/whoami", whoami),
            Route("/health", health),
        ]
    )


@pytest.fixture
def served(store_path: str, admin: Admin, clock: FakeClock) -> Iterator[tuple[str, str]]:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    token = admin.create_key("acme", "reader", permissions=["read"]).token
    settings = Settings(store=store_path, argon2_profile="cheapest")
    app = FluxAuthMiddleware(
        tile_app(), settings=settings, store=SQLiteStore(store_path), exclude_paths=("/health",), clock=clock
    )
    with ServerThread(app) as server:
        yield server.url, token


def test_middleware_allows_key_and_serves_tile(served: tuple[str, str]) -> None:
    """A valid key reaches the wrapped app, which renders the tile."""
    url, token = served
    response = http.get(url + "/v1/services/tiles/acme/era5/main/tiles/1/0/1", headers=basic("acme", token))
    assert response.status_code == 200
    assert response.content == render_tile(1, 0, 1)


def test_middleware_refuses_without_key(served: tuple[str, str]) -> None:
    """No credentials: 401 with the Basic challenge; the app is not reached."""
    url, _ = served
    response = http.get(url + "/v1/services/tiles/acme/era5/main/tiles/1/0/1")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Basic ")


def test_middleware_hides_credentials_and_sets_identity(served: tuple[str, str]) -> None:
    """The app sees the principal, not the Authorization header nor spoofed identity headers."""
    url, token = served
    response = http.get(
        url + "/v1/services/tiles/acme/era5/main/whoami",
        headers={**basic("acme", token), "X-Fluxauth-Principal": "admin@evil"},
    )
    assert response.json() == {
        "principal": "reader@acme",
        "authorization": None,
        "org": "acme",
        "principal_header": ["reader@acme"],
    }


def test_middleware_refuses_other_paths_unless_excluded(served: tuple[str, str]) -> None:
    """Deny by default: non-compute paths are 404 unless listed in exclude_paths."""
    url, _ = served
    assert http.get(url + "/health").text == "ok"
    assert http.get(url + "/other").status_code == 404
    assert http.get(url + "/v1/services/tiles/acme/era5/main/%2e%2e/x").status_code == 400
