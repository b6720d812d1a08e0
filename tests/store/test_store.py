"""Tests of the store on both databases: records, rotation, grace, the change feed, audit, sharing a store.

Every test runs on SQLite and on PostgreSQL (a schema of the test's own in the
session's database: tests/postgres.py).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from fluxauth.errors import Conflict, InputError, NotFound
from fluxauth.model import AuditEvent, Change, KeyRecord, Permission, RepoAccess
from fluxauth.store import open_store
from fluxauth.store.backend import Transaction
from fluxauth.store.sql import SQLStore
from tests.support.postgres import pg_rows

NOW = 1_800_000_000.0
DAY = 86400.0


def key_record(
    name: str = "ci",
    *,
    org: str = "acme",
    permissions: frozenset[Permission] = frozenset({"read"}),
    repo_grants: dict[str, RepoAccess] | None = None,
    expires_at: float = NOW + 365 * DAY,
) -> KeyRecord:
    """A key as ``Admin.create_key`` would hand it to the store."""
    return KeyRecord(
        org=org,
        name=name,
        permissions=permissions,
        repo_grants=repo_grants or {},
        created_at=NOW,
        expires_at=expires_at,
        last_used_at=None,
    )


def opened(url: str) -> SQLStore:
    store = open_store(url)
    assert isinstance(store, SQLStore)
    return store


def raw(url: str, sql: str) -> list[Any]:
    """Rows of ``sql`` read over a connection of its own, as another process would see them."""
    if url.startswith("postgresql://"):
        return pg_rows(url, sql)
    conn = sqlite3.connect(url)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    store = opened(store_url)
    yield store
    store.close()


@pytest.fixture
def acme(store: SQLStore) -> SQLStore:
    """The store with org ``acme`` and key ``ci@acme`` (token ``t1``)."""
    store.create_org("acme", NOW)
    store.create_key(key_record(), "t1", "hash-1", NOW)
    return store


def test_cache_secret_stable_across_opens(store: SQLStore, store_url: str, tmp_path: Path) -> None:
    """The cache secret is 32 random bytes, made once per store and the same for every opener."""
    secret = store.cache_secret()
    assert isinstance(secret, bytes)
    assert len(secret) == 32
    store.close()
    assert opened(store_url).cache_secret() == secret
    assert opened(str(tmp_path / "other.db")).cache_secret() != secret


def test_close_reopens_on_next_use(acme: SQLStore) -> None:
    """A closed store reconnects when used again (the CLI and app close it at shutdown)."""
    acme.close()
    assert acme.org_exists("acme")
    acme.ping()


# -- orgs, services, repos ----------------------------------------------------


def test_org_create_exists(store: SQLStore) -> None:
    """A created org exists; others do not."""
    assert not store.org_exists("acme")
    store.create_org("acme", NOW)
    assert store.org_exists("acme")
    assert not store.org_exists("other")


def test_org_create_twice_conflict(store: SQLStore) -> None:
    """Creating an org that exists raises Conflict."""
    store.create_org("acme", NOW)
    with pytest.raises(Conflict, match="acme"):
        store.create_org("acme", NOW + 1)


def test_service_set_upserts_and_lists(store: SQLStore) -> None:
    """``set_service`` inserts or updates one (org, protocol); listing is sorted by protocol."""
    store.create_org("acme", NOW)
    store.create_org("other", NOW)
    store.set_service("acme", "wms", enabled=True, is_public=False, now=NOW)
    store.set_service("acme", "tiles", enabled=True, is_public=True, now=NOW)
    store.set_service("acme", "wms", enabled=False, is_public=False, now=NOW)
    store.set_service("other", "zarr", enabled=True, is_public=False, now=NOW)
    services = store.list_services("acme")
    assert [(s.org, s.protocol, s.enabled, s.is_public) for s in services] == [
        ("acme", "tiles", True, True),
        ("acme", "wms", False, False),
    ]
    assert store.list_services("other")[0].protocol == "zarr"


def test_service_unknown_org_not_found(store: SQLStore) -> None:
    """Services of an org that does not exist are NotFound, for writing and listing."""
    with pytest.raises(NotFound, match="nope"):
        store.set_service("nope", "tiles", enabled=True, is_public=False, now=NOW)
    with pytest.raises(NotFound, match="nope"):
        store.list_services("nope")


def test_repo_visibility_set_and_update(store: SQLStore) -> None:
    """A repo's visibility is set, then changed; repos never set stay private."""
    store.create_org("acme", NOW)
    store.set_repo_visibility("acme", "era5", "public", NOW)
    store.set_repo_visibility("acme", "gfs", "authenticated", NOW)
    store.set_repo_visibility("acme", "era5", "private", NOW)
    policy = store.org_policy("acme")
    assert policy is not None
    assert dict(policy.repos) == {"era5": "private", "gfs": "authenticated"}
    assert policy.visibility("gfs") == "authenticated"
    assert policy.visibility("never-set") == "private"


