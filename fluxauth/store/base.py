"""What a store provides: the ``Store`` and ``ChangeListener`` protocols every backend meets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from fluxauth.model import (
    AuditEvent,
    Change,
    Credential,
    KeyRecord,
    OrgPolicy,
    Permission,
    RepoAccess,
    ServiceRecord,
    Visibility,
)


class ChangeListener(Protocol):
    """Wake-ups sent with every change (PostgreSQL ``LISTEN``), for servers to read the feed at once."""

    async def follow(self, on_notice: Callable[[], Awaitable[object]]) -> None:
        """Call ``on_notice`` for every wake-up, and each time listening starts or starts again.

        Runs until cancelled, reconnecting by itself; a wake-up missed while
        disconnected is made up for by the call on reconnection.
        """
        ...


class Store(Protocol):
    """A backend. Every mutation appends a ``Change`` in the same transaction.

    Methods raise ``NotFound`` / ``Conflict`` for bad references and
    ``StoreUnavailable`` when the backend cannot be reached. A mutation's
    ``audit`` event, when given, is written in the mutation's transaction.
    """

    @property
    def where(self) -> str:
        """The store, named for messages: never with a password."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...

    def listener(self) -> ChangeListener | None:
        """Wake-ups for changes, where the database sends them (``None``: poll the feed alone)."""
        ...

    def cache_secret(self) -> bytes:
        """A random secret made once per store, shared by every replica using it."""
        ...

    def create_org(self, org: str, now: float, *, audit: AuditEvent | None = None) -> None: ...

    def org_exists(self, org: str) -> bool: ...

    def set_service(
        self, org: str, protocol: str, *, enabled: bool, is_public: bool, now: float, audit: AuditEvent | None = None
    ) -> None: ...

    def list_services(self, org: str) -> Sequence[ServiceRecord]: ...

    def set_repo_visibility(
        self, org: str, repo: str, visibility: Visibility, now: float, *, audit: AuditEvent | None = None
    ) -> None: ...

    def org_policy(self, org: str) -> OrgPolicy | None:
        """Services and repo visibilities of ``org``, or ``None`` if there is no such org."""
        ...

    def create_key(
        self, key: KeyRecord, token_id: str, token_hash: str, now: float, *, audit: AuditEvent | None = None
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
        audit: AuditEvent | None = None,
    ) -> None:
        """Add a token; tokens that were still valid end at ``grace_end``."""
        ...

    def end_grace(
        self, org: str, name: str, token_id: str, not_after: float, now: float, *, audit: AuditEvent | None = None
    ) -> None:
        """End a rotated-out token's grace, or move its end (NotFound: not that key's; InputError: not rotated out)."""
        ...

    def set_permissions(
        self,
        org: str,
        name: str,
        permissions: frozenset[Permission],
        repo_grants: Mapping[str, RepoAccess],
        now: float,
        *,
        audit: AuditEvent | None = None,
    ) -> None: ...

    def delete_key(self, org: str, name: str, now: float, *, audit: AuditEvent | None = None) -> None: ...

    def get_credential(self, token_id: str) -> Credential | None: ...

    def touch_keys(self, last_used: Mapping[tuple[str, str], float]) -> None:
        """Record ``last_used_at`` in one batch (no change is appended)."""
        ...

    def changes_since(self, seq: int, limit: int = 1000) -> Sequence[Change]: ...

    def last_change(self) -> int: ...

    def append_audit(self, event: AuditEvent) -> AuditEvent:
        """Record an event of its own (a refused attempt); returns it with its ``seq``."""
        ...

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
        """An org's events, newest first; ``before_seq`` pages on."""
        ...
