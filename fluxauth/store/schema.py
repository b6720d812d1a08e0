"""The schema, versioned: one list of migrations for every database, and the one place they are run.

A migration is SQL that both SQLite and PostgreSQL read, with the few types
that differ between them left as ``{placeholders}`` for the backend to fill.
Entries are only ever appended, and each one only adds (tables, columns,
indexes): replicas still running the previous version keep working while the
first replica of the next one upgrades the store under them.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from fluxauth.errors import ConfigError
from fluxauth.store.backend import Backend, Table

# Append only: a deployed database is at the version of the last entry it ran.
MIGRATIONS: tuple[str, ...] = (
    # 1: the schema of the first release (SQLite only, then).
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value {blob} NOT NULL);
    CREATE TABLE orgs (name TEXT PRIMARY KEY, created_at {real} NOT NULL);
    CREATE TABLE services (
        org TEXT NOT NULL REFERENCES orgs(name),
        protocol TEXT NOT NULL,
        enabled {bool} NOT NULL,
        is_public {bool} NOT NULL,
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
        created_at {real} NOT NULL,
        expires_at {real} NOT NULL,
        last_used_at {real},
        PRIMARY KEY (org, name)
    );
    CREATE TABLE tokens (
        token_id TEXT PRIMARY KEY,
        org TEXT NOT NULL,
        key_name TEXT NOT NULL,
        hash TEXT NOT NULL,
        created_at {real} NOT NULL,
        not_after {real},
        FOREIGN KEY (org, key_name) REFERENCES keys(org, name) ON DELETE CASCADE
    );
    CREATE INDEX tokens_by_key ON tokens(org, key_name);
    CREATE TABLE changes (
        seq {serial},
        kind TEXT NOT NULL,
        org TEXT NOT NULL,
        key_name TEXT,
        at {real} NOT NULL
    );
    """,
    # 2: the audit log, and when a token was rotated out (the start of its
    # grace, which bounds how far the grace may be moved). Tokens rotated out
    # before this version get the creation time of the key's next token:
    # the moment of the rotation that ended them.
    """
    ALTER TABLE tokens ADD COLUMN rotated_at {real};
    UPDATE tokens SET rotated_at = COALESCE(
        (SELECT MIN(later.created_at) FROM tokens later
         WHERE later.org = tokens.org AND later.key_name = tokens.key_name AND later.created_at > tokens.created_at),
        created_at
    ) WHERE not_after IS NOT NULL;
    CREATE TABLE audit (
        seq {serial},
        at {real} NOT NULL,
        org TEXT NOT NULL,
        actor TEXT NOT NULL,
        client TEXT,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_org ON audit(org, seq);
    """,
)

VERSION = len(MIGRATIONS)


# In the order rows may be inserted (references first).
TABLES: tuple[Table, ...] = (
    Table("meta", ("name", "value"), blobs=("value",)),
    Table("orgs", ("name", "created_at")),
    Table("services", ("org", "protocol", "enabled", "is_public"), booleans=("enabled", "is_public")),
    Table("repos", ("org", "repo", "visibility")),
    Table("keys", ("org", "name", "permissions", "repo_grants", "created_at", "expires_at", "last_used_at")),
    Table("tokens", ("token_id", "org", "key_name", "hash", "created_at", "not_after", "rotated_at")),
    Table("changes", ("seq", "kind", "org", "key_name", "at"), serial="seq"),
    Table(
        "audit",
        ("seq", "at", "org", "actor", "client", "action", "target", "outcome", "detail"),
        serial="seq",
    ),
)


class SchemaTooNew(ConfigError):
    """The store was written by a newer fluxauth: this one would misread or damage it."""


def statements(script: str, types: Mapping[str, str]) -> list[str]:
    """The statements of one migration, with the backend's types filled in."""
    return [statement.strip() for statement in script.format_map(types).split(";") if statement.strip()]


def migrate(backend: Backend) -> None:
    """Create or upgrade the schema and make the cache secret, holding the store's write lock.

    Every process runs this when it opens the store. The lock (SQLite's
    ``BEGIN IMMEDIATE``, a PostgreSQL advisory lock) lets one of several that
    start at once do the work; the others wait for it, then find nothing to do.
    """
    with backend.write() as tx:
        version = backend.schema_version(tx)
        if version > VERSION:
            raise SchemaTooNew(
                f"store {backend.where} has schema version {version}, newer than this fluxauth's {VERSION}:"
                " run a newer fluxauth"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            for statement in statements(script, backend.types):
                tx.execute(statement)
            backend.set_schema_version(tx, number)
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('cache_secret', ?) ON CONFLICT (name) DO NOTHING",
            (secrets.token_bytes(32),),
        )
