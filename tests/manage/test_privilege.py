"""No privilege beyond the org: every way an org admin might reach past its own org, tried and refused.

``boss@acme`` holds ``manage_org_users`` in acme. Org ``other`` exists (with its
own ``boss``); org ``ghost`` does not. Whatever boss@acme sends about other,
the answer is byte for byte the one about ghost, nothing of other changes, and
other's audit log gains nothing (acme's records the attempts).
"""

from __future__ import annotations

from typing import Any

import pytest

from fluxauth.manage.routes import ROUTES, Route
from tests.manage.conftest import Orgs
from tests.manage.test_api import fill

BODIES: dict[str, Any] = {
    "create_key": {"name": "planted", "permissions": ["read", "write", "manage_org_users"]},
    "rotate_key": {"grace": "7d"},
    "set_service": {"enabled": True, "is_public": True},
    "set_repo": {"visibility": "public"},
}


def answer(orgs: Orgs, route: Route, org: str, **values: str) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """boss@acme's request on ``route`` in ``org``: status, body, headers (without Date)."""
    response = orgs.api(route.method, fill(route.path, org, **values), orgs.boss, json=BODIES.get(route.name))
    headers = tuple((name, value) for name, value in response.headers.items() if name != "date")
    return response.status_code, response.content, headers


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route.name)
def test_other_org_answers_exactly_as_a_missing_org(orgs: Orgs, route: Route) -> None:
    """Every route of another org: 404, the same bytes and headers as for an org that does not exist."""
    other_events = orgs.store.list_audit("other", limit=1000)
    before = orgs.state()
    other = answer(orgs, route, "other")
    ghost = answer(orgs, route, "ghost")
    assert other[0] == 404
    assert other == ghost
    assert orgs.state() == before
    assert orgs.store.list_audit("other", limit=1000) == other_events
    assert orgs.store.list_audit("ghost", limit=1000) == []
    denied = orgs.store.list_audit("acme", limit=2)
    assert [(e.actor, e.outcome, e.action) for e in denied] == [("boss@acme", "denied", route.action)] * 2


def test_keys_of_another_org_cannot_be_told_apart(orgs: Orgs) -> None:
    """other's existing key, its missing key, a token id of other's: every answer the same."""
    existing_token = orgs.store.get_key("other", "boss").tokens[0].token_id
    for route in ROUTES:
        if "{name}" not in route.path:
            continue
        seen = {
            answer(orgs, route, "other", name="boss", token_id=existing_token),
            answer(orgs, route, "other", name="nobody"),
            answer(orgs, route, "ghost", name="boss", token_id=existing_token),
        }
        assert len(seen) == 1, route.name


def test_other_orgs_key_still_works_after_every_attempt(orgs: Orgs) -> None:
    """After boss@acme tried every route on other, other's admin key works and other's keys are as they were."""
    keys = orgs.store.list_keys("other")
    for route in ROUTES:
        answer(orgs, route, "other")
    assert orgs.store.list_keys("other") == keys
    assert orgs.tile(orgs.other_boss, org="other") == 200
    assert orgs.api("GET", "orgs/other/keys", orgs.other_boss, org="other").status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "org": "other"}, "org"),
        ({"name": "x@other"}, "name"),
        ({"name": "x", "key": "x@other"}, "key"),
        ({"name": "x", "repos": {"other/era5": "write"}}, "repos"),
        ({"name": "x", "repos": {"../other/era5": "write"}}, "repos"),
        ({"name": "x", "repos": {"era5@other": "write"}}, "repos"),
        ({"name": "x", "permissions": ["admin"]}, "permissions"),
        ({"name": "x", "permissions": ["manage_org_users"], "scope": "global"}, "scope"),
    ],
)
def test_body_cannot_reach_another_org(orgs: Orgs, body: dict[str, Any], field: str) -> None:
    """Creating or granting in another org through the body: 422 naming the field, nothing created anywhere."""
    before = orgs.state()
    response = orgs.api("POST", "orgs/acme/keys", orgs.boss, json=body)
    assert response.status_code == 422
    assert response.json()["field"] == field
    assert orgs.state() == before


def test_grants_are_of_the_admins_own_org(orgs: Orgs) -> None:
    """A repo grant names a repo of the path's org: a key made in acme with era5=write cannot write other's era5."""
    created = orgs.api("POST", "orgs/acme/keys", orgs.boss, json={"name": "w", "repos": {"era5": "write"}})
    token = created.json()["token"]
    assert orgs.tile(token) == 200
    assert orgs.tile(token, org="other") == 401  # username other, key of acme
    response = orgs.client.get(
        orgs.url + "/v1/services/tiles/other/era5/main/tiles/WebMercatorQuad/0/0/0.png", auth=("acme", token)
    )
    assert response.status_code == 403


def test_admin_key_with_another_orgs_name_is_refused(orgs: Orgs) -> None:
    """acme's admin key sent as username other: 401 (the username must be the key's org), nothing learned."""
    as_other = orgs.api("GET", "orgs/other/keys", orgs.boss, org="other")
    as_ghost = orgs.api("GET", "orgs/ghost/keys", orgs.boss, org="ghost")
    assert as_other.status_code == as_ghost.status_code == 401
    assert as_other.content == as_ghost.content


def test_unauthenticated_cannot_tell_orgs_apart(orgs: Orgs) -> None:
    """Without credentials (or with wrong ones) every org's routes answer the same 401."""
    for route in ROUTES:
        seen = {
            (r.status_code, r.content)
            for r in (
                orgs.api(route.method, fill(route.path, "acme")),
                orgs.api(route.method, fill(route.path, "other")),
                orgs.api(route.method, fill(route.path, "ghost")),
            )
        }
        assert len(seen) == 1, route.name
        assert next(iter(seen))[0] == 401


def test_read_key_cannot_escalate(orgs: Orgs) -> None:
    """A read key of acme can neither give itself manage_org_users nor make a key that has it."""
    before = orgs.state()
    for body in ({"name": "me2", "permissions": ["manage_org_users"]}, {"name": "reader"}):
        assert orgs.api("POST", "orgs/acme/keys", orgs.reader, json=body).status_code == 403
    assert orgs.api("POST", "orgs/acme/keys/reader/rotate", orgs.reader).status_code == 403
    assert orgs.state() == before


def test_revoked_admin_token_loses_the_api_at_once(orgs: Orgs) -> None:
    """An admin whose key is deleted (by another admin of the org) is refused on its next request."""
    second = orgs.api(
        "POST", "orgs/acme/keys", orgs.boss, json={"name": "boss2", "permissions": ["manage_org_users"]}
    ).json()["token"]
    assert orgs.api("GET", "orgs/acme/keys", second).status_code == 200
    assert orgs.api("DELETE", "orgs/acme/keys/boss2", orgs.boss).status_code == 204
    assert orgs.api("GET", "orgs/acme/keys", second).status_code == 401
