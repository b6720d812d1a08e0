"""The README's route blocks and MapProxy's command line are the ones the stock-server tests run."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from tests.support.clients import README
from tests.support.stock import StockServers, mapproxy_options

# The README's servers: TiTiler on 9000, xpublish on 9001, MapProxy on 9002, the data under /data.
README_SERVERS = StockServers(Path("/data"), "http://127.0.0.1:9000", "http://127.0.0.1:9001", "http://127.0.0.1:9002")


def readme_blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Stock tile servers behind fluxauth: routes\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.DOTALL | re.MULTILINE)


def readme_routes() -> list[dict[str, object]]:
    return [route for block in readme_blocks("toml") for route in tomllib.loads(block)["routes"]]


def test_readme_route_blocks_are_the_tested_ones() -> None:
    """Each block of the README's routes section, in order, is a route the tests run against the real server."""
    assert readme_routes() == README_SERVERS.routes()


def test_readme_mapproxy_command_is_the_tested_one() -> None:
    """The gunicorn line the README gives for MapProxy is the one the tests start it with."""
    commands = [shlex.split(line) for block in readme_blocks("sh") for line in block.splitlines()]
    assert ["gunicorn", *mapproxy_options(9002, Path("/data/mapproxy"))] in commands
