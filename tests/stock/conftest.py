"""The stock servers, once per test session, and fluxauth with their routes in front, once per test."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest

from fluxauth.config.routes import parse_routes
from fluxauth.config.settings import Settings, redact_url
from tests.conftest import ProxyFactory
from tests.support.servers import Proxy
from tests.support.stock import StockServers, running_stock_servers


@pytest.fixture(scope="session")
def stock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StockServers]:
    with running_stock_servers(tmp_path_factory.mktemp("stock")) as servers:
        yield servers


def routed_settings(settings: Settings, stock: StockServers, **changes: object) -> Settings:
    """``settings`` with the README's routes to ``stock``."""
    routes = parse_routes(stock.routes(), settings.protocols, redact_url)
    # A stock server's first answers can take seconds (xpublish-tiles compiles with numba).
    changes = {"upstream_read_timeout": 60.0, **changes}
    return dataclasses.replace(settings, routes=routes, **changes)  # type: ignore[arg-type]


@pytest.fixture
def routed(proxy_factory: ProxyFactory, settings: Settings, stock: StockServers, token: str) -> Proxy:
    """fluxauth (as ``fluxauth serve`` runs it, hot path included) with the routes to the stock servers."""
    return proxy_factory(routed_settings(settings, stock))
