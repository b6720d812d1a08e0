"""``fluxauth demo``: a tile server behind fluxauth, with an org and a key, in one process.

The store is a fresh SQLite file under ``./.fluxauth-demo/`` (wiped at each
start) so that the printed commands can manage it from another terminal.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shlex
import shutil
import textwrap
import tomllib

import uvicorn

from fluxauth.config.routes import parse_routes
from fluxauth.config.settings import Settings, redact_url
from fluxauth.demo.upstream import create_app
from fluxauth.manage.admin import Admin
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.server.protocol import LimitedHttpToolsProtocol
from fluxauth.store import open_store

DEMO_DIR = ".fluxauth-demo"
TILE_PATH = "/v1/services/tiles/demo/world/main/tiles/WebMercatorQuad/0/0/0.png"
TILEJSON_PATH = "/v1/services/tiles/demo/routed/main/tiles/tilejson.json"
# The route form an operator copies for a stock tile server, aimed at the demo's
# own: its paths under /maps/, a pinned parameter, and a TileJSON whose tile URLs
# name the tile server until fluxauth maps them back.
ROUTE = """\
[[routes]]
protocol = "tiles"
org = "demo"
repo = "routed"
upstream = "http://127.0.0.1:{port}/maps/{{ref}}/{{path}}"
query = {{ dataset = "{{org}}/{{repo}}" }}
"""


def demo_route(upstream_port: int) -> dict[str, object]:
    """``ROUTE`` for the demo's tile server, as the settings read it."""
    parsed: dict[str, object] = tomllib.loads(ROUTE.format(port=upstream_port))["routes"][0]
    return parsed


def _prepare(settings: Settings, store_path: str) -> tuple[str, str]:
    """The demo org, its services, a read key and an admin key (for the page); the two tokens."""
    store = open_store(store_path)
    try:
        admin = Admin(store, settings)
        admin.create_org("demo")
        admin.enable_service("demo", "tiles")
        admin.enable_service("demo", "wms")
        viewer = admin.create_key("demo", "viewer", permissions=["read"])
        manager = admin.create_key("demo", "admin", permissions=["manage_org_users"])
    finally:
        store.close()
    return viewer.token, manager.token


def run_demo(settings: Settings, *, port: int, upstream_port: int, store: str | None) -> None:
    store_path = store or os.path.join(DEMO_DIR, "store.db")
    if store is None:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        os.makedirs(DEMO_DIR)
    settings = dataclasses.replace(
        settings,
        store=store_path,
        upstream=f"http://127.0.0.1:{upstream_port}",
        # A protocol that has routes falls back to its [upstreams] entry only, not to the default upstream.
        upstreams={**settings.upstreams, "tiles": f"http://127.0.0.1:{upstream_port}"},
        cors_allow_origins=settings.cors_allow_origins or ("*",),
        routes=parse_routes([*settings.routes, demo_route(upstream_port)], settings.protocols, redact_url),
    )
    token, admin_token = _prepare(settings, store_path)
    base = f"http://127.0.0.1:{port}"
    store_flag = f"--store {shlex.quote(store_path)}"
    print(
        f"""
fluxauth demo: a tile server on 127.0.0.1:{upstream_port}, fluxauth in front on {base}
store: {store_path}  (org 'demo', services tiles and wms, key viewer@demo with read)

Fetch a tile through fluxauth:

  curl -fsS -u demo:{token} {base}{TILE_PATH} -o tile.png

Without the key it is refused:

  curl -i {base}{TILE_PATH}

The same tile server behind a route, as a stock one (TiTiler, xpublish) is put
behind fluxauth; its TileJSON names fluxauth's tiles, not the server's:

{textwrap.indent(ROUTE.format(port=upstream_port), "  ")}
  curl -fsS -u demo:{token} {base}{TILEJSON_PATH}

The org's API Clients page (sign in with organization demo and the admin key):

  {base}/_fluxauth/ui/
  admin key: {admin_token}

The same through the management API:

  curl -s -u demo:{admin_token} {base}/_fluxauth/api/v1/orgs/demo/keys

Manage it from another terminal (the running server picks changes up within a second):

  .venv/bin/fluxauth keys list demo {store_flag}
  .venv/bin/fluxauth keys rotate demo viewer --grace 2h {store_flag}
  .venv/bin/fluxauth keys delete demo viewer {store_flag}

Ctrl+C stops it.
""",
        flush=True,
    )
    asyncio.run(_serve_both(settings, port, upstream_port))


async def _serve_both(settings: Settings, port: int, upstream_port: int) -> None:
    upstream = uvicorn.Server(
        uvicorn.Config(create_app(), host="127.0.0.1", port=upstream_port, log_level="warning", access_log=False)
    )
    proxy = uvicorn.Server(
        uvicorn.Config(
            FluxAuthApp(settings),
            host="127.0.0.1",
            port=port,
            log_level="info",
            # fluxauth serve's protocol (its limits); the access log shown
            # here keeps every request on the ASGI path (fluxauth/server/hotpath.py).
            http=LimitedHttpToolsProtocol,
            proxy_headers=False,
            server_header=False,
            lifespan="on",
        )
    )
    await asyncio.gather(upstream.serve(), proxy.serve())
