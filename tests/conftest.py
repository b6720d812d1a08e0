"""Shared fixtures: a store, settings with the cheapest argon2 profile, a fake clock, real servers."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import pytest

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.demo.upstream import create_app
from fluxauth.manage.admin import Admin
from fluxauth.store.sqlite import SQLiteStore
from fluxauth.timers import Timers
from tests.support.servers import Proxy, ServerThread, start_proxy

if TYPE_CHECKING:
    from tests.support.clients import Stack

# PostgreSQL: the session's own database (pg_database, pg_url) and servers of a test's own (pg_server).
pytest_plugins = ("tests.support.postgres",)

# Tests that start real servers (uvicorn in a thread, nginx, Caddy, Chromium,
# PostgreSQL, fluxauth serve, Redis) are marked ``servers``; the rest are unit
# tests of one part in process (``pytest -m "not servers"``: seconds). A test is
# a server test when it uses one of these fixtures, directly or through
# another, or its module says ``pytestmark = pytest.mark.servers``.
SERVER_FIXTURES = frozenset({"upstream", "proxy_factory", "stack", "pg_database", "pg_server", "redis_db"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and "postgresql" in callspec.params.values()
        if on_postgres or SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


# One client for quick one-off requests: httpx.get() builds a whole Client,
# SSL context included, for every call (tens of milliseconds each).
http = httpx.Client(timeout=10)


def basic(username: str, password: str) -> dict[str, str]:
    """An Authorization header for ``username:password``."""
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "fluxauth.db")


@pytest.fixture
def store(store_path: str) -> Iterator[SQLiteStore]:
    store = SQLiteStore(store_path)
    yield store
    store.close()


@pytest.fixture(scope="session")
def upstream() -> Iterator[ServerThread]:
    """The built-in demo tile server, also an echo of what it received (``/_echo/``)."""
    with ServerThread(create_app()) as server:
        yield server


@pytest.fixture
def settings(store_path: str, upstream: ServerThread) -> Settings:
    return Settings(
        store=store_path,
        upstream=upstream.url,
        argon2_profile="cheapest",
        cors_allow_origins=("https://maps.example.org",),
        upstream_read_timeout=2.0,
        rate_limit_delay=0.0,  # tests that are about it set it
    )


@pytest.fixture
def admin(store: SQLiteStore, settings: Settings, clock: FakeClock) -> Admin:
    return Admin(store, settings, clock)


class ProxyFactory(Protocol):
    """Starts fluxauth on the test's store and clock, with ``settings`` (by default the fixture's) and ``changes``.

    ``timers``: the connections' timeouts driven by the test (``ManualTimers``);
    ``asgi_only``: every request through the ASGI app, none on the hot path.
    """

    def __call__(
        self,
        settings: Settings | None = None,
        /,
        *,
        timers: Timers | None = None,
        asgi_only: bool = False,
        **changes: Any,
    ) -> Proxy: ...


@pytest.fixture
def proxy_factory(settings: Settings, store_path: str, clock: FakeClock) -> Iterator[ProxyFactory]:
    """The one way tests start fluxauth: each one stopped when the test ends."""
    started: list[Proxy] = []

    def start(
        chosen: Settings | None = None, /, *, timers: Timers | None = None, asgi_only: bool = False, **changes: Any
    ) -> Proxy:
        # An access log is written from the ASGI path, so the hot path leaves it every request.
        config = {"access_log": True} if asgi_only else {}
        proxy = start_proxy(
            dataclasses.replace(chosen or settings, **changes), store_path, clock, timers=timers, **config
        )
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


@pytest.fixture
def proxy(proxy_factory: ProxyFactory, settings: Settings) -> Proxy:
    return proxy_factory(settings)


@pytest.fixture
def token(admin: Admin) -> str:
    """The clients' org ``acme`` with tiles and WMS, and its read key's token."""
    from tests.support.clients import make_acme

    return make_acme(admin)


@pytest.fixture
def stack(settings: Settings, store_path: str, clock: FakeClock) -> Iterator[Stack]:
    """fluxauth and the demo upstream, each behind a recorder of what it received."""
    from tests.support.clients import running_stack

    with running_stack(settings, store_path, clock) as stack:
        yield stack
