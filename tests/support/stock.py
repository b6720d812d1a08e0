"""The stock tile servers (TiTiler, xpublish with xpublish-tiles and xpublish-wms, MapProxy), run as operators run them.

They live in ``.venv-stock`` (Python >= 3.12, ``scripts/stock-servers.sh``, which
``make test`` runs and ``ensure_stock_venv`` runs again, doing nothing when it is
built). Each is a subprocess on an ephemeral port, started with its own command
line, serving data that ``tests/stock/make_data.py`` writes:

- TiTiler: ``uvicorn titiler.application.main:app``; a COG at
  ``{data}/cogs/acme/era5/main/surface.tif``, named by a route's pinned ``url``;
- xpublish: ``tests/stock/xpublish_server.py`` with datasets ``era5``, ``gfs``
  and ``secret`` (``/datasets`` lists them all: no route may reach it);
- MapProxy: ``gunicorn "mapproxy.multiapp:make_wsgi_app('{data}/mapproxy')"``,
  its WSGI app for a directory of projects, ``basemap`` and ``secret``, each at
  ``/{project}/`` (``/`` lists them all: no route may reach it, nor ``secret``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support.servers import free_port, started_process, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
STOCK = ROOT / "tests" / "stock"
VENV = Path(os.environ.get("FLUXAUTH_STOCK_VENV", ROOT / ".venv-stock"))
PYTHON = VENV / "bin" / "python"
# Cold starts on a busy two-core machine: xpublish-tiles imports numba and datashader (about 20 s).
START_TIMEOUT = 120.0


def ensure_stock_venv() -> None:
    """Build ``.venv-stock`` if it is missing or stale (a no-op when it is current)."""
    subprocess.run([str(ROOT / "scripts" / "stock-servers.sh"), str(VENV)], check=True, timeout=1800)


@dataclasses.dataclass(frozen=True)
class StockServers:
    data: Path
    titiler: str  # http://127.0.0.1:port
    xpublish: str
    mapproxy: str

    @property
    def cog(self) -> Path:
        return self.data / "cogs" / "acme" / "era5" / "main" / "surface.tif"

    def routes(self) -> list[dict[str, object]]:
        """The route blocks of the README, aimed at these servers (a TOML array of tables, as dicts)."""
        return [
            {
                "protocol": "tiles",
                "org": "acme",
                "repo": "era5",
                "upstream": f"{self.titiler}/cog/{{path}}",
                "query": {"url": f"{self.data}/cogs/{{org}}/{{repo}}/{{ref}}/{{group}}.tif"},
            },
            {"protocol": "tiles", "org": "acme", "upstream": f"{self.xpublish}/datasets/{{repo}}/tiles/{{path}}"},
            {
                "protocol": "wms",
                "org": "acme",
                "repo": "era5",
                "upstream": f"{self.xpublish}/datasets/{{repo}}/wms/{{path}}",
            },
            {"protocol": "wms", "org": "acme", "upstream": f"{self.xpublish}/datasets/{{repo}}/cfwms/{{path}}"},
            {"protocol": "wms", "org": "acme", "repo": "basemap", "upstream": f"{self.mapproxy}/{{repo}}/{{path}}"},
        ]


@contextlib.contextmanager
def running_stock_servers(workdir: Path) -> Iterator[StockServers]:
    """Write the data, start TiTiler, xpublish and MapProxy side by side, and stop them at the end."""
    ensure_stock_venv()
    data = workdir / "data"
    subprocess.run([str(PYTHON), str(STOCK / "make_data.py"), str(data)], check=True, timeout=300, capture_output=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    titiler_port, xpublish_port, mapproxy_port = free_port(), free_port(), free_port()
    titiler_args = [
        str(VENV / "bin" / "uvicorn"),
        "titiler.application.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(titiler_port),
    ]
    zarr = data / "era5.zarr"
    xpublish_args = [
        str(PYTHON),
        str(STOCK / "xpublish_server.py"),
        "--port",
        str(xpublish_port),
        f"era5={zarr}",
        f"gfs={zarr}",
        f"secret={zarr}",
    ]
    mapproxy_args = [str(VENV / "bin" / "gunicorn"), *mapproxy_options(mapproxy_port, data / "mapproxy")]
    titiler_log, xpublish_log, mapproxy_log = (workdir / f"{name}.log" for name in ("titiler", "xpublish", "mapproxy"))
    with (
        started_process(titiler_args, titiler_log, env, cwd=workdir) as titiler,
        started_process(xpublish_args, xpublish_log, env, cwd=workdir) as xpublish,
        started_process(mapproxy_args, mapproxy_log, env, cwd=workdir) as mapproxy,
    ):
        wait_for_port(titiler_port, titiler, titiler_log, timeout=START_TIMEOUT)
        wait_for_port(xpublish_port, xpublish, xpublish_log, timeout=START_TIMEOUT)
        wait_for_port(mapproxy_port, mapproxy, mapproxy_log, timeout=START_TIMEOUT)
        yield StockServers(
            data,
            f"http://127.0.0.1:{titiler_port}",
            f"http://127.0.0.1:{xpublish_port}",
            f"http://127.0.0.1:{mapproxy_port}",
        )


def mapproxy_options(port: int, projects: Path) -> list[str]:
    """gunicorn's arguments for MapProxy's projects directory, as the README gives them.

    gunicorn (MapProxy's documented production server; ``mapproxy-util
    serve-develop`` is for development and runs a reloader process) calls the
    app factory with the directory; ``--no-control-socket``: gunicorn 27 would
    otherwise open one in ``~/.gunicorn``, shared by every gunicorn of the user.
    """
    return [
        "--bind",
        f"127.0.0.1:{port}",
        "--threads",
        "4",
        "--no-control-socket",
        f"mapproxy.multiapp:make_wsgi_app({str(projects)!r})",
    ]