def test_repo_visibility_unknown_org_not_found(store: SQLStore) -> None:
    """Setting a visibility in an org that does not exist is NotFound."""
    with pytest.raises(NotFound, match="nope"):
        store.set_repo_visibility("nope", "era5", "public", NOW)


def test_org_policy_services_and_repos(store: SQLStore) -> None:
    """``org_policy`` gathers one org's services and repo visibilities, and nothing of other orgs."""
    store.create_org("acme", NOW)
    store.create_org("other", NOW)
    store.set_service("acme", "tiles", enabled=True, is_public=True, now=NOW)
    store.set_service("acme", "wms", enabled=False, is_public=False, now=NOW)
    store.set_service("other", "edr", enabled=True, is_public=False, now=NOW)
    store.set_repo_visibility("acme", "era5", "public", NOW)
    store.set_repo_visibility("other", "gfs", "public", NOW)
    policy = store.org_policy("acme")
    assert policy is not None
    assert policy.org == "acme"
    assert sorted(policy.services) == ["tiles", "wms"]
    assert policy.services["tiles"].is_public
    assert not policy.services["wms"].enabled
    assert dict(policy.repos) == {"era5": "public"}


def test_org_policy_unknown_org_none(store: SQLStore) -> None:
    """An org that does not exist has no policy (None), which the decision turns into 404."""
    assert store.org_policy("nope") is None


def test_org_policy_new_org_empty(store: SQLStore) -> None:
    """A new org has no services and every repo private."""
    store.create_org("acme", NOW)
    policy = store.org_policy("acme")
    assert policy is not None
    assert dict(policy.services) == {}
    assert policy.visibility("era5") == "private"


# -- keys and tokens ------------------------------------------------------------


def test_key_create_get_round_trip(store: SQLStore) -> None:
    """A key reads back as written, with its first token."""
    store.create_org("acme", NOW)
    record = key_record(permissions=frozenset({"read", "manage_org_users"}), repo_grants={"era5": "write"})
    store.create_key(record, "t1", "hash-1", NOW)
    key = store.get_key("acme", "ci")
    assert key.org == "acme"
    assert key.name == "ci"
    assert key.principal == "ci@acme"
    assert key.permissions == frozenset({"read", "manage_org_users"})
    assert dict(key.repo_grants) == {"era5": "write"}
    assert key.created_at == NOW
    assert key.expires_at == NOW + 365 * DAY
    assert key.last_used_at is None
    [token] = key.tokens
    assert (token.token_id, token.org, token.key_name, token.hash) == ("t1", "acme", "ci", "hash-1")
    assert token.created_at == NOW
    assert token.not_after is None


def test_key_create_duplicate_conflict(acme: SQLStore) -> None:
    """A second key with the same name in the org is a Conflict; its token is not added."""
    with pytest.raises(Conflict, match="ci@acme"):
        acme.create_key(key_record(), "t2", "hash-2", NOW)
    assert acme.get_credential("t2") is None
    assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == ["t1"]


def test_key_same_name_other_org_allowed(acme: SQLStore) -> None:
    """Key names are unique per org, not globally."""
    acme.create_org("other", NOW)
    acme.create_key(key_record(org="other"), "t2", "hash-2", NOW)
    assert acme.get_key("other", "ci").tokens[0].token_id == "t2"
    assert acme.get_key("acme", "ci").tokens[0].token_id == "t1"


