"""The store's share of the cold path: ``org_policy`` + ``get_credential``, as a new token's first request reads them.

Measures fluxauth's store on SQLite and on PostgreSQL (a database of its own,
created and dropped), in process, one call after the other. ``--sqlalchemy``
adds the same two reads through SQLAlchemy Core (psycopg 3 driver for
PostgreSQL; ``pip install sqlalchemy`` first, it is not a dependency): the
measurement behind choosing plain psycopg for the store.

    .venv/bin/python loadtests/store_cold_path.py [--calls 3000] [--sqlalchemy]

The argon2 verification that follows these reads on the real cold path takes
far longer (tens to hundreds of milliseconds with the default profile); this
isolates the part the store decides.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from fluxauth.store import KeyRecord, open_store
from fluxauth.store.base import Store

ADMIN_URL = os.environ.get("FLUXAUTH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
ORGS, KEYS = 20, 100


def fill(store: Store) -> None:
    for o in range(ORGS):
        org = f"org{o}"
        store.create_org(org, 1.0)
        for protocol in ("tiles", "wms", "edr", "zarr", "dap2"):
            store.set_service(org, protocol, enabled=True, is_public=False, now=1.0)
        for r in range(10):
            store.set_repo_visibility(org, f"repo{r}", "private", 1.0)
        for k in range(KEYS):
            key = KeyRecord(org, f"k{k}", frozenset({"read"}), {}, 1.0, 2e9, None)
            store.create_key(key, f"t{o}-{k}", "$argon2id$v=19$m=65536,t=3,p=4$" + "x" * 60, 1.0)


def measure(label: str, cold: Callable[[str, str], Any], calls: int) -> None:
    ids = [(f"t{i % ORGS}-{i % KEYS}", f"org{i % ORGS}") for i in range(calls)]
    for token_id, org in ids[:200]:  # warm: connections, prepared statements
        cold(token_id, org)
    times = []
    for token_id, org in ids:
        started = time.perf_counter()
        cold(token_id, org)
        times.append(time.perf_counter() - started)
    times.sort()
    print(
        f"{label:44} median {statistics.median(times) * 1e6:6.0f} us"
        f"  p90 {times[int(0.9 * calls)] * 1e6:6.0f}  p99 {times[int(0.99 * calls)] * 1e6:6.0f}"
    )


def fluxauth_store(url: str) -> Callable[[str, str], Any]:
    store = open_store(url)

    def cold(token_id: str, org: str) -> None:
        assert store.org_policy(org) is not None
        assert store.get_credential(token_id) is not None

    return cold


def sqlalchemy_core(url: str) -> Callable[[str, str], Any]:
    """The same two reads, statement for statement, through SQLAlchemy Core."""
    import sqlalchemy as sa

    # Tuned as fluxauth's own store is: single statements in autocommit (no
    # BEGIN, no ROLLBACK when the connection goes back to the pool).
    engine = sa.create_engine(url, pool_size=4, max_overflow=0, isolation_level="AUTOCOMMIT", pool_reset_on_return=None)
    meta = sa.MetaData()
    meta.reflect(engine, only=["orgs", "services", "repos", "keys", "tokens"])
    orgs, services, repos, keys, tokens = (meta.tables[n] for n in ("orgs", "services", "repos", "keys", "tokens"))
    flag = lambda column: sa.case((column, "y"), else_="")  # noqa: E731
    policy = sa.union_all(
        sa.select(sa.literal("org"), orgs.c.name, sa.literal(""), sa.literal("")).where(
            orgs.c.name == sa.bindparam("o1")
        ),
        sa.select(
            sa.literal("service"), services.c.protocol, flag(services.c.enabled), flag(services.c.is_public)
        ).where(services.c.org == sa.bindparam("o2")),
        sa.select(sa.literal("repo"), repos.c.repo, repos.c.visibility, sa.literal("")).where(
            repos.c.org == sa.bindparam("o3")
        ),
    )
    credential = (
        sa.select(tokens, keys)
        .join(keys, sa.and_(keys.c.org == tokens.c.org, keys.c.name == tokens.c.key_name))
        .where(tokens.c.token_id == sa.bindparam("t"))
    )

    def cold(token_id: str, org: str) -> None:
        with engine.connect() as conn:
            assert conn.execute(policy, {"o1": org, "o2": org, "o3": org}).all()
        with engine.connect() as conn:
            assert conn.execute(credential, {"t": token_id}).one()

    return cold


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--sqlalchemy", action="store_true", help="also through SQLAlchemy Core")
    args = parser.parse_args()
    name = f"fluxauth_cold_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        pg_url = f"{ADMIN_URL.rpartition('/')[0]}/{name}"
        with tempfile.TemporaryDirectory() as directory:
            sqlite_path = str(Path(directory) / "store.db")
            for url in (pg_url, sqlite_path):
                store = open_store(url)
                fill(store)
                store.close()
            runs: list[tuple[str, Callable[[], Callable[[str, str], Any]]]] = [
                ("fluxauth store, PostgreSQL (psycopg 3)", lambda: fluxauth_store(pg_url)),
                ("fluxauth store, SQLite", lambda: fluxauth_store(sqlite_path)),
            ]
            if args.sqlalchemy:
                runs += [
                    (
                        "SQLAlchemy Core, PostgreSQL (psycopg 3)",
                        lambda: sqlalchemy_core(pg_url.replace("postgresql://", "postgresql+psycopg://")),
                    ),
                    ("SQLAlchemy Core, SQLite", lambda: sqlalchemy_core(f"sqlite:///{sqlite_path}")),
                ]
            for label, make in runs:
                measure(label, make(), args.calls)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
