"""GDAL (Debian's gdal-bin) reads an XYZ tile layer through fluxauth: the README's service description.

``gdal_translate -outsize 512 512`` on the README's ``era5.xml`` reads GDAL's
512-pixel overview of the world, which is exactly the four tiles of zoom 1: the
result must equal the upstream's tiles pixel for pixel.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.clients import (
    PRINCIPAL,
    README_ORIGIN,
    TILE_PATH,
    Stack,
    escaped_userinfo,
    mosaic,
    read_png,
    readme_snippet,
    wrong_secret,
)

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

ZOOM1_TILES = {TILE_PATH.format(z=1, x=x, y=y) for x in (0, 1) for y in (0, 1)}
# No test may hang on GDAL: a bounded HTTP timeout and no retries.
GDAL_ENV = {"GDAL_HTTP_TIMEOUT": "10", "GDAL_HTTP_CONNECTTIMEOUT": "5", "GDAL_HTTP_MAX_RETRY": "0"}


def service_file(tmp_path: Path, stack: Stack, userinfo: str = "") -> Path:
    """The README's ``era5.xml``, aimed at ``stack`` (with ``user:pass@`` in the URL if given)."""
    xml = readme_snippet("GDAL", "xml")
    assert README_ORIGIN in xml
    origin = stack.url.replace("http://", f"http://{userinfo}@") if userinfo else stack.url
    path = tmp_path / "era5.xml"
    path.write_text(xml.replace(README_ORIGIN, origin), encoding="utf-8")
    return path


def gdal(tmp_path: Path, command: list[str] | str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a GDAL command (a README shell line when ``command`` is a string) in ``tmp_path``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GDAL_", "CPL_"))}
    argv = ["bash", "-euc", command] if isinstance(command, str) else command
    return subprocess.run(
        argv, cwd=tmp_path, env={**clean, **GDAL_ENV, **env}, capture_output=True, text=True, timeout=60, check=False
    )


def assert_tiles_arrived_as(stack: Stack, token: str) -> None:
    """GDAL sent ``acme:token`` for every tile; the upstream got each without it, as ``maps@acme``."""
    basic = "Basic " + base64.b64encode(f"acme:{token}".encode()).decode()
    assert {e.path for e in stack.at_proxy.exchanges} == ZOOM1_TILES
    for exchange in stack.at_proxy.exchanges:
        assert exchange.headers["authorization"] == basic
        assert exchange.status == 200
    assert {e.path for e in stack.at_upstream.exchanges} == ZOOM1_TILES
    for exchange in stack.at_upstream.exchanges:
        assert exchange.headers["x-fluxauth-principal"] == PRINCIPAL
        assert "authorization" not in exchange.headers


def test_gdal_reads_tiles_with_credentials_from_the_environment(tmp_path: Path, stack: Stack, token: str) -> None:
    """The README's GDAL_HTTP_AUTH=BASIC + GDAL_HTTP_USERPWD line gets the upstream's pixels."""
    service_file(tmp_path, stack)
    line = readme_snippet("GDAL", "sh")
    assert "GDAL_HTTP_USERPWD" in line
    done = gdal(tmp_path, line, TOKEN=token)
    assert done.returncode == 0, done.stderr
    world = read_png((tmp_path / "world.png").read_bytes())
    assert world.rows == mosaic(1).rows
    assert_tiles_arrived_as(stack, token)


@pytest.mark.parametrize("escape", [False, True], ids=["plain", "percent-encoded"])
def test_gdal_reads_tiles_with_credentials_in_the_url(tmp_path: Path, stack: Stack, token: str, escape: bool) -> None:
    """``http://acme:KEY@host/...`` in the ServerUrl, and nothing in the environment, works as well.

    Percent-escapes in it (``%61`` for ``a``, ``%5F`` for ``_``) are decoded before the Basic header is built.
    """
    userinfo = escaped_userinfo("acme", token) if escape else f"acme:{token}"
    service = service_file(tmp_path, stack, userinfo=userinfo)
    done = gdal(tmp_path, ["gdal_translate", "-q", "-outsize", "512", "512", str(service), "world.png"])
    assert done.returncode == 0, done.stderr
    assert read_png((tmp_path / "world.png").read_bytes()).rows == mosaic(1).rows
    assert_tiles_arrived_as(stack, token)


@pytest.mark.parametrize("where", ["environment", "url"])
def test_gdal_wrong_key_fails_at_once_with_401(tmp_path: Path, stack: Stack, token: str, where: str) -> None:
    """A wrong key ends GDAL promptly with its HTTP 401 error; nothing reaches the upstream."""
    wrong = wrong_secret(token)
    if where == "url":
        service = service_file(tmp_path, stack, userinfo=f"acme:{wrong}")
        env = {}
    else:
        service = service_file(tmp_path, stack)
        env = {"GDAL_HTTP_AUTH": "BASIC", "GDAL_HTTP_USERPWD": f"acme:{wrong}"}
    started = time.monotonic()
    done = gdal(tmp_path, ["gdal_translate", "-q", "-outsize", "512", "512", str(service), "world.png"], **env)
    elapsed = time.monotonic() - started

    assert done.returncode != 0
    assert "HTTP status code: 401" in done.stderr, done.stderr
    assert wrong not in done.stderr
    assert elapsed < 10, f"GDAL took {elapsed:.1f} s to give up"
    assert stack.at_proxy.exchanges
    for exchange in stack.at_proxy.exchanges:
        assert exchange.status == 401
        assert exchange.response_headers["www-authenticate"] == 'Basic realm="fluxauth", charset="UTF-8"'
    assert stack.at_upstream.exchanges == []