def test_key_create_unknown_org_not_found(store: SQLStore) -> None:
    """A key in an org that does not exist is NotFound."""
    with pytest.raises(NotFound, match="nope"):
        store.create_key(key_record(org="nope"), "t1", "hash-1", NOW)


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_key_get_missing_not_found(acme: SQLStore, org: str, name: str, match: str) -> None:
    """An unknown key, or a key of an unknown org, is NotFound naming what is missing."""
    with pytest.raises(NotFound, match=match):
        acme.get_key(org, name)


def test_key_list_sorted_with_tokens(acme: SQLStore) -> None:
    """``list_keys`` returns the org's keys by name, each with its own tokens only."""
    acme.create_key(key_record("alpha"), "t2", "hash-2", NOW)
    acme.rotate_key("acme", "alpha", token_id="t3", token_hash="hash-3", grace_end=NOW + 60, expires_at=NOW, now=NOW)
    acme.create_org("other", NOW)
    acme.create_key(key_record("beta", org="other"), "t4", "hash-4", NOW)
    keys = acme.list_keys("acme")
    assert [k.name for k in keys] == ["alpha", "ci"]
    assert [t.token_id for t in keys[0].tokens] == ["t2", "t3"]
    assert [t.token_id for t in keys[1].tokens] == ["t1"]


def test_key_list_unknown_org_not_found(store: SQLStore) -> None:
    """Listing the keys of an org that does not exist is NotFound, not an empty list."""
    with pytest.raises(NotFound, match="nope"):
        store.list_keys("nope")


def test_key_list_empty_org(store: SQLStore) -> None:
    """An org without keys lists none."""
    store.create_org("acme", NOW)
    assert list(store.list_keys("acme")) == []


def test_rotate_sets_grace_and_adds_token(acme: SQLStore) -> None:
    """Rotation ends the old token at the grace end, adds the new one and updates the expiry."""
    acme.rotate_key(
        "acme", "ci", token_id="t2", token_hash="hash-2", grace_end=NOW + 3600, expires_at=NOW + 400 * DAY, now=NOW
    )
    key = acme.get_key("acme", "ci")
    assert key.expires_at == NOW + 400 * DAY
    assert [(t.token_id, t.hash, t.not_after) for t in key.tokens] == [
        ("t1", "hash-1", NOW + 3600),
        ("t2", "hash-2", None),
    ]


def test_rotate_keeps_earlier_grace_end(acme: SQLStore) -> None:
    """A token already in its grace period keeps the earlier end when the key is rotated again."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 100, expires_at=NOW, now=NOW)
    acme.rotate_key("acme", "ci", token_id="t3", token_hash="h3", grace_end=NOW + 5000, expires_at=NOW, now=NOW + 10)
    ends = {t.token_id: t.not_after for t in acme.get_key("acme", "ci").tokens}
    assert ends == {"t1": NOW + 100, "t2": NOW + 5000, "t3": None}


def test_rotate_shorter_grace_shortens(acme: SQLStore) -> None:
    """A later rotation with an earlier grace end cuts the running grace periods short."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 5000, expires_at=NOW, now=NOW)
    acme.rotate_key("acme", "ci", token_id="t3", token_hash="h3", grace_end=NOW + 10, expires_at=NOW, now=NOW + 10)
    ends = {t.token_id: t.not_after for t in acme.get_key("acme", "ci").tokens}
    assert ends == {"t1": NOW + 10, "t2": NOW + 10, "t3": None}


