"""Tests for the embedded SQLite store: schema, records, rotation, the change feed, sharing one file."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fluxauth.errors import ConfigError, Conflict, NotFound, StoreError, StoreUnavailable
from fluxauth.model import Change, KeyRecord, Permission, RepoAccess
from fluxauth.store import open_store
from fluxauth.store.sqlite import MIGRATIONS, SQLiteStore

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


def raw(path: str, sql: str) -> list[Any]:
    """Rows of ``sql`` read over a connection of its own, as another process would see them."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "store.db")


@pytest.fixture
def store(db_path: str) -> Iterator[SQLiteStore]:
    store = SQLiteStore(db_path)
    yield store
    store.close()


@pytest.fixture
def acme(store: SQLiteStore) -> SQLiteStore:
    """The store with org ``acme`` and key ``ci@acme`` (token ``t1``)."""
    store.create_org("acme", NOW)
    store.create_key(key_record(), "t1", "hash-1", NOW)
    return store


# -- schema ------------------------------------------------------------------


def test_migrate_fresh_file_at_latest_version(store: SQLiteStore, db_path: str) -> None:
    """A new file is migrated to the last entry of MIGRATIONS."""
    assert raw(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_migrate_reopen_idempotent(acme: SQLiteStore, db_path: str) -> None:
    """Opening an up-to-date file again changes neither the schema version nor the data."""
    before = acme.changes_since(0)
    acme.close()
    for _ in range(2):
        again = SQLiteStore(db_path)
        assert raw(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
        assert again.changes_since(0) == before
        assert again.get_key("acme", "ci").tokens[0].token_id == "t1"
        again.close()


def test_migrate_wal_mode_on(store: SQLiteStore, db_path: str) -> None:
    """The file is in WAL mode, so that readers and the one writer do not block each other."""
    assert raw(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_migrate_newer_schema_refused(db_path: str) -> None:
    """A file written by a newer fluxauth (higher user_version) is not opened."""
    SQLiteStore(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(db_path)


def test_open_missing_directory_unavailable(tmp_path: Path) -> None:
    """A store in a directory that does not exist is unavailable, not silently created."""
    with pytest.raises(StoreUnavailable, match="does not exist"):
        SQLiteStore(str(tmp_path / "missing" / "store.db"))


@pytest.mark.parametrize("prefix", ["", "sqlite:///"])
def test_open_store_url_forms(tmp_path: Path, prefix: str) -> None:
    """``open_store`` takes a plain path or ``sqlite:///PATH`` (absolute with four slashes)."""
    path = tmp_path / "url.db"
    store = open_store(prefix + str(path))
    store.create_org("acme", NOW)
    store.close()
    assert SQLiteStore(str(path)).org_exists("acme")


@pytest.mark.parametrize("url", ["postgres://db/fluxauth", "sqlite:///", "sqlite://relative.db"])
def test_open_store_unsupported_url_refused(url: str) -> None:
    """Other schemes and an empty path (a throw-away database) are configuration errors."""
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store(url)


def test_cache_secret_stable_across_opens(store: SQLiteStore, db_path: str, tmp_path: Path) -> None:
    """The cache secret is 32 random bytes, made once per file and the same for every opener."""
    secret = store.cache_secret()
    assert isinstance(secret, bytes)
    assert len(secret) == 32
    store.close()
    assert SQLiteStore(db_path).cache_secret() == secret
    assert SQLiteStore(str(tmp_path / "other.db")).cache_secret() != secret


def test_close_reopens_on_next_use(acme: SQLiteStore) -> None:
    """A closed store reconnects when used again (the CLI and app close it at shutdown)."""
    acme.close()
    assert acme.org_exists("acme")
    acme.ping()


# -- orgs, services, repos ----------------------------------------------------


def test_org_create_exists(store: SQLiteStore) -> None:
    """A created org exists; others do not."""
    assert not store.org_exists("acme")
    store.create_org("acme", NOW)
    assert store.org_exists("acme")
    assert not store.org_exists("other")


def test_org_create_twice_conflict(store: SQLiteStore) -> None:
    """Creating an org that exists raises Conflict."""
    store.create_org("acme", NOW)
    with pytest.raises(Conflict, match="acme"):
        store.create_org("acme", NOW + 1)


def test_service_set_upserts_and_lists(store: SQLiteStore) -> None:
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


def test_service_unknown_org_not_found(store: SQLiteStore) -> None:
    """Services of an org that does not exist are NotFound, for writing and listing."""
    with pytest.raises(NotFound, match="nope"):
        store.set_service("nope", "tiles", enabled=True, is_public=False, now=NOW)
    with pytest.raises(NotFound, match="nope"):
        store.list_services("nope")


def test_repo_visibility_set_and_update(store: SQLiteStore) -> None:
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


def test_repo_visibility_unknown_org_not_found(store: SQLiteStore) -> None:
    """Setting a visibility in an org that does not exist is NotFound."""
    with pytest.raises(NotFound, match="nope"):
        store.set_repo_visibility("nope", "era5", "public", NOW)


def test_org_policy_services_and_repos(store: SQLiteStore) -> None:
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


def test_org_policy_unknown_org_none(store: SQLiteStore) -> None:
    """An org that does not exist has no policy (None), which the decision turns into 404."""
    assert store.org_policy("nope") is None


def test_org_policy_new_org_empty(store: SQLiteStore) -> None:
    """A new org has no services and every repo private."""
    store.create_org("acme", NOW)
    policy = store.org_policy("acme")
    assert policy is not None
    assert dict(policy.services) == {}
    assert policy.visibility("era5") == "private"


# -- keys and tokens ------------------------------------------------------------


def test_key_create_get_round_trip(store: SQLiteStore) -> None:
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


def test_key_create_duplicate_conflict(acme: SQLiteStore) -> None:
    """A second key with the same name in the org is a Conflict; its token is not added."""
    with pytest.raises(Conflict, match="ci@acme"):
        acme.create_key(key_record(), "t2", "hash-2", NOW)
    assert acme.get_credential("t2") is None
    assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == ["t1"]


def test_key_same_name_other_org_allowed(acme: SQLiteStore) -> None:
    """Key names are unique per org, not globally."""
    acme.create_org("other", NOW)
    acme.create_key(key_record(org="other"), "t2", "hash-2", NOW)
    assert acme.get_key("other", "ci").tokens[0].token_id == "t2"
    assert acme.get_key("acme", "ci").tokens[0].token_id == "t1"


def test_key_create_unknown_org_not_found(store: SQLiteStore) -> None:
    """A key in an org that does not exist is NotFound."""
    with pytest.raises(NotFound, match="nope"):
        store.create_key(key_record(org="nope"), "t1", "hash-1", NOW)


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_key_get_missing_not_found(acme: SQLiteStore, org: str, name: str, match: str) -> None:
    """An unknown key, or a key of an unknown org, is NotFound naming what is missing."""
    with pytest.raises(NotFound, match=match):
        acme.get_key(org, name)


def test_key_list_sorted_with_tokens(acme: SQLiteStore) -> None:
    """``list_keys`` returns the org's keys by name, each with its own tokens only."""
    acme.create_key(key_record("alpha"), "t2", "hash-2", NOW)
    acme.rotate_key("acme", "alpha", token_id="t3", token_hash="hash-3", grace_end=NOW + 60, expires_at=NOW, now=NOW)
    acme.create_org("other", NOW)
    acme.create_key(key_record("beta", org="other"), "t4", "hash-4", NOW)
    keys = acme.list_keys("acme")
    assert [k.name for k in keys] == ["alpha", "ci"]
    assert [t.token_id for t in keys[0].tokens] == ["t2", "t3"]
    assert [t.token_id for t in keys[1].tokens] == ["t1"]


def test_key_list_unknown_org_not_found(store: SQLiteStore) -> None:
    """Listing the keys of an org that does not exist is NotFound, not an empty list."""
    with pytest.raises(NotFound, match="nope"):
        store.list_keys("nope")


def test_key_list_empty_org(store: SQLiteStore) -> None:
    """An org without keys lists none."""
    store.create_org("acme", NOW)
    assert list(store.list_keys("acme")) == []


def test_rotate_sets_grace_and_adds_token(acme: SQLiteStore) -> None:
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


def test_rotate_keeps_earlier_grace_end(acme: SQLiteStore) -> None:
    """A token already in its grace period keeps the earlier end when the key is rotated again."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 100, expires_at=NOW, now=NOW)
    acme.rotate_key("acme", "ci", token_id="t3", token_hash="h3", grace_end=NOW + 5000, expires_at=NOW, now=NOW + 10)
    ends = {t.token_id: t.not_after for t in acme.get_key("acme", "ci").tokens}
    assert ends == {"t1": NOW + 100, "t2": NOW + 5000, "t3": None}


def test_rotate_shorter_grace_shortens(acme: SQLiteStore) -> None:
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
def test_rotate_prunes_tokens_past_grace(acme: SQLiteStore, db_path: str, rotate_at: float, kept: list[str]) -> None:
    """Tokens whose grace ended by the time of a rotation are deleted from the file."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + 100, expires_at=NOW, now=NOW)
    acme.rotate_key(
        "acme", "ci", token_id="t3", token_hash="h3", grace_end=rotate_at + 50, expires_at=NOW, now=rotate_at
    )
    assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == kept
    assert sorted(row[0] for row in raw(db_path, "SELECT token_id FROM tokens")) == kept
    assert (acme.get_credential("t1") is not None) == ("t1" in kept)


def test_rotate_zero_grace_ends_old_token_now(acme: SQLiteStore) -> None:
    """A grace of 0 s ends the old token at the moment of rotation."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW)
    credential = acme.get_credential("t1")
    assert credential is not None
    assert credential.token.not_after == NOW


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_rotate_missing_not_found(acme: SQLiteStore, org: str, name: str, match: str) -> None:
    """Rotating an unknown key is NotFound and adds no token."""
    with pytest.raises(NotFound, match=match):
        acme.rotate_key(org, name, token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW)
    assert acme.get_credential("t2") is None
    assert acme.get_key("acme", "ci").tokens[0].not_after is None


def test_set_permissions_replaces(acme: SQLiteStore) -> None:
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
def test_set_permissions_missing_not_found(acme: SQLiteStore, org: str, name: str, match: str) -> None:
    """Changing the permissions of an unknown key is NotFound."""
    with pytest.raises(NotFound, match=match):
        acme.set_permissions(org, name, frozenset({"write"}), {}, NOW)


def test_delete_cascades_tokens(acme: SQLiteStore, db_path: str) -> None:
    """Deleting a key deletes every token of it: no credential is found any more."""
    acme.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW + DAY, expires_at=NOW, now=NOW)
    acme.delete_key("acme", "ci", NOW + 1)
    assert acme.get_credential("t1") is None
    assert acme.get_credential("t2") is None
    assert raw(db_path, "SELECT COUNT(*) FROM tokens") == [(0,)]
    with pytest.raises(NotFound):
        acme.get_key("acme", "ci")
    assert list(acme.list_keys("acme")) == []


def test_delete_then_recreate_old_token_dead(acme: SQLiteStore) -> None:
    """A key recreated under the same name does not bring back the deleted key's tokens."""
    acme.delete_key("acme", "ci", NOW)
    acme.create_key(key_record(), "t9", "hash-9", NOW)
    assert acme.get_credential("t1") is None
    assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == ["t9"]


@pytest.mark.parametrize(
    ("org", "name", "match"),
    [("acme", "ghost", "ghost@acme"), ("nope", "ci", "nope")],
)
def test_delete_missing_not_found(acme: SQLiteStore, org: str, name: str, match: str) -> None:
    """Deleting an unknown key is NotFound."""
    with pytest.raises(NotFound, match=match):
        acme.delete_key(org, name, NOW)


def test_get_credential_joins_key_and_token(acme: SQLiteStore) -> None:
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


def test_get_credential_unknown_none(acme: SQLiteStore) -> None:
    """An unknown token id gives None (the gate then spends a decoy verification)."""
    assert acme.get_credential("0123456789abcdef") is None
    assert acme.get_credential("") is None


def test_touch_keys_moves_forward_only(acme: SQLiteStore) -> None:
    """``last_used_at`` only moves forward, in one batch, and appends no change."""
    acme.create_key(key_record("bot"), "t2", "hash-2", NOW)
    seq = acme.last_change()
    acme.touch_keys({("acme", "ci"): NOW + 50, ("acme", "bot"): NOW + 10})
    acme.touch_keys({("acme", "ci"): NOW + 20, ("acme", "bot"): NOW + 30})
    assert acme.get_key("acme", "ci").last_used_at == NOW + 50
    assert acme.get_key("acme", "bot").last_used_at == NOW + 30
    assert acme.last_change() == seq
    assert list(acme.changes_since(seq)) == []


def test_touch_keys_unknown_and_empty_ignored(acme: SQLiteStore) -> None:
    """Touching a key deleted meanwhile, or nothing, is no error (the flush is best effort)."""
    acme.touch_keys({})
    acme.touch_keys({("acme", "ghost"): NOW, ("nope", "ci"): NOW})
    assert acme.get_key("acme", "ci").last_used_at is None


# -- change feed ------------------------------------------------------------------


def test_changes_since_every_mutation_in_order(store: SQLiteStore) -> None:
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


def test_changes_since_seq_and_limit(store: SQLiteStore) -> None:
    """``changes_since(seq)`` returns only later changes, at most ``limit`` of them."""
    assert store.last_change() == 0
    assert list(store.changes_since(0)) == []
    for index in range(5):
        store.create_org(f"org{index}", NOW + index)
    everything = store.changes_since(0)
    assert [c.org for c in store.changes_since(everything[1].seq)] == ["org2", "org3", "org4"]
    assert [c.org for c in store.changes_since(0, limit=2)] == ["org0", "org1"]
    assert list(store.changes_since(everything[-1].seq)) == []


Mutation = Callable[[SQLiteStore], None]

MUTATIONS: list[tuple[str, Mutation, tuple[str, str | None]]] = [
    ("create_org", lambda s: s.create_org("other", NOW), ("org", None)),
    (
        "enable_service",
        lambda s: s.set_service("acme", "wms", enabled=True, is_public=True, now=NOW),
        ("service", None),
    ),
    (
        "disable_service",
        lambda s: s.set_service("acme", "wms", enabled=False, is_public=False, now=NOW),
        ("service", None),
    ),
    ("visibility", lambda s: s.set_repo_visibility("acme", "era5", "authenticated", NOW), ("repo", None)),
    ("create_key", lambda s: s.create_key(key_record("bot"), "t2", "h2", NOW), ("key", "bot")),
    (
        "rotate_key",
        lambda s: s.rotate_key("acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW),
        ("key", "ci"),
    ),
    ("set_permissions", lambda s: s.set_permissions("acme", "ci", frozenset(), {"x": "read"}, NOW), ("key", "ci")),
    ("delete_key", lambda s: s.delete_key("acme", "ci", NOW), ("key", "ci")),
]


@pytest.mark.parametrize(("mutation", "expected"), [(m, e) for _, m, e in MUTATIONS], ids=[n for n, _, _ in MUTATIONS])
def test_mutation_appends_exactly_one_change(acme: SQLiteStore, mutation: Mutation, expected: tuple[str, str]) -> None:
    """Every mutation appends one change, no more, in the same transaction."""
    seq = acme.last_change()
    mutation(acme)
    [change] = acme.changes_since(seq)
    assert (change.kind, change.key_name) == expected
    assert change.at == NOW


FAILURES: list[tuple[str, Mutation]] = [
    ("org_exists", lambda s: s.create_org("acme", NOW)),
    ("service_unknown_org", lambda s: s.set_service("nope", "wms", enabled=True, is_public=False, now=NOW)),
    ("visibility_unknown_org", lambda s: s.set_repo_visibility("nope", "era5", "public", NOW)),
    ("key_unknown_org", lambda s: s.create_key(key_record(org="nope"), "t2", "h2", NOW)),
    ("key_exists", lambda s: s.create_key(key_record(), "t2", "h2", NOW)),
    (
        "rotate_unknown",
        lambda s: s.rotate_key("acme", "ghost", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW, now=NOW),
    ),
    ("permissions_unknown", lambda s: s.set_permissions("acme", "ghost", frozenset(), {}, NOW)),
    ("delete_unknown", lambda s: s.delete_key("acme", "ghost", NOW)),
]


@pytest.mark.parametrize("mutation", [m for _, m in FAILURES], ids=[n for n, _ in FAILURES])
def test_mutation_refused_changes_nothing(acme: SQLiteStore, db_path: str, mutation: Mutation) -> None:
    """A refused mutation rolls back: no change appended, no row written."""
    tables = ["orgs", "services", "repos", "keys", "tokens", "changes"]
    before = {table: raw(db_path, f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}  # noqa: S608
    with pytest.raises((NotFound, Conflict)):
        mutation(acme)
    after = {table: raw(db_path, f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}  # noqa: S608
    assert after == before


# -- sharing the file ---------------------------------------------------------------


def test_second_store_writes_seen_by_first(acme: SQLiteStore, db_path: str) -> None:
    """Two stores on one file (the CLI and a running server) see each other's writes at once."""
    assert acme.get_credential("t1") is not None  # the first store has read before the writes
    other = SQLiteStore(db_path)
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


def test_second_store_sees_first_store_writes(acme: SQLiteStore, db_path: str) -> None:
    """Writes go both ways: a second store opened earlier sees later writes of the first."""
    other = SQLiteStore(db_path)
    try:
        assert not other.org_exists("late")
        acme.create_org("late", NOW)
        assert other.org_exists("late")
        assert other.changes_since(0) == acme.changes_since(0)
    finally:
        other.close()


def test_store_shared_across_threads(acme: SQLiteStore) -> None:
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
    """A connection that lets another store write just before the first SELECT on tokens."""

    def __init__(self, conn: sqlite3.Connection, write: Callable[[], None]) -> None:
        self._conn = conn
        self._write: Callable[[], None] | None = write

    def execute(self, sql: str, parameters: Any = ()) -> sqlite3.Cursor:
        if self._write is not None and "FROM tokens" in sql:
            write, self._write = self._write, None
            write()
        return self._conn.execute(sql, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_get_key_reads_one_snapshot(acme: SQLiteStore, db_path: str) -> None:
    """A key and its tokens come from one snapshot even if another process writes in between."""
    other = SQLiteStore(db_path)
    try:
        # Reaches into the store's connection: the only way to place a write
        # between the two SELECTs of one call deterministically.
        acme._local.conn = _WriteBeforeTokens(
            acme._connect(),
            lambda: other.rotate_key(
                "acme", "ci", token_id="t2", token_hash="h2", grace_end=NOW, expires_at=NOW + 9 * DAY, now=NOW
            ),
        )
        key = acme.get_key("acme", "ci")
        assert key.expires_at == NOW + 365 * DAY
        assert [(t.token_id, t.not_after) for t in key.tokens] == [("t1", None)]
        # The next call sees the rotation.
        assert [t.token_id for t in acme.get_key("acme", "ci").tokens] == ["t1", "t2"]
    finally:
        other.close()


def test_changes_are_plain_records(acme: SQLiteStore) -> None:
    """The change feed returns ``Change`` values with integer sequence numbers."""
    [change] = acme.changes_since(acme.last_change() - 1)
    assert isinstance(change, Change)
    assert isinstance(change.seq, int)
