"""Tests of the schema on both databases: creation, upgrades of stores with data in them, concurrent starts, URLs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from fluxauth.auth.hashing import TokenHasher
from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.tokens import new_token
from fluxauth.errors import ConfigError, StoreUnavailable
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.store import open_store
from fluxauth.store.schema import MIGRATIONS, VERSION, SchemaTooNew, statements
from fluxauth.store.sqlite import TYPES as SQLITE_TYPES
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import basic, http
from tests.store.test_store import NOW, raw
from tests.support.postgres import pg_rows
from tests.support.servers import ServerThread

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

TILE = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/0/0/0"


def schema_version(url: str) -> int:
    """The version the store's database records, read as another process would."""
    if url.startswith("postgresql://"):
        return int(pg_rows(url, "SELECT version FROM schema_version")[0][0])
    return int(raw(url, "PRAGMA user_version")[0][0])


def set_schema_version(url: str, version: int) -> None:
    if url.startswith("postgresql://"):
        pg_rows(url, "UPDATE schema_version SET version = %s", (version,))
    else:
        conn = sqlite3.connect(url)
        conn.execute(f"PRAGMA user_version = {version}")
        conn.close()


def test_migrate_new_store_at_latest_version(store_url: str) -> None:
    """An empty database gets every migration, and the version of the last one."""
    open_store(store_url).close()
    assert schema_version(store_url) == VERSION == len(MIGRATIONS)


def test_migrate_reopen_idempotent(store_url: str) -> None:
    """Opening an up-to-date store again changes neither the schema version nor the data."""
    store = open_store(store_url)
    store.create_org("acme", NOW)
    before = store.changes_since(0)
    secret = store.cache_secret()
    store.close()
    for _ in range(2):
        again = open_store(store_url)
        assert schema_version(store_url) == VERSION
        assert again.changes_since(0) == before
        assert again.cache_secret() == secret
        again.close()


def test_migrate_newer_schema_refused(store_url: str) -> None:
    """A store written by a newer fluxauth is refused with one line, a configuration error (exit 2)."""
    open_store(store_url).close()
    set_schema_version(store_url, VERSION + 1)
    with pytest.raises(SchemaTooNew) as refused:
        open_store(store_url)
    assert isinstance(refused.value, ConfigError)
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema version {VERSION + 1}, newer than this fluxauth's {VERSION}" in message


def test_migrate_wal_mode_on(tmp_path: Path) -> None:
    """A SQLite file is in WAL mode, so that readers and the one writer do not block each other."""
    path = str(tmp_path / "store.db")
    open_store(path).close()
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]


def test_open_missing_directory_unavailable(tmp_path: Path) -> None:
    """A SQLite store in a directory that does not exist is unavailable, not silently created."""
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


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://relative.db"])
def test_open_store_bad_sqlite_url_refused(url: str) -> None:
    """An empty path (a throw-away database) or two slashes are configuration errors."""
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store(url)


@pytest.mark.parametrize("url", ["mysql://admin:hunter2@db/fluxauth", "redis://127.0.0.1:6379/0", "HTTP://x/y"])
def test_open_store_unknown_scheme_names_the_supported_ones(url: str) -> None:
    """An unknown scheme is one line naming the schemes supported, never the URL's password."""
    with pytest.raises(ConfigError) as refused:
        open_store(url)
    message = str(refused.value)
    assert "unsupported store URL scheme" in message
    assert "sqlite:///PATH" in message
    assert "postgresql://" in message
    assert "postgres://" in message
    assert "hunter2" not in message
    assert "\n" not in message


def test_open_store_postgres_scheme_alias(pg_url: str) -> None:
    """``postgres://`` opens the same store as ``postgresql://``."""
    open_store(pg_url).create_org("acme", NOW)
    assert open_store(pg_url.replace("postgresql://", "postgres://", 1)).org_exists("acme")


def test_open_postgres_database_of_another_application_refused(pg_url: str) -> None:
    """A database that holds a table of the same name as one of fluxauth's is refused in one line."""
    pg_rows(pg_url, "CREATE TABLE orgs (id INTEGER)")
    with pytest.raises(ConfigError, match=r"not fluxauth's.*a database of its own") as refused:
        open_store(pg_url)
    assert "\n" not in str(refused.value)


# -- upgrading a store with data in it ------------------------------------------------