@pytest.mark.parametrize(
    ("rotate_at", "kept"),
    [
        (NOW + 99, ["t1", "t2", "t3"]),  # t1's grace (ends NOW + 100) still running
        (NOW + 100, ["t2", "t3"]),  # a token is dead at its not_after, and pruned
        (NOW + 1000, ["t2", "t3"]),
    ],
)
def test_rotate_prunes_tokens_past_grace(acme: SQLStore, store_url: str, rotate_at: float, kept: list[str]) -> None:
    """Tokens whose grace ended by the time of a rotation are deleted from the file."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 100, expires_at=NOW, now=NOW)
    acme.rotate_key(
        "acme", "ci", token_id="t3", token_hash="h3", grace_end=rotate_at + 50, expires_at=NOW, now=rotate_at
    )
    assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == kept
    assert sorted(row[0] for row in raw(store_url, "SELECT token_id FROM tokens")) == kept
    assert (acme.get_credential("t1") is not None) == ("t1" in kept)


def test_rotate_zero_grace_ends_old_token_now(acme: SQLStore) -> None:
    """A grace of 0 s ends the old token at the moment of rotation."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW)
    credential = acme.get_credential("t1")
    assert credential is not None
    assert credential.token.not_after == NOW


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_rotate_missing_not_found(acme: SQLStore, org: str, name: str, match: str) -> None:
    """Rotating an unknown key is NotFound and adds no token."""
    with pytest.raises(NotFound, match=match):
        acme.rotate_key(org, name, token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW)
    assert acme.get_credential("t2") is None
    assert acme.get_key("acme", "ci").tokens[0].not_after is None


def test_set_permissions_replaces(acme: SQLStore) -> None:
    """``set_permissions`` replaces permissions and grants and leaves tokens and expiry alone."""
    before = acme.get_key("acme", "ci")
    acme.set_permissions("acme", "ci", frozenset({"write"}), {"era5": "read", "gfs": "write"}, NOW + 5)
    after = acme.get_key("acme", "ci")
    assert after.permissions == frozenset({"write"})
    assert dict(after.repo_grants) == {"era5": "read", "gfs": "write"}
    assert after.tokens == before.tokens
    assert after.expires_at == before.expires_at
    acme.set_permissions("acme", "ci", frozenset(), {}, NOW + 6)
    emptied = acme.get_key("acme", "ci")
    assert emptied.permissions == frozenset()
    assert dict(emptied.repo_grants) == {}


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_set_permissions_missing_not_found(acme: SQLStore, org: str, name: str, match: str) -> None:
    """Changing the permissions of an unknown key is NotFound."""
    with pytest.raises(NotFound, match=match):
        acme.set_permissions(org, name, frozenset({"write"}), {}, NOW)


def test_delete_cascades_tokens(acme: SQLStore, store_url: str) -> None:
    """Deleting a key deletes every token of it: no credential is found any more."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + DAY, expires_at=NOW, now=NOW)
    acme.delete_key("acme", "ci", NOW + 1)
    assert acme.get_credential("t1") is None
    assert acme.get_credential("t2") is None
    assert raw(store_url, "SELECT COUNT(*) FROM tokens") == [(0,)]
    with pytest.raises(NotFound):
        acme.get_key("acme", "ci")
    assert list(acme.list_keys("acme")) == []


def test_delete_then_recreate_old_token_dead(acme: SQLStore) -> None:
    """A key recreated under the same name does not bring back the deleted key's tokens."""
    acme.delete_key("acme", "ci", NOW)
    acme.create_key(key_record(), "t9", "hash-9", NOW)
    assert acme.get_credential("t1") is None
    assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == ["t9"]


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_delete_missing_not_found(acme: SQLStore, org: str, name: str, match: str) -> None:
    """Deleting an unknown key is NotFound."""
    with pytest.raises(NotFound, match=match):
        acme.delete_key(org, name, NOW)


