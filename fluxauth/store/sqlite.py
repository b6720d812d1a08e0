"""The embedded store: one SQLite file in WAL mode, schema versioned by ``user_version``.

Each thread gets its own connection (SQLite connections are not shared across
threads); writes take ``BEGIN IMMEDIATE`` so that the command line and a running
server never interleave half a change.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast

from fluxauth.errors import Conflict, NotFound, StoreError, StoreUnavailable
from fluxauth.model import (
    Change,
    ChangeKind,
    Credential,
    KeyRecord,
    OrgPolicy,
    Permission,
    RepoAccess,
    ServiceRecord,
    TokenRecord,
    Visibility,
)

# Append only: a deployed database is at the version of the last entry it ran.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE orgs (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
    CREATE TABLE services (
        org TEXT NOT NULL REFERENCES orgs(name),
        protocol TEXT NOT NULL,
        enabled INTEGER NOT NULL,
        is_public INTEGER NOT NULL,
        PRIMARY KEY (org, protocol)
    );
    CREATE TABLE repos (
        org TEXT NOT NULL REFERENCES orgs(name),
        repo TEXT NOT NULL,
        visibility TEXT NOT NULL CHECK (visibility IN ('private', 'authenticated', 'public')),
        PRIMARY KEY (org, repo)
    );
    CREATE TABLE keys (
        org TEXT NOT NULL REFERENCES orgs(name),
        name TEXT NOT NULL,
        permissions TEXT NOT NULL,
        repo_grants TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        last_used_at REAL,
        PRIMARY KEY (org, name)
    );
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        key_name TEXT NOT NULL,
        hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        not_after REAL,
        FOREIGN KEY (org, key_name) REFERENCES keys(org, name) ON DELETE CASCADE
    );
    CREATE INDEX tokens_by_key ON tokens(org, key_name);
    CREATE TABLE changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        org TEXT NOT NULL,
        key_name TEXT,
        at REAL NOT NULL
    );
    """,
)


