"""The management API against a running fluxauth: who may do what, the actions, bad input, the audit log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import redis

from fluxauth.config.settings import Settings
from fluxauth.manage.routes import MAX_BODY, ROUTES
from tests.conftest import ProxyFactory
from tests.manage.conftest import API, TILE, Orgs
from tests.support.servers import redis_url


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    """The tests' own Redis database, empty."""
    client = redis.Redis.from_url(redis_url())
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


CHALLENGE = 'Basic realm="fluxauth", charset="UTF-8"'


def error_of(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()
    assert {"error", "detail"} <= set(body), body
    assert response.headers["content-type"] == "application/json"
    return body


# -- who may ---------------------------------------------------------------------------


def test_openapi_served_without_credentials(orgs: Orgs) -> None:
    """openapi.json needs no credentials and describes every route, its Basic security and its errors."""
    response = orgs.client.get(f"{orgs.url}{API}/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert document["servers"] == [{"url": "/_fluxauth/api/v1"}]
    assert document["components"]["securitySchemes"]["basic"] == {"type": "http", "scheme": "basic"}
    for route in ROUTES:
        operation = document["paths"]["/" + route.path][route.method.lower()]
        statuses = set(operation["responses"])
        assert {str(route.status), "400", "401", "403", "404", "422", "429", "503"} <= statuses, route.name
        if route.body is not None:
            assert {"413", "415"} <= statuses
            assert operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]


def test_no_credentials_401_with_challenge(orgs: Orgs) -> None:
    """No credentials: 401 with the Basic challenge, as for data."""
    response = orgs.api("GET", "orgs/acme/keys")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == CHALLENGE
    assert error_of(response)["error"] == "unauthorized"


def test_scripts_get_401_without_challenge(orgs: Orgs) -> None:
    """A request with X-Requested-With (the page's) gets its 401 without a challenge: no login dialog."""
    for token in (None, orgs.boss[:-4] + "AAAA"):
        response = orgs.api("GET", "orgs/acme/keys", token, headers={"X-Requested-With": "fluxauth"})
        assert response.status_code == 401
        assert "www-authenticate" not in response.headers


def test_key_without_manage_org_users_403(orgs: Orgs) -> None:
    """A valid key of the org without manage_org_users: 403 on every route, and the attempt is audited."""
    before = orgs.state()
    for route in ROUTES:
        path = fill(route.path, "acme")
        response = orgs.api(route.method, path, orgs.reader, json={} if route.body else None)
        assert response.status_code == 403, (route.name, response.text)
    assert orgs.state() == before
    denied = [e for e in orgs.store.list_audit("acme", limit=1000) if e.actor == "reader@acme"]
    assert len(denied) == len(ROUTES)
    assert {e.outcome for e in denied} == {"denied"}
    assert {e.client for e in denied} == {"127.0.0.1"}


def fill(path: str, org: str, **values: str) -> str:
    """A route's path with its parameters filled in."""
    defaults = {"name": "boss", "repo": "era5", "token_id": "0123456789abcdef", "protocol": "tiles"}
    return re.sub(r"\{(\w+)\}", lambda m: org if m[1] == "org" else values.get(m[1], defaults[m[1]]), path)


def test_admin_credential_limited_like_data(orgs: Orgs, proxy_factory: ProxyFactory, settings: Settings) -> None:
    """Wrong admin secrets count as failures: after the limit, 429 with Retry-After, on the API and on data."""
    wrong = orgs.boss[:-4] + ("AAAA" if not orgs.boss.endswith("AAAA") else "BBBB")
    statuses = [orgs.api("GET", "orgs/acme/keys", wrong).status_code for _ in range(settings.rate_limit_failures)]
    assert set(statuses) == {401}
    limited = orgs.api("GET", "orgs/acme/keys", wrong)
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1
    assert orgs.tile(wrong) == 429  # the same limiter as data requests
    # From the same client, the admin's own key still works: it verified before (cached, known good).


def test_admin_credential_verified_once(orgs: Orgs) -> None:
    """The admin credential is cached like a data credential: one argon2 verification for many requests."""
    app = orgs.proxy.app
    before = app.gate.stats.verifications
    for _ in range(5):
        assert orgs.api("GET", "orgs/acme/keys", orgs.boss).status_code == 200
    assert app.gate.stats.verifications - before == 1


def test_cross_site_browser_request_refused(orgs: Orgs) -> None:
    """A request another site's page makes (Sec-Fetch-Site: cross-site or same-site) is refused, changing nothing."""
    before = orgs.state()
    for site in ("cross-site", "same-site"):
        response = orgs.api(
            "POST", "orgs/acme/keys", orgs.boss, json={"name": "evil"}, headers={"Sec-Fetch-Site": site}
        )
        assert response.status_code == 403
    assert orgs.api("GET", "orgs/acme/keys", orgs.boss, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
    assert orgs.state() == before


def test_api_answers_carry_no_cors_and_no_sniffing(orgs: Orgs) -> None:
    """The API never grants another origin (even one allowed for data) and sets nosniff and a CSP."""
    response = orgs.api("GET", "orgs/acme/keys", orgs.boss, headers={"Origin": "https://maps.example.org"})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


# -- the actions ----------------------------------------------------------------------------


def test_key_lifecycle_through_the_api(orgs: Orgs) -> None:
    """Create, use, rotate with a grace (both work), revoke the old one now, delete (refused at once)."""
    created = orgs.api(
        "POST",
        "orgs/acme/keys",
        orgs.boss,
        json={"name": "ci", "permissions": ["read"], "repos": {"era5": "write"}, "expires_in": "90d"},
    )
    assert created.status_code == 201, created.text
    issued = created.json()
    assert set(issued) == {"token", "token_id", "key", "expires_at", "permissions", "repos"}
    assert issued["key"] == "ci@acme"
    assert created.headers["location"] == f"{API}/orgs/acme/keys/ci"
    first = issued["token"]
    assert orgs.tile(first) == 200

    listed = orgs.api("GET", "orgs/acme/keys/ci", orgs.boss).json()
    assert listed["last_used_at"] is not None  # from this server's memory, before any flush
    assert listed["repos"] == {"era5": "write"}
    assert first not in json.dumps(orgs.api("GET", "orgs/acme/keys", orgs.boss).json())

    rotated = orgs.api("POST", "orgs/acme/keys/ci/rotate", orgs.boss, json={"grace": "2h", "extend_months": 3})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()["token"]
    assert (orgs.tile(first), orgs.tile(second)) == (200, 200)
    tokens = orgs.api("GET", "orgs/acme/keys/ci", orgs.boss).json()["tokens"]
    old = next(t for t in tokens if t["token_id"] == issued["token_id"])
    assert old["not_after"] is not None

    revoked = orgs.api("POST", f"orgs/acme/keys/ci/tokens/{issued['token_id']}/revoke", orgs.boss)
    assert (revoked.status_code, revoked.content) == (204, b"")
    assert (orgs.tile(first), orgs.tile(second)) == (401, 200)

    assert orgs.api("DELETE", "orgs/acme/keys/ci", orgs.boss).status_code == 204
    assert orgs.tile(second) == 401
    assert orgs.api("GET", "orgs/acme/keys/ci", orgs.boss).status_code == 404


def test_new_key_never_used(orgs: Orgs) -> None:
    """A new key's last use is null ("never" on the page); its tokens show no grace end."""
    orgs.api("POST", "orgs/acme/keys", orgs.boss, json={"name": "fresh"})
    key = orgs.api("GET", "orgs/acme/keys/fresh", orgs.boss).json()
    assert key["last_used_at"] is None
    assert [t["not_after"] for t in key["tokens"]] == [None]


def test_revoke_current_token_conflict(orgs: Orgs) -> None:
    """The key's current token cannot be "revoked now" (409): that is what delete is for."""
    current = orgs.api("GET", "orgs/acme/keys/reader", orgs.boss).json()["tokens"][0]["token_id"]
    response = orgs.api("POST", f"orgs/acme/keys/reader/tokens/{current}/revoke", orgs.boss)
    assert response.status_code == 409
    assert error_of(response)["field"] == "token_id"
    assert orgs.tile(orgs.reader) == 200


def test_rotate_without_body_uses_defaults(orgs: Orgs) -> None:
    """Rotate with no body: a grace of one day."""
    response = orgs.api("POST", "orgs/acme/keys/reader/rotate", orgs.boss)
    assert response.status_code == 200, response.text
    tokens = orgs.store.get_key("acme", "reader").tokens
    assert tokens[0].not_after == tokens[1].created_at + 86400


def test_services_and_repos(orgs: Orgs) -> None:
    """PUT and GET of services and repo visibility; a public repo is then readable anonymously."""
    assert orgs.api("GET", "orgs/acme/services/wms", orgs.boss).json() == {
        "protocol": "wms",
        "enabled": False,
        "is_public": False,
    }
    answer = orgs.api("PUT", "orgs/acme/services/wms", orgs.boss, json={"enabled": True, "is_public": True})
    assert answer.json() == {"protocol": "wms", "enabled": True, "is_public": True}
    listed = {s["protocol"]: s for s in orgs.api("GET", "orgs/acme/services", orgs.boss).json()}
    assert listed["wms"]["is_public"]
    assert set(listed) == {"dap2", "edr", "wms", "tiles", "zarr"}
    assert orgs.api("GET", "orgs/acme/repos/era5", orgs.boss).json() == {"repo": "era5", "visibility": "private"}
    anonymous = orgs.url + TILE.format(org="acme")
    assert orgs.client.get(anonymous).status_code == 401
    put = orgs.api("PUT", "orgs/acme/repos/era5", orgs.boss, json={"visibility": "public"})
    assert put.json() == {"repo": "era5", "visibility": "public"}
    assert orgs.api("GET", "orgs/acme/repos", orgs.boss).json() == [{"repo": "era5", "visibility": "public"}]
    assert orgs.client.get(anonymous).status_code == 200


def test_unknown_protocol_404(orgs: Orgs) -> None:
    """A protocol this server does not serve: 404 naming it."""
    response = orgs.api("PUT", "orgs/acme/services/ftp", orgs.boss, json={"enabled": True})
    assert response.status_code == 404
    assert error_of(response)["field"] == "protocol"


def test_unknown_endpoint_and_method(orgs: Orgs) -> None:
    """Paths that are no route: 404; a route with another method: 405 with Allow."""
    assert orgs.api("GET", "orgs/acme/nothing", orgs.boss).status_code == 404
    assert orgs.api("GET", "", orgs.boss).status_code == 404
    response = orgs.api("PATCH", "orgs/acme/keys", orgs.boss)
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


# -- bad input -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request that must be refused with ``status``, naming ``field`` (if any), changing nothing."""

    method: str
    path: str
    status: int
    names: str | None = None  # the field
    body: Any = None  # JSON
    content: bytes | None = None  # raw, with ``headers``
    headers: dict[str, str] = field(default_factory=dict)


JSON = {"Content-Type": "application/json"}
BAD: dict[str, Bad] = {
    "unknown-field": Bad("POST", "orgs/acme/keys", 422, "owner", {"name": "x", "owner": "root"}),
    "org-in-body": Bad("POST", "orgs/acme/keys", 422, "org", {"name": "x", "org": "other"}),
    "name-missing": Bad("POST", "orgs/acme/keys", 422, "name", {"permissions": ["read"]}),
    "name-with-space": Bad("POST", "orgs/acme/keys", 422, "name", {"name": "my key"}),
    "name-with-org": Bad("POST", "orgs/acme/keys", 422, "name", {"name": "x@other"}),
    "name-wrong-type": Bad("POST", "orgs/acme/keys", 422, "name", {"name": 7}),
    "permission-root": Bad("POST", "orgs/acme/keys", 422, "permissions", {"name": "x", "permissions": ["root"]}),
    "permissions-not-list": Bad("POST", "orgs/acme/keys", 422, "permissions", {"name": "x", "permissions": "read"}),
    "repo-of-other-org": Bad("POST", "orgs/acme/keys", 422, "repos", {"name": "x", "repos": {"other/era5": "read"}}),
    "repo-dot-dot": Bad("POST", "orgs/acme/keys", 422, "repos", {"name": "x", "repos": {"..": "read"}}),
    "repo-access-admin": Bad("POST", "orgs/acme/keys", 422, "repos", {"name": "x", "repos": {"era5": "admin"}}),
    "expires-past-max": Bad("POST", "orgs/acme/keys", 422, "expires_in", {"name": "x", "expires_in": "1000d"}),
    "expires-zero": Bad("POST", "orgs/acme/keys", 422, "expires_in", {"name": "x", "expires_in": "0s"}),
    "expires-not-duration": Bad("POST", "orgs/acme/keys", 422, "expires_in", {"name": "x", "expires_in": "soon"}),
    "expires-number": Bad("POST", "orgs/acme/keys", 422, "expires_in", {"name": "x", "expires_in": 86400}),
    "grace-8d": Bad("POST", "orgs/acme/keys/reader/rotate", 422, "grace", {"grace": "8d"}),
    "extend-13": Bad("POST", "orgs/acme/keys/reader/rotate", 422, "extend_months", {"extend_months": 13}),
    "extend-0": Bad("POST", "orgs/acme/keys/reader/rotate", 422, "extend_months", {"extend_months": 0}),
    "extend-string": Bad("POST", "orgs/acme/keys/reader/rotate", 422, "extend_months", {"extend_months": "3"}),
    "extend-float": Bad("POST", "orgs/acme/keys/reader/rotate", 422, "extend_months", {"extend_months": 3.0}),
    "extend-past-max": Bad("POST", "orgs/acme/keys/reader/rotate", 422, "extend_months", {"extend_months": 12}),
    "enabled-string": Bad("PUT", "orgs/acme/services/tiles", 422, "enabled", {"enabled": "false"}),
    "visibility-secret": Bad("PUT", "orgs/acme/repos/era5", 422, "visibility", {"visibility": "secret"}),
    "repo-path-bad": Bad("PUT", "orgs/acme/repos/a%20b", 422, "repo", {"visibility": "public"}),
    "key-path-bad": Bad("DELETE", "orgs/acme/keys/Boss", 422, "name"),
    "token-path-bad": Bad("POST", "orgs/acme/keys/reader/tokens/xyz/revoke", 422, "token_id"),
    "not-json": Bad("POST", "orgs/acme/keys", 400, content=b"name=x", headers=JSON),
    "json-array": Bad("POST", "orgs/acme/keys", 400, content=b'[{"name": "x"}]', headers=JSON),
    "json-string": Bad("POST", "orgs/acme/keys", 400, content=b'"x"', headers=JSON),
    "not-utf8": Bad("POST", "orgs/acme/keys", 400, content=b'{"name": "\xff"}', headers=JSON),
    "form-body": Bad("POST", "orgs/acme/keys", 415, content=b'{"name": "x"}', headers={"Content-Type": "text/plain"}),
    "no-content-type": Bad("POST", "orgs/acme/keys", 415, content=b'{"name": "x"}'),
    "huge": Bad("POST", "orgs/acme/keys", 413, content=b'{"name": "' + b"x" * MAX_BODY + b'"}', headers=JSON),
    "body-on-revoke": Bad(
        "POST", "orgs/acme/keys/reader/tokens/0123456789abcdef/revoke", 400, content=b"{}", headers=JSON
    ),
    "form-revoke": Bad(
        "POST",
        "orgs/acme/keys/reader/tokens/0123456789abcdef/revoke",
        415,
        content=b"",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "form-rotate": Bad(
        "POST", "orgs/acme/keys/reader/rotate", 415, content=b"", headers={"Content-Type": "text/plain"}
    ),
    "query-unknown": Bad("GET", "orgs/acme/audit?who=cli", 422, "who"),
    "query-limit": Bad("GET", "orgs/acme/audit?limit=0", 422, "limit"),
    "query-since": Bad("GET", "orgs/acme/audit?since=yesterday", 422, "since"),
    "query-repeated": Bad("GET", "orgs/acme/audit?limit=1&limit=2", 422, "limit"),
}


@pytest.fixture
def long_lived(orgs: Orgs) -> Orgs:
    """``reader`` made to expire 700 days from now, so that extending it by 12 months passes the maximum."""
    orgs.api("DELETE", "orgs/acme/keys/reader", orgs.boss)
    long = {"name": "reader", "permissions": ["read"], "expires_in": "700d"}
    orgs.api("POST", "orgs/acme/keys", orgs.boss, json=long)
    return orgs


@pytest.mark.parametrize("name", BAD)
def test_bad_input_refused_and_nothing_changed(long_lived: Orgs, name: str) -> None:
    """Each bad request: its status, ``{"error", "detail"}`` naming the field, and no change at all."""
    orgs, case = long_lived, BAD[name]
    before = orgs.state()
    kwargs: dict[str, Any] = {"headers": case.headers}
    if case.body is not None:
        kwargs["json"] = case.body
    elif case.content is not None:
        kwargs["content"] = case.content
    response = orgs.api(case.method, case.path, orgs.boss, **kwargs)
    assert response.status_code == case.status, response.text
    body = error_of(response)
    if case.names is not None:
        assert body["field"] == case.names
        assert case.names in body["detail"]
    assert orgs.state() == before
    events = orgs.store.list_audit("acme", limit=1)
    if case.method != "GET":  # a refused mutation of a known admin is audited
        assert (events[0].actor, events[0].outcome) == ("boss@acme", "failed")


def test_conflict_on_existing_name(orgs: Orgs) -> None:
    """Creating a key whose name exists: 409, nothing changed."""
    before = orgs.state()
    response = orgs.api("POST", "orgs/acme/keys", orgs.boss, json={"name": "reader"})
    assert response.status_code == 409
    assert orgs.state() == before


# -- the audit log -----------------------------------------------------------------------------


def test_audit_records_api_and_cli_mutations_never_secrets(orgs: Orgs) -> None:
    """Each API mutation has its event (actor, client, action, target, outcome); no token or hash appears."""
    created = orgs.api("POST", "orgs/acme/keys", orgs.boss, json={"name": "ci"}).json()
    rotated = orgs.api("POST", "orgs/acme/keys/ci/rotate", orgs.boss, json={"grace": "0s"}).json()
    orgs.api("DELETE", "orgs/acme/keys/ci", orgs.boss)
    events = orgs.api("GET", "orgs/acme/audit", orgs.boss).json()
    mine = [(e["actor"], e["client"], e["action"], e["target"], e["outcome"]) for e in events[:3]]
    assert mine == [
        ("boss@acme", "127.0.0.1", "keys.delete", "ci@acme", "ok"),
        ("boss@acme", "127.0.0.1", "keys.rotate", "ci@acme", "ok"),
        ("boss@acme", "127.0.0.1", "keys.create", "ci@acme", "ok"),
    ]
    assert events[-1]["actor"] == "cli"  # the set-up, through Admin as the command line does
    assert events[-1]["client"] is None
    text = json.dumps(events)
    for token in (created["token"], rotated["token"], orgs.boss):
        assert token.split("_", 2)[2] not in text
    assert "$argon2" not in text
    stored = " ".join(map(str, orgs.store.list_audit("acme", limit=1000)))
    assert created["token"].split("_", 2)[2] not in stored


def test_audit_filters_and_pages(orgs: Orgs) -> None:
    """Filtered by actor and time, newest first, paged by ``before`` with a Link to the next page."""
    for name in ("a1", "a2", "a3"):
        orgs.api("POST", "orgs/acme/keys", orgs.boss, json={"name": name})
        orgs.proxy.clock.advance(60)
    by_boss = orgs.api("GET", "orgs/acme/audit?actor=boss@acme", orgs.boss).json()
    assert [e["target"] for e in by_boss] == ["a3@acme", "a2@acme", "a1@acme"]
    page = orgs.api("GET", "orgs/acme/audit?actor=boss@acme&limit=2", orgs.boss)
    assert [e["target"] for e in page.json()] == ["a3@acme", "a2@acme"]
    link = page.headers["link"]
    assert link.endswith('; rel="next"')
    next_url = link[1 : link.index(">")]
    rest = orgs.client.get(orgs.url + next_url, auth=("acme", orgs.boss)).json()
    assert [e["target"] for e in rest] == ["a1@acme"]
    since = by_boss[1]["at"]
    recent = orgs.api("GET", "orgs/acme/audit", orgs.boss, params={"actor": "boss@acme", "since": since}).json()
    assert [e["target"] for e in recent] == ["a3@acme", "a2@acme"]
    until = orgs.api("GET", "orgs/acme/audit", orgs.boss, params={"actor": "boss@acme", "until": since}).json()
    assert [e["target"] for e in until] == ["a1@acme"]
    assert orgs.api("GET", "orgs/acme/audit?actor=cli&limit=1", orgs.boss).json()[0]["actor"] == "cli"


# -- every server -------------------------------------------------------------------------------


def test_api_change_reaches_another_server_within_a_second(
    orgs: Orgs, proxy_factory: ProxyFactory, settings: Settings, redis_db: redis.Redis
) -> None:
    """A key deleted through one server is refused by another (sharing store and Redis) within a second."""
    import dataclasses
    import time

    shared = dataclasses.replace(settings, redis_url=redis_url())
    first, second = proxy_factory(shared), proxy_factory(shared)
    token = orgs.api("POST", "orgs/acme/keys", orgs.boss, json={"name": "ci", "permissions": ["read"]}).json()["token"]
    tile = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/0/0/0.png"
    assert orgs.client.get(second.url + tile, auth=("acme", token)).status_code == 200
    deleted = orgs.client.delete(f"{first.url}{API}/orgs/acme/keys/ci", auth=("acme", orgs.boss))
    assert deleted.status_code == 204
    started = time.monotonic()
    while orgs.client.get(second.url + tile, auth=("acme", token)).status_code == 200:
        assert time.monotonic() - started < 1.0, "the other server still serves the deleted key's token"
        time.sleep(0.02)