def test_get_credential_joins_key_and_token(acme: SQLStore) -> None:
    """A credential is the token with its key, which is all the gate needs to verify and decide."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 60, expires_at=NOW + DAY, now=NOW)
    credential = acme.get_credential("t1")
    assert credential is not None
    assert (credential.token.token_id, credential.token.hash, credential.token.not_after) == ("t1", "hash-1", NOW + 60)
    assert credential.key.principal == "ci@acme"
    assert credential.key.permissions == frozenset({"read"})
    assert credential.key.expires_at == NOW + DAY
    fresh = acme.get_credential("t2")
    assert fresh is not None
    assert fresh.token.not_after is None


def test_get_credential_unknown_none(acme: SQLStore) -> None:
    """An unknown token id gives None (the gate then spends a decoy verification)."""
    assert acme.get_credential("0123456789abcdef") is None
    assert acme.get_credential("") is None


def test_touch_keys_moves_forward_only(acme: SQLStore) -> None:
    """``last_used_at`` only moves forward, in one batch, and appends no change."""
    acme.create_key(key_record("bot"), "t2", "hash-2", NOW)
    seq = acme.last_change()
    acme.touch_keys({("acme", "ci"): NOW + 50, ("acme", "bot"): NOW + 10})
    acme.touch_keys({("acme", "ci"): NOW + 20, ("acme", "bot"): NOW + 30})
    assert acme.get_key("acme", "ci").last_used_at == NOW + 50
    assert acme.get_key("acme", "bot").last_used_at == NOW + 30
    assert acme.last_change() == seq
    assert list(acme.changes_since(seq)) == []


def test_touch_keys_unknown_and_empty_ignored(acme: SQLStore) -> None:
    """Touching a key deleted meanwhile, or nothing, is no error (the flush is best effort)."""
    acme.touch_keys({})
    acme.touch_keys({("acme", "ghost"): NOW, ("nope", "ci"): NOW})
    assert acme.get_key("acme", "ci").last_used_at is None


# -- change feed ------------------------------------------------------------------


def test_changes_since_every_mutation_in_order(store: SQLStore) -> None:
    """Each kind of mutation appends one change, in order, naming the org and (for keys) the key."""
    store.create_org("acme", NOW)
    store.set_service("acme", "tiles", enabled=True, is_public=False, now=NOW + 1)
    store.set_repo_visibility("acme", "era5", "public", NOW + 2)
    store.create_key(key_record(), "t1", "hash-1", NOW + 3)
    store.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW + 4)
    store.set_permissions("acme", "ci", frozenset({"write"}), {}, NOW + 5)
    store.touch_keys({("acme", "ci"): NOW + 6})
    store.create_org("other", NOW + 7)
    store.delete_key("acme", "ci", NOW + 8)
    changes = store.changes_since(0)
    assert [(c.kind, c.org, c.key_name, c.at) for c in changes] == [
        ("org", "acme", None, NOW),
        ("service", "acme", None, NOW + 1),
        ("repo", "acme", None, NOW + 2),
        ("key", "acme", "ci", NOW + 3),
        ("key", "acme", "ci", NOW + 4),
        ("key", "acme", "ci", NOW + 5),
        ("org", "other", None, NOW + 7),
        ("key", "acme", "ci", NOW + 8),
    ]
    seqs = [c.seq for c in changes]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)
    assert store.last_change() == seqs[-1]


def test_changes_since_seq_and_limit(store: SQLStore) -> None:
    """``changes_since(seq)`` returns only later changes, at most ``limit`` of them."""
    assert store.last_change() == 0
    assert list(store.changes_since(0)) == []
    for index in range(5):
        store.create_org(f"org{index}", NOW + index)
    everything = store.changes_since(0)
    assert [c.org for c in store.changes_since(everything[1].seq)] == ["org2", "org3", "org4"]
    assert [c.org for c in store.changes_since(0, limit=2)] == ["org0", "org1"]
    assert list(store.changes_since(everything[-1].seq)) == []


Mutation = Callable[[SQLStore, AuditEvent | None], None]
EVENT = AuditEvent(at=NOW, org="acme", actor="cli", action="test", target="acme", outcome="ok")


@pytest.fixture
def rotated(acme: SQLStore) -> SQLStore:
    """``acme`` with ``ci@acme`` rotated: ``t1`` in its grace (an hour), ``t2`` current."""
    acme.rotate_key(
        "acme", "ci", token_id="t2", token_hash="hash-2", grace_end=NOW + 3600, expires_at=NOW + DAY, now=NOW
    )
    return acme


MUTATIONS: list[tuple[str, Mutation, tuple[str, str | None]]] = [
    ("create_org", lambda s, a: s.create_org("other", NOW, audit=a), ("org", None)),
    (
        "enable_service",
        lambda s, a: s.set_service("acme", "wms", enabled=True, is_public=True, now=NOW, audit=a),
        ("service", None),
    ),
    (
        "disable_service",
        lambda s, a: s.set_service("acme", "wms", enabled=False, is_public=False, now=NOW, audit=a),
        ("service", None),
    ),
    (
        "visibility",
        lambda s, a: s.set_repo_visibility("acme", "era5", "authenticated", NOW, audit=a),
        ("repo", None),
    ),
    ("create_key", lambda s, a: s.create_key(key_record("bot"), "t3", "h3", NOW, audit=a), ("key", "bot")),
    (
        "rotate_key",
        lambda s, a: s.rotate_key(
            "acme", "ci", token_id="t3", token_hash="h3", grace_end=NOW, expires_at=NOW, now=NOW, audit=a
        ),
        ("key", "ci"),
    ),
    (
        "set_permissions",
        lambda s, a: s.set_permissions("acme", "ci", frozenset(), {"x": "read"}, NOW, audit=a),
        ("key", "ci"),
    ),
    ("end_grace", lambda s, a: s.end_grace("acme", "ci", "t1", NOW, NOW, audit=a), ("key", "ci")),
    ("delete_key", lambda s, a: s.delete_key("acme", "ci", NOW, audit=a), ("key", "ci")),
]


@pytest.mark.parametrize(("mutation", "expected"), [(m, e) for _, m, e in MUTATIONS], ids=[n for n, _, _ in MUTATIONS])
def test_mutation_appends_exactly_one_change(rotated: SQLStore, mutation: Mutation, expected: tuple[str, str]) -> None:
    """Every mutation appends one change, no more, in the same transaction."""
    seq = rotated.last_change()
    mutation(rotated, None)
    [change] = rotated.changes_since(seq)
    assert (change.kind, change.key_name) == expected
    assert change.at == NOW
    assert list(rotated.list_audit("acme")) == []


@pytest.mark.parametrize("mutation", [m for _, m, _ in MUTATIONS], ids=[n for n, _, _ in MUTATIONS])
def test_mutation_writes_its_audit_event(rotated: SQLStore, mutation: Mutation) -> None:
    """``audit=`` writes the event with the mutation; the store numbers it."""
    mutation(rotated, EVENT)
    [event] = rotated.list_audit("acme")
    assert event == AuditEvent(**{**_fields(EVENT), "seq": event.seq})
    assert event.seq > 0


def _fields(event: AuditEvent) -> dict[str, Any]:
    return {
        name: getattr(event, name) for name in ("at", "org", "actor", "action", "target", "outcome", "client", "detail")
    }


FAILURES: list[tuple[str, Mutation]] = [
    ("org_exists", lambda s, a: s.create_org("acme", NOW, audit=a)),
    (
        "service_unknown_org",
        lambda s, a: s.set_service("nope", "wms", enabled=True, is_public=False, now=NOW, audit=a),
    ),
    ("visibility_unknown_org", lambda s, a: s.set_repo_visibility("nope", "era5", "public", NOW, audit=a)),
    ("key_unknown_org", lambda s, a: s.create_key(key_record(org="nope"), "t3", "h3", NOW, audit=a)),
    ("key_exists", lambda s, a: s.create_key(key_record(), "t3", "h3", NOW, audit=a)),
    ("token_id_taken", lambda s, a: s.create_key(key_record("bot"), "t1", "h3", NOW, audit=a)),
    (
        "rotate_unknown",
        lambda s, a: s.rotate_key(
            "acme", "ghost", token_id="t3", token_hash="h3", grace_end=NOW, expires_at=NOW, now=NOW, audit=a
        ),
    ),
    ("permissions_unknown", lambda s, a: s.set_permissions("acme", "ghost", frozenset(), {}, NOW, audit=a)),
    ("delete_unknown", lambda s, a: s.delete_key("acme", "ghost", NOW, audit=a)),
    ("end_grace_current_token", lambda s, a: s.end_grace("acme", "ci", "t2", NOW, NOW, audit=a)),
    ("end_grace_unknown_token", lambda s, a: s.end_grace("acme", "ci", "t9", NOW, NOW, audit=a)),
    ("end_grace_unknown_key", lambda s, a: s.end_grace("acme", "ghost", "t1", NOW, NOW, audit=a)),
    ("end_grace_unknown_org", lambda s, a: s.end_grace("nope", "ci", "t1", NOW, NOW, audit=a)),
]


@pytest.mark.parametrize("mutation", [m for _, m in FAILURES], ids=[n for n, _ in FAILURES])
def test_mutation_refused_changes_nothing(rotated: SQLStore, store_url: str, mutation: Mutation) -> None:
    """A refused mutation rolls back: no change appended, no row written, its audit event not either."""
    tables = ["orgs", "services", "repos", "keys", "tokens", "changes", "audit"]
    before = {table: raw(store_url, f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}  # noqa: S608
    with pytest.raises(InputError):
        mutation(rotated, EVENT)
    after = {table: raw(store_url, f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}  # noqa: S608
    assert after == before


# -- ending a grace -------------------------------------------------------------------


def test_end_grace_moves_the_end(rotated: SQLStore) -> None:
    """``end_grace`` sets a rotated-out token's end, earlier or later; the current token is untouched."""
    rotated.end_grace("acme", "ci", "t1", NOW + 7200, NOW + 10)
    assert {t.token_id: t.not_after for t in rotated.get_key("acme", "ci").tokens} == {"t1": NOW + 7200, "t2": None}
    rotated.end_grace("acme", "ci", "t1", NOW + 10, NOW + 10)
    credential = rotated.get_credential("t1")
    assert credential is not None
    assert credential.token.not_after == NOW + 10