def write_first_release_store(path: str) -> dict[str, str]:
    """A SQLite file as the first release wrote it (schema version 1), with keys and a rotation; their tokens."""
    hasher = TokenHasher("cheapest")
    conn = sqlite3.connect(path)
    for statement in statements(MIGRATIONS[0], SQLITE_TYPES):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO meta VALUES ('cache_secret', ?)", (b"s" * 32,))
    conn.execute("INSERT INTO orgs VALUES ('acme', ?)", (NOW - 100,))
    conn.execute("INSERT INTO services VALUES ('acme', 'tiles', 1, 0)")
    conn.execute("INSERT INTO repos VALUES ('acme', 'public-data', 'public')")
    tokens: dict[str, str] = {}
    rows = [
        # name, token created, not_after (a rotated-out token has one)
        ("reader", "reader", NOW - 90, None),
        ("rotated", "rotated-old", NOW - 80, NOW + 3600),
        ("rotated", "rotated-new", NOW - 50, None),
    ]
    for name in ("reader", "rotated"):
        conn.execute(
            "INSERT INTO keys VALUES ('acme', ?, '[\"read\"]', '{}', ?, ?, NULL)", (name, NOW - 100, NOW + 86400)
        )
    for name, label, created, not_after in rows:
        parts, token = new_token()
        tokens[label] = token
        conn.execute(
            "INSERT INTO tokens VALUES (?, 'acme', ?, ?, ?, ?)",
            (parts.token_id, name, hasher.hash(parts.secret), created, not_after),
        )
    conn.execute("INSERT INTO changes (kind, org, key_name, at) VALUES ('org', 'acme', NULL, ?)", (NOW - 100,))
    conn.commit()
    conn.close()
    return tokens


def test_migrate_upgrades_first_release_store_every_key_works(tmp_path: Path, upstream: ServerThread) -> None:
    """A store of schema version 1 with data is upgraded on open; every token works through a server."""
    path = str(tmp_path / "old.db")
    tokens = write_first_release_store(path)
    clock = FakeClock(NOW)
    settings = Settings(store=path, upstream=upstream.url, argon2_profile="cheapest", rate_limit_delay=0.0)
    with ServerThread(FluxAuthApp(settings, SQLiteStore(path), clock=clock)) as server:
        assert schema_version(path) == VERSION
        for token in tokens.values():
            assert http.get(server.url + TILE, headers=basic("acme", token)).status_code == 200
    store = SQLiteStore(path)
    assert store.cache_secret() == b"s" * 32
    assert [c.seq for c in store.changes_since(0)] == [1]
    old, new = store.get_key("acme", "rotated").tokens
    # The grace of a token rotated out before the upgrade began when the next token was made.
    assert (old.not_after, old.rotated_at, new.rotated_at) == (NOW + 3600, NOW - 50, None)
    assert store.get_key("acme", "reader").tokens[0].rotated_at is None
    store.create_org("later", NOW)
    assert [c.seq for c in store.changes_since(0)] == [1, 2]


# -- starting at once ------------------------------------------------------------------


def test_migrate_three_processes_at_once_on_an_empty_store(store_url: str) -> None:
    """Three commands started together on an empty database all succeed: one creates the schema, two wait."""
    commands = [
        subprocess.Popen(
            [sys.executable, "-m", "fluxauth", "orgs", "create", f"org{i}", "--store", store_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    results = [(command.wait(timeout=60), command.stderr.read() if command.stderr else "") for command in commands]
    assert results == [(0, "")] * 3
    assert schema_version(store_url) == VERSION
    store = open_store(store_url)
    assert [store.org_exists(f"org{i}") for i in range(3)] == [True] * 3
    assert len(store.changes_since(0)) == 3
    store.close()


def test_migrate_waits_for_a_migration_in_progress(pg_url: str) -> None:
    """On PostgreSQL, a process that opens the store while another holds the write lock waits for it."""
    from fluxauth.store.postgres import WRITE_LOCK

    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        opener = subprocess.Popen(
            [sys.executable, "-m", "fluxauth", "orgs", "create", "acme", "--store", pg_url],
            stderr=subprocess.PIPE,
            text=True,
        )
        with pytest.raises(subprocess.TimeoutExpired):
            opener.wait(timeout=0.5)  # held up by the lock, not failing
        assert pg_rows(pg_url, "SELECT to_regclass('orgs')") == [(None,)]
    assert opener.wait(timeout=30) == 0, opener.stderr.read() if opener.stderr else ""
    assert open_store(pg_url).org_exists("acme")
