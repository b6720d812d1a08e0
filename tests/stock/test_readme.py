"""The README's route blocks are the ones the stock-server tests run (``StockServers.routes``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.support.clients import README
from tests.support.stock import StockServers

# The README's servers: TiTiler on 9000, xpublish on 9001, the data under /data.
README_SERVERS = StockServers(Path("/data"), "http://127.0.0.1:9000", "http://127.0.0.1:9001")


def readme_routes() -> list[dict[str, object]]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Stock tile servers behind fluxauth: routes\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```toml\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)
    return [route for block in blocks for route in tomllib.loads(block)["routes"]]


def test_readme_route_blocks_are_the_tested_ones() -> None:
    """Each block of the README's routes section, in order, is a route the tests run against the real server."""
    assert readme_routes() == README_SERVERS.routes()