@pytest.mark.parametrize(
    ("org", "name", "token_id", "error", "match"),
    [
        ("acme", "ci", "t2", InputError, "current token"),
        ("acme", "ci", "t9", NotFound, "no token t9 of key ci@acme"),
        ("acme", "bot", "t1", NotFound, "no token t1 of key bot@acme"),  # t1 is ci's, not bot's
        ("acme", "ghost", "t1", NotFound, "no key named ghost@acme"),
        ("nope", "ci", "t1", NotFound, "no org named 'nope'"),
    ],
)
def test_end_grace_refusals(
    rotated: SQLStore, org: str, name: str, token_id: str, error: type[Exception], match: str
) -> None:
    """A token that is not of that key is NotFound; the key's current token has no grace to end."""
    rotated.create_key(key_record("bot"), "t3", "hash-3", NOW)
    with pytest.raises(error, match=match):
        rotated.end_grace(org, name, token_id, NOW, NOW)


def test_rotate_records_when_a_token_was_rotated_out(rotated: SQLStore) -> None:
    """A token's ``rotated_at`` is the rotation that ended it, kept through later rotations."""
    rotated.rotate_key("acme", "ci", token_id="t3", token_hash="h3", grace_end=NOW + 100, expires_at=NOW, now=NOW + 50)
    tokens = {t.token_id: t.rotated_at for t in rotated.get_key("acme", "ci").tokens}
    assert tokens == {"t1": NOW, "t2": NOW + 50, "t3": None}


