"""Scripts: curl (``-u`` and ``org:key@`` in the URL) and Python requests, as the README shows them.

Also what a script meets when it gets things wrong or asks to be challenged: a
percent-encoded userinfo is decoded by the client before it builds the Basic
header, and a 401 always carries the Basic challenge, so clients that send
credentials only after one (curl ``--anyauth``, some QGIS code paths) get in.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from fluxauth.demo.upstream import render_tile
from tests.support.clients import (
    PRINCIPAL,
    README_HOST,
    TILE_PATH,
    Stack,
    escaped_userinfo,
    readme_snippet,
    wrong_secret,
)

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

TILE = TILE_PATH.format(z=0, x=0, y=0)
CHALLENGE = 'Basic realm="fluxauth", charset="UTF-8"'


def host(stack: Stack) -> str:
    return stack.url.removeprefix("http://")


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def curl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run curl (or, with one string, a README shell line) in ``tmp_path``."""
    argv = ["bash", "-euc", args[0]] if len(args) == 1 and args[0].startswith("curl ") else ["curl", *args]
    return subprocess.run(
        argv, cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=30, check=False
    )


def assert_forwarded_as_reader(stack: Stack, token: str) -> None:
    """fluxauth got ``acme:token`` (decoded) and forwarded the tile as ``maps@acme``, without credentials."""
    [received] = stack.at_proxy.to(TILE)
    assert received.headers["authorization"] == basic_header("acme", token)
    assert received.status == 200
    [forwarded] = stack.at_upstream.to(TILE)
    assert forwarded.headers["x-fluxauth-principal"] == PRINCIPAL
    assert "authorization" not in forwarded.headers


@pytest.mark.parametrize("line", [0, 1], ids=["curl -u", "curl userinfo"])
def test_scripts_readme_curl_lines_fetch_the_tile(tmp_path: Path, stack: Stack, token: str, line: int) -> None:
    """Each curl line of the README, as written, saves the upstream's tile."""
    command = readme_snippet("curl", "sh").splitlines()[line]
    done = curl(tmp_path, command.replace(README_HOST, host(stack)), TOKEN=token)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tile.png").read_bytes() == render_tile(0, 0, 0)
    assert_forwarded_as_reader(stack, token)


def test_scripts_readme_requests_snippet_fetches_the_tile(stack: Stack, token: str) -> None:
    """The README's requests snippet (``auth=(org, key)``) gets the upstream's tile."""
    code = readme_snippet("Python requests", "python").replace(README_HOST, host(stack))
    namespace: dict[str, Any] = {"token": token}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README's snippet
    assert namespace["tile"].content == render_tile(0, 0, 0)
    assert_forwarded_as_reader(stack, token)


def test_scripts_curl_percent_encoded_userinfo_is_decoded(tmp_path: Path, stack: Stack, token: str) -> None:
    """``http://%61cme:ema%5F...@host/`` works with curl: it decodes the userinfo before sending it."""
    url = f"http://{escaped_userinfo('acme', token)}@{host(stack)}{TILE}"
    assert "%5F" in url
    done = curl(tmp_path, "-fsS", url, "-o", "tile.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tile.png").read_bytes() == render_tile(0, 0, 0)
    assert_forwarded_as_reader(stack, token)


def test_scripts_requests_percent_encoded_userinfo_is_decoded(stack: Stack, token: str) -> None:
    """requests takes the percent-encoded userinfo of a URL, decoded, as the Basic credentials."""
    response = requests.get(f"http://{escaped_userinfo('acme', token)}@{host(stack)}{TILE}", timeout=10)
    assert response.status_code == 200
    assert response.content == render_tile(0, 0, 0)
    assert_forwarded_as_reader(stack, token)


def test_scripts_escaped_credentials_sent_undecoded_are_refused(stack: Stack, token: str) -> None:
    """fluxauth decodes nothing itself: the escaped text sent as it is in the header is not a key."""
    response = httpx.get(
        stack.url + TILE,
        headers={"Authorization": basic_header(*escaped_userinfo("acme", token).split(":"))},
        timeout=10,
    )
    assert response.status_code == 401
    assert stack.at_upstream.exchanges == []


def test_scripts_401_challenges_curl_and_requests(tmp_path: Path, stack: Stack, token: str) -> None:
    """Without or with a wrong key, curl and requests see 401 with the Basic challenge, and no tile."""
    done = curl(
        tmp_path, "-sS", "-D", "headers.txt", "-o", "body.json", "-u", f"acme:{wrong_secret(token)}", stack.url + TILE
    )
    assert done.returncode == 0, done.stderr
    head = (tmp_path / "headers.txt").read_text().lower()
    assert head.startswith("http/1.1 401")
    assert f"www-authenticate: {CHALLENGE.lower()}" in head
    assert wrong_secret(token) not in (tmp_path / "body.json").read_text()

    anonymous = requests.get(stack.url + TILE, timeout=10)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == CHALLENGE
    assert stack.at_upstream.exchanges == []


def test_scripts_clients_that_wait_for_the_challenge_get_in(tmp_path: Path, stack: Stack, token: str) -> None:
    """curl ``--anyauth`` first asks without credentials, and answers the Basic challenge with them."""
    done = curl(tmp_path, "-fsS", "--anyauth", "-u", f"acme:{token}", stack.url + TILE, "-o", "tile.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tile.png").read_bytes() == render_tile(0, 0, 0)
    first, second = stack.at_proxy.to(TILE)
    assert "authorization" not in first.headers
    assert (first.status, first.response_headers["www-authenticate"]) == (401, CHALLENGE)
    assert second.headers["authorization"] == basic_header("acme", token)
    assert second.status == 200
    [forwarded] = stack.at_upstream.to(TILE)
    assert forwarded.headers["x-fluxauth-principal"] == PRINCIPAL
