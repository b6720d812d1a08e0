"""The store, once, in SQL that SQLite and PostgreSQL both read.

``SQLStore`` holds every query; a ``Backend`` holds what differs between the
databases: connections, transactions and their locks, the few column types,
the schema version's home and the wake-up sent with a change. Statements are
written with ``?`` placeholders; the PostgreSQL backend turns them into ``%s``.

Every mutation takes the backend's write lock for its whole transaction, so
mutations are applied one at a time in the order of their change numbers: a
server that has read change N has seen every change before it. (With
PostgreSQL's sequences alone, a transaction that drew number 5 could commit
after one that drew 6, and a server that read 6 first would never see 5.)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, cast

from fluxauth.errors import Conflict, InputError, NotFound
from fluxauth.model import (
    AuditEvent,
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
from fluxauth.store.backend import Backend, Table, Transaction
from fluxauth.store.base import ChangeListener
from fluxauth.store.schema import TABLES, migrate

_KEY_COLUMNS = "org, name, permissions, repo_grants, created_at, expires_at, last_used_at"
_TOKEN_COLUMNS = "token_id, org, key_name, hash, created_at, not_after, rotated_at"
_AUDIT_COLUMNS = "at, org, actor, action, target, outcome, client, detail, seq"
# Tokens oldest first: by creation, and for tokens made in the same instant
# (a test's frozen clock), those rotated out before the one that is not.
_TOKEN_ORDER = "created_at, rotated_at IS NULL, rotated_at, token_id"


def _json_list(values: frozenset[Permission]) -> str:
    return json.dumps(sorted(values))


def _json_map(values: Mapping[str, RepoAccess]) -> str:
    return json.dumps(dict(values), sort_keys=True)


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


class SQLStore:
    """The ``Store`` over a ``Backend``; opening it creates or upgrades the schema."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        migrate(backend)

    @property
    def where(self) -> str:
        """The store, named for messages (never with a password)."""
        return self._backend.where

    def ping(self) -> None:
        with self._backend.read(statements=1) as tx:
            tx.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self._backend.close()

    def listener(self) -> ChangeListener | None:
        return self._backend.listener()

    def cache_secret(self) -> bytes:
        with self._backend.read(statements=1) as tx:
            return bytes(tx.execute("SELECT value FROM meta WHERE name = 'cache_secret'").fetchone()[0])

    # -- writing -------------------------------------------------------------

    def _changed(
        self, tx: Transaction, kind: ChangeKind, org: str, now: float, key: str | None, audit: AuditEvent | None
    ) -> None:
        """What every mutation ends with: its change, its audit event, the wake-up."""
        tx.execute("INSERT INTO changes (kind, org, key_name, at) VALUES (?, ?, ?, ?)", (kind, org, key, now))
        if audit is not None:
            self._audit(tx, audit)
        self._backend.announce(tx)

    @staticmethod
    def _audit(tx: Transaction, event: AuditEvent) -> int:
        row = tx.execute(
            "INSERT INTO audit (at, org, actor, client, action, target, outcome, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (event.at, event.org, event.actor, event.client, event.action, event.target, event.outcome, event.detail),
        ).fetchone()
        return int(row[0])

    @staticmethod
    def _require_org(tx: Transaction, org: str) -> None:
        if tx.execute("SELECT 1 FROM orgs WHERE name = ?", (org,)).fetchone() is None:
            raise NotFound(f"no org named {org!r}")

    def _missing_key(self, tx: Transaction, org: str, name: str) -> NotFound:
        """The NotFound for a key that is not there: naming the org if that is what is missing."""
        self._require_org(tx, org)
        return NotFound(f"no key named {name}@{org}")

    # -- orgs, services, repos ----------------------------------------------

    def create_org(self, org: str, now: float, *, audit: AuditEvent | None = None) -> None:
        with self._backend.write() as tx:
            # Looked up, not caught as a constraint violation (which would end a
            # PostgreSQL transaction): under the write lock nothing comes between.
            if tx.execute("SELECT 1 FROM orgs WHERE name = ?", (org,)).fetchone() is not None:
                raise Conflict(f"org {org!r} exists already")
            tx.execute("INSERT INTO orgs (name, created_at) VALUES (?, ?)", (org, now))
            self._changed(tx, "org", org, now, None, audit)

    def org_exists(self, org: str) -> bool:
        with self._backend.read(statements=1) as tx:
            return tx.execute("SELECT 1 FROM orgs WHERE name = ?", (org,)).fetchone() is not None

    def set_service(
        self, org: str, protocol: str, *, enabled: bool, is_public: bool, now: float, audit: AuditEvent | None = None
    ) -> None:
        with self._backend.write() as tx:
            self._require_org(tx, org)
            tx.execute(
                "INSERT INTO services (org, protocol, enabled, is_public) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (org, protocol) DO UPDATE SET enabled = excluded.enabled, is_public = excluded.is_public",
                (org, protocol, enabled, is_public),
            )
            self._changed(tx, "service", org, now, None, audit)

    def list_services(self, org: str) -> Sequence[ServiceRecord]:
        with self._backend.read() as tx:
            self._require_org(tx, org)
            rows = tx.execute(
                "SELECT protocol, enabled, is_public FROM services WHERE org = ? ORDER BY protocol", (org,)
            ).fetchall()
        return [ServiceRecord(org, protocol, bool(enabled), bool(public)) for protocol, enabled, public in rows]

    def set_repo_visibility(
        self, org: str, repo: str, visibility: Visibility, now: float, *, audit: AuditEvent | None = None
    ) -> None:
        with self._backend.write() as tx:
            self._require_org(tx, org)
            tx.execute(
                "INSERT INTO repos (org, repo, visibility) VALUES (?, ?, ?)"
                " ON CONFLICT (org, repo) DO UPDATE SET visibility = excluded.visibility",
                (org, repo, visibility),
            )
            self._changed(tx, "repo", org, now, None, audit)

    def org_policy(self, org: str) -> OrgPolicy | None:
        # One statement: one snapshot and, on PostgreSQL, one round trip on
        # the cold path. Flags come as 'y' or '' so that the three parts'
        # columns have one type in both databases.
        with self._backend.read(statements=1) as tx:
            rows = tx.execute(
                "SELECT 'org', name, '', '' FROM orgs WHERE name = ?"
                " UNION ALL SELECT 'service', protocol, CASE WHEN enabled THEN 'y' ELSE '' END,"
                " CASE WHEN is_public THEN 'y' ELSE '' END FROM services WHERE org = ?"
                " UNION ALL SELECT 'repo', repo, visibility, '' FROM repos WHERE org = ?",
                (org, org, org),
            ).fetchall()
        if not any(part == "org" for part, *_ in rows):
            return None
        return OrgPolicy(
            org,
            {name: ServiceRecord(org, name, a == "y", b == "y") for part, name, a, b in rows if part == "service"},
            {name: cast(Visibility, a) for part, name, a, _ in rows if part == "repo"},
        )

    # -- keys and tokens -----------------------------------------------------

    def create_key(
        self, key: KeyRecord, token_id: str, token_hash: str, now: float, *, audit: AuditEvent | None = None
    ) -> None:
        with self._backend.write() as tx:
            self._require_org(tx, key.org)
            if tx.execute("SELECT 1 FROM keys WHERE org = ? AND name = ?", (key.org, key.name)).fetchone():
                raise Conflict(f"key {key.principal!r} exists already")
            tx.execute(
                "INSERT INTO keys (org, name, permissions, repo_grants, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key.org,
                    key.name,
                    _json_list(key.permissions),
                    _json_map(key.repo_grants),
                    key.created_at,
                    key.expires_at,
                ),
            )
            self._insert_token(tx, key.org, key.name, token_id, token_hash, now)
            self._changed(tx, "key", key.org, now, key.name, audit)

    def _insert_token(self, tx: Transaction, org: str, name: str, token_id: str, token_hash: str, now: float) -> None:
        # Token ids are random (64 bits and more): a clash is a caller's bug or
        # a replayed id, and must not replace the token that holds it.
        if tx.execute("SELECT 1 FROM tokens WHERE token_id = ?", (token_id,)).fetchone() is not None:
            raise Conflict("a token with that id exists already")
        tx.execute(
            "INSERT INTO tokens (token_id, org, key_name, hash, created_at) VALUES (?, ?, ?, ?, ?)",
            (token_id, org, name, token_hash, now),
        )

    def get_key(self, org: str, name: str) -> KeyRecord:
        with self._backend.read() as tx:
            row = tx.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE org = ? AND name = ?", (org, name)).fetchone()
            if row is None:
                raise self._missing_key(tx, org, name)
            tokens = tx.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE org = ? AND key_name = ? ORDER BY {_TOKEN_ORDER}",
                (org, name),
            ).fetchall()
        return _key(row, tuple(TokenRecord(*token) for token in tokens))

    def list_keys(self, org: str) -> Sequence[KeyRecord]:
        with self._backend.read() as tx:
            self._require_org(tx, org)
            rows = tx.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE org = ? ORDER BY name", (org,)).fetchall()
            tokens = tx.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE org = ? ORDER BY {_TOKEN_ORDER}", (org,)
            ).fetchall()
        by_key: dict[str, list[TokenRecord]] = {}
        for token in tokens:
            by_key.setdefault(token[2], []).append(TokenRecord(*token))
        return [_key(row, tuple(by_key.get(row[1], ()))) for row in rows]

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
        audit: AuditEvent | None = None,
    ) -> None:
        """Add a token; tokens that were still valid end at ``grace_end``."""
        with self._backend.write() as tx:
            updated = tx.execute(
                "UPDATE keys SET expires_at = ? WHERE org = ? AND name = ?", (expires_at, org, name)
            ).rowcount
            if not updated:
                raise self._missing_key(tx, org, name)
            # Tokens whose grace is over are dropped; tokens already in a grace
            # period keep the earlier of the two ends, and their rotation time.
            tx.execute("DELETE FROM tokens WHERE org = ? AND key_name = ? AND not_after <= ?", (org, name, now))
            tx.execute(
                "UPDATE tokens SET"
                " not_after = CASE WHEN not_after IS NOT NULL AND not_after < ? THEN not_after ELSE ? END,"
                " rotated_at = COALESCE(rotated_at, ?)"
                " WHERE org = ? AND key_name = ?",
                (grace_end, grace_end, now, org, name),
            )
            self._insert_token(tx, org, name, token_id, token_hash, now)
            self._changed(tx, "key", org, now, name, audit)

    def end_grace(
        self, org: str, name: str, token_id: str, not_after: float, now: float, *, audit: AuditEvent | None = None
    ) -> None:
        """End a rotated-out token's grace at ``not_after`` (``now``: at once), or move its end.

        Bounds are the caller's to check (``TokenRecord.rotated_at`` is where
        the grace began). A token that is not of this key is NotFound; one that
        was never rotated out has no grace to end (InputError).
        """
        with self._backend.write() as tx:
            row = tx.execute(
                "SELECT not_after FROM tokens WHERE token_id = ? AND org = ? AND key_name = ?", (token_id, org, name)
            ).fetchone()
            if row is None:
                if tx.execute("SELECT 1 FROM keys WHERE org = ? AND name = ?", (org, name)).fetchone() is None:
                    raise self._missing_key(tx, org, name)
                raise NotFound(f"no token {token_id} of key {name}@{org}")
            if row[0] is None:
                raise InputError(f"token {token_id} of {name}@{org} is the key's current token: rotate the key first")
            tx.execute("UPDATE tokens SET not_after = ? WHERE token_id = ?", (not_after, token_id))
            self._changed(tx, "key", org, now, name, audit)

    def set_permissions(
        self,
        org: str,
        name: str,
        permissions: frozenset[Permission],
        repo_grants: Mapping[str, RepoAccess],
        now: float,
        *,
        audit: AuditEvent | None = None,
    ) -> None:
        with self._backend.write() as tx:
            updated = tx.execute(
                "UPDATE keys SET permissions = ?, repo_grants = ? WHERE org = ? AND name = ?",
                (_json_list(permissions), _json_map(repo_grants), org, name),
            ).rowcount
            if not updated:
                raise self._missing_key(tx, org, name)
            self._changed(tx, "key", org, now, name, audit)

    def delete_key(self, org: str, name: str, now: float, *, audit: AuditEvent | None = None) -> None:
        with self._backend.write() as tx:
            if not tx.execute("DELETE FROM keys WHERE org = ? AND name = ?", (org, name)).rowcount:
                raise self._missing_key(tx, org, name)
            self._changed(tx, "key", org, now, name, audit)

    def get_credential(self, token_id: str) -> Credential | None:
        # The cold path's other read: one statement, like org_policy.
        with self._backend.read(statements=1) as tx:
            row = tx.execute(
                "SELECT t.token_id, t.org, t.key_name, t.hash, t.created_at, t.not_after, t.rotated_at,"
                " k.org, k.name, k.permissions, k.repo_grants, k.created_at, k.expires_at, k.last_used_at"
                " FROM tokens t JOIN keys k ON k.org = t.org AND k.name = t.key_name WHERE t.token_id = ?",
                (token_id,),
            ).fetchone()
        return None if row is None else Credential(TokenRecord(*row[:7]), _key(row[7:]))

    def touch_keys(self, last_used: Mapping[tuple[str, str], float]) -> None:
        """Record ``last_used_at`` in one batch (no change is appended): it only moves forward."""
        if not last_used:
            return
        with self._backend.write() as tx:
            tx.executemany(
                "UPDATE keys SET last_used_at ="
                " CASE WHEN last_used_at IS NOT NULL AND last_used_at > ? THEN last_used_at ELSE ? END"
                " WHERE org = ? AND name = ?",
                [(at, at, org, name) for (org, name), at in sorted(last_used.items())],
            )

    # -- change feed ---------------------------------------------------------

    def changes_since(self, seq: int, limit: int = 1000) -> Sequence[Change]:
        with self._backend.read(statements=1) as tx:
            rows = tx.execute(
                "SELECT seq, kind, org, key_name, at FROM changes WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit)
            ).fetchall()
        return [Change(*row) for row in rows]

    def last_change(self) -> int:
        with self._backend.read(statements=1) as tx:
            return int(tx.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])

    # -- audit ----------------------------------------------------------------

    def append_audit(self, event: AuditEvent) -> AuditEvent:
        """Record an event that goes with no mutation (a refused attempt); returns it with its number.

        Events of mutations go in the mutation's own transaction, through the
        ``audit=`` argument of the mutating method: both are written or neither.
        """
        with self._backend.write() as tx:
            seq = self._audit(tx, event)
        return dataclasses.replace(event, seq=seq)

    def list_audit(
        self,
        org: str,
        *,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        before_seq: int | None = None,
        limit: int = 100,
    ) -> Sequence[AuditEvent]:
        """An org's events, newest first, at most ``limit``.

        Filters: ``since <= at < until``, by ``actor``; the next page is the
        one ``before_seq`` the last ``seq`` of this one.
        """
        conditions = ["org = ?"]
        params: list[Any] = [org]
        for condition, value in (("at >= ?", since), ("at < ?", until), ("actor = ?", actor), ("seq < ?", before_seq)):
            if value is not None:
                conditions.append(condition)
                params.append(value)
        with self._backend.read(statements=1) as tx:
            rows = tx.execute(
                f"SELECT {_AUDIT_COLUMNS} FROM audit WHERE {' AND '.join(conditions)} ORDER BY seq DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
        return [AuditEvent(*row) for row in rows]

    # -- copying whole stores -----------------------------------------------------

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, from one snapshot, in ``TABLES`` order."""
        with self._backend.read(statements=len(TABLES)) as tx:
            return {table.name: [tuple(row) for row in tx.execute(_select_all(table)).fetchall()] for table in TABLES}

    def is_empty(self) -> bool:
        """Whether the store holds nothing but its own cache secret."""
        with self._backend.read(statements=len(TABLES)) as tx:
            return not any(
                tx.execute(f"SELECT 1 FROM {table.name} LIMIT 1").fetchone() for table in TABLES if table.name != "meta"
            )

    def load(self, rows: Mapping[str, Sequence[Sequence[Any]]]) -> None:
        """Write ``dump()``'s rows into this store in one transaction, if it is empty; otherwise Conflict.

        The target's own cache secret is replaced by the source's, so that
        both key their caches alike; numbered rows keep their numbers and the
        numbering continues after them.
        """
        with self._backend.write() as tx:
            for table in TABLES:
                if table.name != "meta" and tx.execute(f"SELECT 1 FROM {table.name} LIMIT 1").fetchone():
                    raise Conflict(f"store {self.where} is not empty (it has {table.name})")
            tx.execute("DELETE FROM meta")
            for table in TABLES:
                if rows.get(table.name):
                    tx.executemany(_insert_all(table), [_convert(table, row) for row in rows[table.name]])
            self._backend.continue_sequences(tx, [table for table in TABLES if table.serial])
            self._backend.announce(tx)


def _select_all(table: Table) -> str:
    return f"SELECT {', '.join(table.columns)} FROM {table.name} ORDER BY {table.columns[0]}"


def _insert_all(table: Table) -> str:
    marks = ", ".join("?" for _ in table.columns)
    return f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES ({marks})"


def _convert(table: Table, row: Sequence[Any]) -> tuple[Any, ...]:
    """One row as the target takes it: flags as booleans, blobs as bytes (SQLite gives 0/1 and memoryview-likes)."""
    values = dict(zip(table.columns, row, strict=True))
    for column in table.booleans:
        values[column] = bool(values[column])
    for column in table.blobs:
        values[column] = bytes(values[column])
    return tuple(values.values())