# -- the audit log ------------------------------------------------------------------------


def test_audit_append_numbers_and_lists_newest_first(store: SQLStore) -> None:
    """``append_audit`` returns the event with its number; ``list_audit`` gives the org's own, newest first."""
    first = store.append_audit(EVENT)
    second = store.append_audit(AuditEvent(NOW + 1, "acme", "ci@acme", "keys.create", "bot", "ok", client="192.0.2.1"))
    store.append_audit(AuditEvent(NOW + 2, "other", "cli", "orgs.create", "other", "ok"))
    assert 0 < first.seq < second.seq
    assert first == AuditEvent(**{**_fields(EVENT), "seq": first.seq})
    assert list(store.list_audit("acme")) == [second, first]
    assert [e.org for e in store.list_audit("other")] == ["other"]
    assert list(store.list_audit("nope")) == []


def test_audit_filters_and_pages(store: SQLStore) -> None:
    """Time (``since <= at < until``), actor and ``before_seq`` pages narrow the list; ``limit`` bounds it."""
    events = [
        store.append_audit(AuditEvent(NOW + i, "acme", "cli" if i % 2 else "ci@acme", "x", "t", "ok"))
        for i in range(10)
    ]
    seqs = [e.seq for e in events]
    assert [e.seq for e in store.list_audit("acme", limit=3)] == seqs[::-1][:3]
    page = store.list_audit("acme", limit=3, before_seq=seqs[7])
    assert [e.seq for e in page] == [seqs[6], seqs[5], seqs[4]]
    assert [e.at for e in store.list_audit("acme", since=NOW + 3, until=NOW + 6)] == [NOW + 5, NOW + 4, NOW + 3]
    assert {e.actor for e in store.list_audit("acme", actor="cli")} == {"cli"}
    assert len(store.list_audit("acme", actor="cli")) == 5
    assert [e.at for e in store.list_audit("acme", actor="ci@acme", since=NOW + 4, limit=2)] == [NOW + 8, NOW + 6]


