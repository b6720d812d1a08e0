"""``admin_listen``: the API, the page and metrics on a listener of their own; the proxy port answers 404 for them."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.store.sqlite import SQLiteStore
from tests.manage.conftest import API, TILE, make_orgs
from tests.support.servers import ServerThread, free_port, free_socket, wait_for_port

ADMIN_PATHS = [f"{API}/openapi.json", "/_fluxauth/ui/", "/_fluxauth/metrics"]


@dataclasses.dataclass
class Split:
    proxy: str
    admin: str
    boss: str
    reader: str


def check_split(split: Split) -> None:
    """What either port answers: management only on the admin listener, data and forward-auth only on the proxy port."""
    with httpx.Client(timeout=10) as client:
        _check_split(split, client)


def _check_split(split: Split, client: httpx.Client) -> None:
    for path in ADMIN_PATHS:
        assert client.get(split.admin + path).status_code == 200, path
        refused = client.get(split.proxy + path)
        assert refused.status_code == 404, path
        assert refused.json() == {"error": "not_found", "detail": "no such endpoint"}
    keys = f"{API}/orgs/acme/keys"
    assert client.get(split.admin + keys, auth=("acme", split.boss)).status_code == 200
    assert client.get(split.proxy + keys, auth=("acme", split.boss)).status_code == 404
    tile = TILE.format(org="acme")
    for _ in range(3):  # the second and third on the proxy port: cached, the hot path
        assert client.get(split.proxy + tile, auth=("acme", split.reader)).status_code == 200
        assert client.get(split.admin + tile, auth=("acme", split.reader)).status_code == 404
    assert client.get(split.admin + "/_fluxauth/auth", auth=("acme", split.reader)).status_code == 404
    for path in ("/_fluxauth/healthz", "/_fluxauth/readyz"):
        assert client.get(split.proxy + path).status_code == 200
        assert client.get(split.admin + path).status_code == 200


def test_admin_listener_in_process(admin: Admin, settings: Settings, store_path: str) -> None:
    """One server on two sockets: the app tells them apart by the address each request came in on."""
    boss, reader, _ = make_orgs(admin)
    sock = free_socket()
    port = sock.getsockname()[1]
    app = FluxAuthApp(dataclasses.replace(settings, admin_listen=("127.0.0.1", port)), SQLiteStore(store_path))
    with ServerThread(app, also=[sock]) as server:
        check_split(Split(server.url, f"http://127.0.0.1:{port}", boss, reader))
        assert app.hot_path["forward"] >= 1  # the proxy port's cached tiles took the hot path


@pytest.fixture
def served(admin: Admin, settings: Settings, store_path: str, tmp_path: Path) -> Iterator[Split]:
    """``fluxauth serve --workers 2`` with FLUXAUTH_ADMIN_LISTEN, as an operator runs it."""
    boss, reader, _ = make_orgs(admin)
    port, admin_port = free_port(), free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLUXAUTH_")}
    env.update(
        FLUXAUTH_ARGON2_PROFILE="cheapest",
        FLUXAUTH_ADMIN_LISTEN=f"127.0.0.1:{admin_port}",
        FLUXAUTH_UPSTREAM=settings.upstream,
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "fluxauth", "serve", "--port", str(port), "--workers", "2", "--store", store_path],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers with it, should it have to be killed
        )
    try:
        wait_for_port(port, process, log)
        wait_for_port(admin_port, process, log)
        yield Split(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", boss, reader)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: not what this test is about
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_admin_listener_with_workers(served: Split) -> None:
    """``fluxauth serve --workers 2``: every worker serves both sockets, each answering only its own."""
    for _ in range(4):  # requests spread over the workers
        check_split(served)


def test_admin_listen_same_port_refused(tmp_path: Path) -> None:
    """admin_listen on the proxy's own port: one line, exit 2."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("FLUXAUTH_")}
    env["FLUXAUTH_ADMIN_LISTEN"] = "127.0.0.1:8123"
    done = subprocess.run(
        [sys.executable, "-m", "fluxauth", "serve", "--port", "8123", "--store", str(tmp_path / "s.db")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["fluxauth: error: admin_listen: port 8123 is the proxy's own (--port)"]