class SQLiteStore:
    """The ``Store`` on one SQLite file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._connect(create=True)  # the one place a new store file may be made
        self._migrate()

    # -- connections ---------------------------------------------------------

    def _connect(self, *, create: bool = False) -> sqlite3.Connection:
        """This thread's connection, checked against the file on disk at every call.

        An open connection would keep reading a file that was moved away or
        whose volume went missing; a stat (about a microsecond) tells, and the
        store then reports itself unavailable (503) instead of answering from a
        stale file. A replaced file gets a new connection.
        """
        try:
            stat = os.stat(self.path)
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except FileNotFoundError:
            if not create:
                self._drop_local()
                raise StoreUnavailable(f"the store file {self.path!r} is missing") from None
            identity = None
        except OSError as exc:
            self._drop_local()
            raise StoreUnavailable(f"cannot reach the store: {exc.strerror}") from exc
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if identity == getattr(self._local, "identity", None):
                return conn
            self._drop_local()
        directory = os.path.dirname(self.path)
        if directory and not os.path.isdir(directory):
            raise StoreUnavailable(f"store directory {directory!r} does not exist")
        # mode=rw: never create an empty store in place of a missing one.
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path)) + ("?mode=rwc" if create else "?mode=rw")
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5.0)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            stat = os.stat(self.path)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            raise StoreUnavailable(f"cannot open the store: {exc}") from exc
        self._local.conn = conn
        self._local.identity = (stat.st_dev, stat.st_ino)
        with self._lock:
            self._connections.append(conn)
        return conn

    def _drop_local(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        conn.close()

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every statement of one method sees the same snapshot.

        Without it each SELECT is a transaction of its own, and a method that reads
        twice (a key, then its tokens) could mix the states before and after a
        write by another process, e.g. a key's new expiry with its old tokens.
        """
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"store: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            # SQLite may have rolled back on its own (disk full, I/O error); a
            # second ROLLBACK would then raise and hide the first error.
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):  # locked, read-only, I/O: the store, not the input
                raise StoreUnavailable(f"store: {exc}") from exc
            raise
        else:
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreUnavailable(f"store: {exc}") from exc

    def _migrate(self) -> None:
        with self._write() as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                # Written by a newer fluxauth: this one would misread or damage it.
                raise StoreError(
                    f"store {self.path!r} has schema version {version}; this fluxauth knows up to {len(MIGRATIONS)}"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('cache_secret', ?)",
                (secrets.token_bytes(32),),
            )

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def cache_secret(self) -> bytes:
        with self._read() as conn:
            return bytes(conn.execute("SELECT value FROM meta WHERE name = 'cache_secret'").fetchone()[0])

    # -- orgs, services, repos ----------------------------------------------

    @staticmethod
    def _changed(conn: sqlite3.Connection, kind: ChangeKind, org: str, now: float, key: str | None = None) -> None:
        conn.execute("INSERT INTO changes (kind, org, key_name, at) VALUES (?, ?, ?, ?)", (kind, org, key, now))

    @staticmethod
    def _require_org(conn: sqlite3.Connection, org: str) -> None:
        if conn.execute("SELECT 1 FROM orgs WHERE name = ?", (org,)).fetchone() is None:
            raise NotFound(f"no org named {org!r}")

    def create_org(self, org: str, now: float) -> None:
        with self._write() as conn:
            try:
                conn.execute("INSERT INTO orgs (name, created_at) VALUES (?, ?)", (org, now))
            except sqlite3.IntegrityError:
                raise Conflict(f"org {org!r} exists already") from None
            self._changed(conn, "org", org, now)

    def org_exists(self, org: str) -> bool:
        with self._read() as conn:
            return conn.execute("SELECT 1 FROM orgs WHERE name = ?", (org,)).fetchone() is not None

    def set_service(self, org: str, protocol: str, *, enabled: bool, is_public: bool, now: float) -> None:
        with self._write() as conn:
            self._require_org(conn, org)
            conn.execute(
                "INSERT INTO services (org, protocol, enabled, is_public) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (org, protocol) DO UPDATE SET enabled = excluded.enabled, is_public = excluded.is_public",
                (org, protocol, enabled, is_public),
            )
            self._changed(conn, "service", org, now)

    def list_services(self, org: str) -> Sequence[ServiceRecord]:
        with self._read() as conn:
            self._require_org(conn, org)
            rows = conn.execute(
                "SELECT protocol, enabled, is_public FROM services WHERE org = ? ORDER BY protocol", (org,)
            ).fetchall()
        return [ServiceRecord(org, protocol, bool(enabled), bool(public)) for protocol, enabled, public in rows]

    def set_repo_visibility(self, org: str, repo: str, visibility: Visibility, now: float) -> None:
        with self._write() as conn:
            self._require_org(conn, org)
            conn.execute(
                "INSERT INTO repos (org, repo, visibility) VALUES (?, ?, ?)"
                " ON CONFLICT (org, repo) DO UPDATE SET visibility = excluded.visibility",
                (org, repo, visibility),
            )
            self._changed(conn, "repo", org, now)

    def org_policy(self, org: str) -> OrgPolicy | None:
        with self._read() as conn:
            if conn.execute("SELECT 1 FROM orgs WHERE name = ?", (org,)).fetchone() is None:
                return None
            services = conn.execute(
                "SELECT protocol, enabled, is_public FROM services WHERE org = ?", (org,)
            ).fetchall()
            repos = conn.execute("SELECT repo, visibility FROM repos WHERE org = ?", (org,)).fetchall()
        return OrgPolicy(
            org,
            {p: ServiceRecord(org, p, bool(e), bool(pub)) for p, e, pub in services},
            {repo: cast(Visibility, vis) for repo, vis in repos},
        )

    # -- keys and tokens -----------------------------------------------------

    def create_key(self, key: KeyRecord, token_id: str, token_hash: str, now: float) -> None:
        with self._write() as conn:
            self._require_org(conn, key.org)
            try:
                conn.execute(
                    "INSERT INTO keys (org, name, permissions, repo_grants, created_at, expires_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        key.org,
                        key.name,
                        json.dumps(sorted(key.permissions)),
                        json.dumps(dict(key.repo_grants), sort_keys=True),
                        key.created_at,
                        key.expires_at,
                    ),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"key {key.principal!r} exists already") from None
            self._insert_token(conn, key.org, key.name, token_id, token_hash, now)
            self._changed(conn, "key", key.org, now, key.name)

    @staticmethod
    def _insert_token(
        conn: sqlite3.Connection, org: str, name: str, token_id: str, token_hash: str, now: float
    ) -> None:
        conn.execute(
            "INSERT INTO tokens (token_id, org, key_name, hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (token_id, org, name, token_hash, now),
        )

    @staticmethod
    def _key(row: Sequence[Any], tokens: tuple[TokenRecord, ...] = ()) -> KeyRecord:
        org, name, permissions, grants, created, expires, last_used = row
        return KeyRecord(
            org=org,
            name=name,
            permissions=frozenset(cast(list[Permission], json.loads(permissions))),
            repo_grants=cast(dict[str, RepoAccess], json.loads(grants)),
            created_at=created,
            expires_at=expires,
            last_used_at=last_used,
            tokens=tokens,
        )

    _KEY_COLUMNS = "org, name, permissions, repo_grants, created_at, expires_at, last_used_at"
    _TOKEN_COLUMNS = "token_id, org, key_name, hash, created_at, not_after"

    def get_key(self, org: str, name: str) -> KeyRecord:
        with self._read() as conn:
            row = conn.execute(
                f"SELECT {self._KEY_COLUMNS} FROM keys WHERE org = ? AND name = ?", (org, name)
            ).fetchone()
            if row is None:
                self._require_org(conn, org)
                raise NotFound(f"no key named {name}@{org}")
            tokens = conn.execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE org = ? AND key_name = ? ORDER BY created_at",
                (org, name),
            ).fetchall()
        return self._key(row, tuple(TokenRecord(*token) for token in tokens))

    def list_keys(self, org: str) -> Sequence[KeyRecord]:
        with self._read() as conn:
            self._require_org(conn, org)
            rows = conn.execute(f"SELECT {self._KEY_COLUMNS} FROM keys WHERE org = ? ORDER BY name", (org,)).fetchall()
            tokens = conn.execute(
                f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE org = ? ORDER BY created_at", (org,)
            ).fetchall()
        by_key: dict[str, list[TokenRecord]] = {}
        for token in tokens:
            by_key.setdefault(token[2], []).append(TokenRecord(*token))
        return [self._key(row, tuple(by_key.get(row[1], ()))) for row in rows]

    def rotate_key(
        self,
        org: str,
        name: str,
        *,
        token_id: str,
        token_hash: str,
        grace_end: float,
        expires_at: float,
        now: float,
    ) -> None:
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE keys SET expires_at = ? WHERE org = ? AND name = ?", (expires_at, org, name)
            ).rowcount
            if not updated:
                self._require_org(conn, org)
                raise NotFound(f"no key named {name}@{org}")
            # Tokens whose grace is over are dropped; tokens already in a grace
            # period keep the earlier of the two ends.
            conn.execute("DELETE FROM tokens WHERE org = ? AND key_name = ? AND not_after <= ?", (org, name, now))
            conn.execute(
                "UPDATE tokens SET not_after = MIN(COALESCE(not_after, ?), ?) WHERE org = ? AND key_name = ?",
                (grace_end, grace_end, org, name),
            )
            self._insert_token(conn, org, name, token_id, token_hash, now)
            self._changed(conn, "key", org, now, name)

    def set_permissions(
        self,
        org: str,
        name: str,
        permissions: frozenset[Permission],
        repo_grants: Mapping[str, RepoAccess],
        now: float,
    ) -> None:
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE keys SET permissions = ?, repo_grants = ? WHERE org = ? AND name = ?",
                (json.dumps(sorted(permissions)), json.dumps(dict(repo_grants), sort_keys=True), org, name),
            ).rowcount
            if not updated:
                self._require_org(conn, org)
                raise NotFound(f"no key named {name}@{org}")
            self._changed(conn, "key", org, now, name)

    def delete_key(self, org: str, name: str, now: float) -> None:
        with self._write() as conn:
            if not conn.execute("DELETE FROM keys WHERE org = ? AND name = ?", (org, name)).rowcount:
                self._require_org(conn, org)
                raise NotFound(f"no key named {name}@{org}")
            self._changed(conn, "key", org, now, name)

    def get_credential(self, token_id: str) -> Credential | None:
        with self._read() as conn:
            token = conn.execute(f"SELECT {self._TOKEN_COLUMNS} FROM tokens WHERE token_id = ?", (token_id,)).fetchone()
            if token is None:
                return None
            key = conn.execute(
                f"SELECT {self._KEY_COLUMNS} FROM keys WHERE org = ? AND name = ?", (token[1], token[2])
            ).fetchone()
        return None if key is None else Credential(TokenRecord(*token), self._key(key))

    def touch_keys(self, last_used: Mapping[tuple[str, str], float]) -> None:
        if not last_used:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE org = ? AND name = ?",
                [(at, org, name) for (org, name), at in last_used.items()],
            )

    # -- change feed ---------------------------------------------------------

    def changes_since(self, seq: int, limit: int = 1000) -> Sequence[Change]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, kind, org, key_name, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [Change(*row) for row in rows]

    def last_change(self) -> int:
        with self._read() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
