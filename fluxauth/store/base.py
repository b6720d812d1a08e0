"""What a store backend provides. ``SQLiteStore`` is the embedded default."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from fluxauth.errors import ConfigError
from fluxauth.model import (
    Change,
    Credential,
    KeyRecord,
    OrgPolicy,
    Permission,
    RepoAccess,
    ServiceRecord,
    Visibility,
)


class Store(Protocol):
    """A backend. Every mutation appends a ``Change`` in the same transaction.

    Methods raise ``NotFound`` / ``Conflict`` for bad references and
    ``StoreUnavailable`` when the backend cannot be reached.
    """

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def cache_secret(self) -> bytes:
        """A random secret made once per store, shared by every replica using it."""
        ...

    def create_org(self, org: str, now: float) -> None: ...

    def org_exists(self, org: str) -> bool: ...

    def set_service(self, org: str, protocol: str, *, enabled: bool, is_public: bool, now: float) -> None: ...

    def list_services(self, org: str) -> Sequence[ServiceRecord]: ...

    def set_repo_visibility(self, org: str, repo: str, visibility: Visibility, now: float) -> None: ...

    def org_policy(self, org: str) -> OrgPolicy | None:
        """Services and repo visibilities of ``org``, or ``None`` if there is no such org."""
        ...

    def create_key(
        self,
        key: KeyRecord,
        token_id: str,
        token_hash: str,
        now: float,
    ) -> None: ...

    def get_key(self, org: str, name: str) -> KeyRecord: ...

    def list_keys(self, org: str) -> Sequence[KeyRecord]: ...

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
        """Add a token; tokens that were still valid end at ``grace_end``."""
        ...

    def set_permissions(
        self,
        org: str,
        name: str,
        permissions: frozenset[Permission],
        repo_grants: Mapping[str, RepoAccess],
        now: float,
    ) -> None: ...

    def delete_key(self, org: str, name: str, now: float) -> None: ...

    def get_credential(self, token_id: str) -> Credential | None: ...

    def touch_keys(self, last_used: Mapping[tuple[str, str], float]) -> None:
        """Record ``last_used_at`` in one batch (no change is appended)."""
        ...

    def changes_since(self, seq: int, limit: int = 1000) -> Sequence[Change]: ...

    def last_change(self) -> int: ...


def open_store(url: str) -> Store:
    """Open the store that ``url`` names: ``sqlite:///relative.db``, ``sqlite:////abs.db`` or a path."""
    from fluxauth.store.sqlite import SQLiteStore

    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
    if "://" in path or not path:
        # An empty path would open a private temporary database that vanishes on close.
        raise ConfigError(f"store: unsupported store URL {url!r} (use sqlite:///PATH or a file path)")
    return SQLiteStore(path)
