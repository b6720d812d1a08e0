"""A running fluxauth with two orgs, each with an admin key, for the management API's tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import pytest

from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import Proxy, ProxyFactory

API = "/_fluxauth/api/v1"
TILE = "/v1/services/tiles/{org}/era5/main/tiles/WebMercatorQuad/0/0/0.png"


@dataclasses.dataclass
class Orgs:
    """fluxauth in front of the demo upstream; orgs ``acme`` and ``other`` (tiles on), their keys' tokens.

    ``boss`` holds ``manage_org_users`` in acme, ``reader`` only ``read``;
    ``other_boss`` holds ``manage_org_users`` in other.
    """

    proxy: Proxy
    store: SQLiteStore
    boss: str
    reader: str
    other_boss: str
    client: httpx.Client

    @property
    def url(self) -> str:
        return self.proxy.url

    def api(self, method: str, path: str, token: str | None = None, org: str = "acme", **kwargs: Any) -> httpx.Response:
        """A request to the API (``path`` relative to it) as ``org:token``, or without credentials."""
        auth = None if token is None else (org, token)
        return self.client.request(method, f"{self.url}{API}/{path}", auth=auth, **kwargs)

    def tile(self, token: str, org: str = "acme") -> int:
        """The status of a data request (a tile of ``org``) with ``token``."""
        return self.client.get(self.url + TILE.format(org=org), auth=(org, token)).status_code

    def state(self) -> tuple[object, ...]:
        """What a refused request must leave as it was: the change feed, both orgs' keys and policies."""
        return (
            list(self.store.changes_since(0)),
            list(self.store.list_keys("acme")),
            list(self.store.list_keys("other")),
            self.store.org_policy("acme"),
            self.store.org_policy("other"),
        )


def make_orgs(admin: Admin) -> tuple[str, str, str]:
    for org in ("acme", "other"):
        admin.create_org(org)
        admin.enable_service(org, "tiles")
    boss = admin.create_key("acme", "boss", permissions=["manage_org_users"]).token
    reader = admin.create_key("acme", "reader", permissions=["read"]).token
    other_boss = admin.create_key("other", "boss", permissions=["manage_org_users", "read"]).token
    return boss, reader, other_boss


@pytest.fixture
def orgs(admin: Admin, store: SQLiteStore, proxy_factory: ProxyFactory, settings: Settings) -> Orgs:
    boss, reader, other_boss = make_orgs(admin)
    proxy = proxy_factory(settings)
    client = httpx.Client(timeout=10)
    return Orgs(proxy, store, boss, reader, other_boss, client)
