"""``open_store``: the database a store URL names, opened, its schema created or upgraded.

Both databases are served by one implementation (``fluxauth.store.sql``):
``sqlite:///PATH`` (or a plain path), the embedded default, and
``postgresql://`` / ``postgres://`` for replicas on several hosts.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fluxauth.errors import ConfigError
from fluxauth.store.base import Store

POSTGRES_SCHEMES = ("postgresql", "postgres")
SUPPORTED = "sqlite:///PATH, a file path, postgresql://HOST/DB or postgres://HOST/DB"
DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL_SIZE = 4


def scheme(url: str) -> str | None:
    """The scheme of a store URL, lower case; ``None`` for a plain file path."""
    if "://" not in url:
        return None
    return urlsplit(url).scheme.lower() or url.partition("://")[0].lower()


def open_store(url: str, *, timeout: float = DEFAULT_TIMEOUT, pool_size: int = DEFAULT_POOL_SIZE) -> Store:
    """Open the store that ``url`` names, creating or upgrading its schema.

    ``sqlite:///relative.db``, ``sqlite:////abs.db`` or a path; or
    ``postgresql://[user[:password]@]host[:port]/db[?libpq params]`` (also
    ``postgres://``), with at most ``pool_size`` connections, each operation
    bounded by ``timeout`` seconds. Errors never show a password.
    """
    kind = scheme(url)
    if kind in POSTGRES_SCHEMES:
        from fluxauth.store.postgres import PostgresStore  # psycopg only for those who use it

        return PostgresStore(url, timeout=timeout, pool_size=pool_size)
    if kind not in (None, "sqlite"):
        raise ConfigError(f"store: unsupported store URL scheme {kind!r} (supported: {SUPPORTED})")
    path = url.removeprefix("sqlite:///") if kind == "sqlite" and url.startswith("sqlite:///") else url
    if "://" in path or not path:
        # An empty path would open a private temporary database that vanishes on close.
        raise ConfigError(f"store: unsupported store URL, a SQLite store is sqlite:///PATH (supported: {SUPPORTED})")
    from fluxauth.store.sqlite import SQLiteStore

    return SQLiteStore(path)