# -- sharing the file ---------------------------------------------------------------


def test_second_store_writes_seen_by_first(acme: SQLStore, store_url: str) -> None:
    """Two stores on one file (the CLI and a running server) see each other's writes at once."""
    assert acme.get_credential("t1") is not None  # the first store has read before the writes
    other = opened(store_url)
    try:
        other.create_org("other", NOW)
        other.set_repo_visibility("acme", "era5", "public", NOW)
        other.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 5, expires_at=NOW, now=NOW)
        assert acme.org_exists("other")
        policy = acme.org_policy("acme")
        assert policy is not None
        assert policy.visibility("era5") == "public"
        old = acme.get_credential("t1")
        assert old is not None
        assert old.token.not_after == NOW + 5
        assert acme.get_credential("t2") is not None
        assert acme.last_change() == other.last_change()
        other.delete_key("acme", "ci", NOW)
        assert acme.get_credential("t1") is None
        assert acme.get_credential("t2") is None
        assert [c.kind for c in acme.changes_since(0)][-1] == "key"
    finally:
        other.close()


def test_second_store_sees_first_store_writes(acme: SQLStore, store_url: str) -> None:
    """Writes go both ways: a second store opened earlier sees later writes of the first."""
    other = opened(store_url)
    try:
        assert not other.org_exists("late")
        acme.create_org("late", NOW)
        assert other.org_exists("late")
        assert other.changes_since(0) == acme.changes_since(0)
    finally:
        other.close()


def test_store_shared_across_threads(acme: SQLStore) -> None:
    """Each thread gets its own connection; a write in one thread is read in another."""
    errors: list[BaseException] = []

    def write() -> None:
        try:
            acme.create_org("threaded", NOW)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    thread.join()
    assert errors == []
    assert acme.org_exists("threaded")


class _WriteBeforeTokens:
    """A transaction that lets another store write just before its first SELECT on tokens."""

    def __init__(self, tx: Transaction, write: Callable[[], None]) -> None:
        self._tx = tx
        self._write: Callable[[], None] | None = write

    def execute(self, sql: str, params: Any = ()) -> Any:
        if self._write is not None and "FROM tokens" in sql:
            write, self._write = self._write, None
            write()
        return self._tx.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


def test_get_key_reads_one_snapshot(acme: SQLStore, store_url: str) -> None:
    """A key and its tokens come from one snapshot even if another process writes in between."""
    other = opened(store_url)
    backend = acme._backend
    read = backend.read
    rotate = lambda: other.rotate_key(  # noqa: E731
        "acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW + 9 * DAY, now=NOW
    )

    @contextmanager
    def read_with_a_write_between(*, statements: int = 2) -> Iterator[Any]:
        with read(statements=statements) as tx:
            yield _WriteBeforeTokens(tx, rotate)

    try:
        # Reaches into the store's backend: the only way to place a write
        # between the two SELECTs of one call deterministically.
        backend.read = read_with_a_write_between  # type: ignore[method-assign]
        key = acme.get_key("acme", "ci")
        backend.read = read  # type: ignore[method-assign]
        assert key.expires_at == NOW + 365 * DAY
        assert [(t.token_id, t.not_after) for t in key.tokens] == [("t1", None)]
        # The next call sees the rotation.
        assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == ["t1", "t2"]
    finally:
        other.close()


def test_changes_are_plain_records(acme: SQLStore) -> None:
    """The change feed returns ``Change`` values with integer sequence numbers."""
    [change] = acme.changes_since(acme.last_change() - 1)
    assert isinstance(change, Change)
    assert isinstance(change.seq, int)
