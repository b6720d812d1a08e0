"""Tests of copying a whole store between databases (``fluxauth store copy``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fluxauth.auth.hashing import TokenHasher
from fluxauth.decision.tokens import new_token
from fluxauth.errors import Conflict
from fluxauth.model import AuditEvent
from fluxauth.store.copy import copy_store
from fluxauth.store.schema import TABLES
from fluxauth.store.sql import SQLStore, _convert
from tests.store.test_store import NOW, key_record, opened

Opener = Callable[[], SQLStore]


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Opener:
    return lambda: opened(str(tmp_path / f"store-{len(list(tmp_path.iterdir()))}.db"))


@pytest.fixture
def postgres_store(pg_database: str) -> Opener:
    from tests.support.postgres import new_schema

    return lambda: opened(new_schema(pg_database))


@pytest.fixture(params=["sqlite-to-postgresql", "postgresql-to-sqlite", "postgresql-to-postgresql"])
def stores(request: pytest.FixtureRequest, sqlite_store: Opener, postgres_store: Opener) -> tuple[SQLStore, SQLStore]:
    """A source and an empty target, of the kinds the parameter names."""
    kinds = {"sqlite": sqlite_store, "postgresql": postgres_store}
    source, _, target = request.param.partition("-to-")
    return kinds[source](), kinds[target]()


def fill(store: SQLStore) -> dict[str, str]:
    """A store with something in every table; the secrets of its tokens."""
    hasher = TokenHasher("cheapest")
    secrets: dict[str, str] = {}

    def token() -> tuple[str, str]:
        parts, _ = new_token()
        secrets[parts.token_id] = parts.secret
        return parts.token_id, hasher.hash(parts.secret)

    store.create_org("acme", NOW)
    store.create_org("other", NOW + 1)
    store.set_service("acme", "tiles", enabled=True, is_public=True, now=NOW)
    store.set_service("acme", "wms", enabled=False, is_public=False, now=NOW)
    store.set_repo_visibility("acme", "era5", "authenticated", NOW)
    event = AuditEvent(NOW, "acme", "ci@acme", "keys.create", "ci", "ok", client="192.0.2.7", detail="read")
    store.create_key(key_record(repo_grants={"era5": "write"}), *token(), NOW, audit=event)
    store.create_key(key_record("bot", org="other"), *token(), NOW)
    token_id, token_hash = token()
    store.rotate_key(
        "acme", "ci", token_id=token_id, token_hash=token_hash, grace_end=NOW + 60, expires_at=NOW, now=NOW
    )
    store.touch_keys({("acme", "ci"): NOW + 5})
    store.append_audit(AuditEvent(NOW + 9, "acme", "cli", "keys.delete", "ghost", "not_found"))
    return secrets


def normalized(store: SQLStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row, as the other database would hold it (0/1 as booleans, blobs as bytes)."""
    table = {t.name: t for t in TABLES}
    return {name: sorted(_convert(table[name], row) for row in rows) for name, rows in store.dump().items()}


def test_copy_everything_tokens_keep_working(stores: tuple[SQLStore, SQLStore]) -> None:
    """Every row and the cache secret arrive as they were; every token verifies against the target."""
    source, target = stores
    secrets = fill(source)
    before = normalized(source)
    counts = copy_store(source, target)
    assert counts == {
        "meta": 1,
        "orgs": 2,
        "services": 2,
        "repos": 1,
        "keys": 2,
        "tokens": 3,
        "changes": 8,
        "audit": 2,
    }
    assert normalized(target) == before
    assert normalized(source) == before  # the source is left as it was
    assert target.cache_secret() == source.cache_secret()
    hasher = TokenHasher("cheapest")
    for token_id, secret in secrets.items():
        credential = target.get_credential(token_id)
        assert credential is not None
        assert hasher.verify(credential.token.hash, secret)
    key = target.get_key("acme", "ci")
    assert key.last_used_at == NOW + 5
    assert dict(key.repo_grants) == {"era5": "write"}
    grace = sorted(((t.not_after, t.rotated_at) for t in key.tokens), key=lambda pair: pair[0] is None)
    assert grace == [(NOW + 60, NOW), (None, None)]
    policy = target.org_policy("acme")
    assert policy is not None
    assert policy.services["tiles"].is_public
    assert not policy.services["wms"].enabled


def test_copy_numbering_continues(stores: tuple[SQLStore, SQLStore]) -> None:
    """The target's next change and audit event follow the copied ones."""
    source, target = stores
    fill(source)
    copy_store(source, target)
    last_change, last_event = source.last_change(), source.list_audit("acme", limit=1)[0].seq
    target.create_org("later", NOW)
    assert target.last_change() == last_change + 1
    assert [c.org for c in target.changes_since(last_change)] == ["later"]
    assert target.append_audit(AuditEvent(NOW, "acme", "cli", "x", "y", "ok")).seq == last_event + 1


def test_copy_into_non_empty_target_refused_nothing_changed(stores: tuple[SQLStore, SQLStore]) -> None:
    """A target that holds anything (here one org) is refused, and neither store changes."""
    source, target = stores
    fill(source)
    target.create_org("mine", NOW)
    source_before, target_before = normalized(source), normalized(target)
    with pytest.raises(Conflict, match="is not empty"):
        copy_store(source, target)
    assert normalized(source) == source_before
    assert normalized(target) == target_before


def test_copy_empty_store(stores: tuple[SQLStore, SQLStore]) -> None:
    """An empty store copies its cache secret alone; the target starts numbering at 1."""
    source, target = stores
    assert copy_store(source, target)["meta"] == 1
    assert target.cache_secret() == source.cache_secret()
    target.create_org("acme", NOW)
    assert target.last_change() == 1
