"""``fluxauth demo`` as a new user runs it: the printed curl line fetches a real tile."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.clients import read_png
from tests.support.servers import free_port

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)


def test_demo_printed_curl_line_fetches_a_tile(tmp_path: Path) -> None:
    """The demo's printed curl lines work: a PNG (401 without the key), and its route's TileJSON."""
    port, upstream_port = free_port(), free_port()
    env = {**os.environ, "FLUXAUTH_ARGON2_PROFILE": "cheapest"}
    process = subprocess.Popen(
        [sys.executable, "-m", "fluxauth", "demo", "--port", str(port), "--upstream-port", str(upstream_port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        curl_lines: list[str] = []
        while len(curl_lines) < 2:
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "".join(lines)
            lines.append(line)
            if line.strip().startswith("curl -fsS -u demo:"):
                curl_lines.append(line.strip())
        curl_line, tilejson_line = curl_lines
        while f"Uvicorn running on http://127.0.0.1:{port}" not in "".join(lines):
            lines.append(process.stdout.readline())
            assert time.monotonic() < deadline, "".join(lines)
        output = tmp_path / "tile.png"
        argv = shlex.split(curl_line.replace("-o tile.png", f"-o {output}"))
        subprocess.run(argv, check=True, timeout=30)
        png = output.read_bytes()
        assert png.startswith(b"\x89PNG")
        assert read_png(png).pixel(128, 128) != (0, 0, 0)
        url = re.search(r"http://\S+", curl_line)
        assert url is not None
        refused = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url.group(0)], capture_output=True, text=True
        )
        assert refused.stdout == "401"

        # The route: its block is printed, its TileJSON names fluxauth's tiles without the pinned parameter.
        printed = "".join(lines)
        assert "[[routes]]" in printed
        assert f'upstream = "http://127.0.0.1:{upstream_port}/maps/{{ref}}/{{path}}"' in printed
        tilejson = json.loads(
            subprocess.run(shlex.split(tilejson_line), check=True, capture_output=True, timeout=30).stdout
        )
        (template,) = tilejson["tiles"]
        assert template == f"http://127.0.0.1:{port}/v1/services/tiles/demo/routed/main/tiles/{{z}}/{{x}}/{{y}}.png"
        user = curl_line.split()[2:4]  # -u demo:TOKEN
        tile = subprocess.run(["curl", "-fsS", *user, template.format(z=1, x=1, y=0)], check=True, capture_output=True)
        assert tile.stdout.startswith(b"\x89PNG")
        check_page_and_admin_key("".join(lines), port)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


def check_page_and_admin_key(printed: str, port: int) -> None:
    """The demo prints the page's URL and an admin key of the demo org that the API takes."""
    page = re.search(r"(http://127\.0\.0\.1:\d+/_fluxauth/ui/)\s", printed)
    key = re.search(r"admin key: (ema_\S+)", printed)
    assert page is not None, printed
    assert key is not None, printed
    assert page.group(1) == f"http://127.0.0.1:{port}/_fluxauth/ui/"
    client = httpx.Client(timeout=10)
    shown = client.get(page.group(1))
    assert shown.status_code == 200
    assert "API key" in shown.text
    keys = client.get(f"http://127.0.0.1:{port}/_fluxauth/api/v1/orgs/demo/keys", auth=("demo", key.group(1)))
    assert keys.status_code == 200
    assert {item["key"] for item in keys.json()} == {"admin@demo", "viewer@demo"}
