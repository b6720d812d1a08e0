"""``fluxauth store copy``: one whole store into another, empty one, of either database.

Everything is copied, the way it is stored: orgs, services, repo settings,
keys (permissions, grants, expiry, last use), tokens (hash, grace end, rotation
time), the change feed, the audit log and the cache secret. Tokens therefore
keep working against the target, and its numbering continues after the copied
rows. The source is read in one snapshot and left as it is; the target is
written in one transaction, or not at all.
"""

from __future__ import annotations

from fluxauth.store.base import Store
from fluxauth.store.schema import TABLES
from fluxauth.store.sql import SQLStore


def copy_store(source: Store, target: Store) -> dict[str, int]:
    """Copy ``source`` into ``target``; returns the rows copied per table. Conflict if ``target`` holds anything."""
    if not isinstance(source, SQLStore) or not isinstance(target, SQLStore):
        raise TypeError("store copy reads and writes SQL stores")
    rows = source.dump()
    target.load(rows)
    return {table.name: len(rows.get(table.name, ())) for table in TABLES}
