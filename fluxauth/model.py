"""Plain records that the store returns and the decision reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Visibility = Literal["private", "authenticated", "public"]
Permission = Literal["read", "write", "manage_org_users"]
RepoAccess = Literal["read", "write"]
VISIBILITIES: tuple[Visibility, ...] = ("private", "authenticated", "public")
PERMISSIONS: tuple[Permission, ...] = ("read", "write", "manage_org_users")
REPO_ACCESS: tuple[RepoAccess, ...] = ("read", "write")


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    org: str
    protocol: str
    enabled: bool
    is_public: bool


@dataclass(frozen=True, slots=True)
class OrgPolicy:
    """What the decision needs to know of one org: its services and repo visibilities."""

    org: str
    services: Mapping[str, ServiceRecord] = field(default_factory=dict)
    repos: Mapping[str, Visibility] = field(default_factory=dict)

    def visibility(self, repo: str) -> Visibility:
        return self.repos.get(repo, "private")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    org: str
    key_name: str
    hash: str
    created_at: float
    not_after: float | None  # end of the grace period once rotated out
    rotated_at: float | None = None  # when the key was rotated away from it (the grace's start)


@dataclass(frozen=True, slots=True)
class KeyRecord:
    org: str
    name: str
    permissions: frozenset[Permission]
    repo_grants: Mapping[str, RepoAccess]
    created_at: float
    expires_at: float
    last_used_at: float | None
    tokens: tuple[TokenRecord, ...] = ()

    @property
    def principal(self) -> str:
        return f"{self.name}@{self.org}"


@dataclass(frozen=True, slots=True)
class Credential:
    """A token with the key it belongs to: everything needed to verify and decide."""

    token: TokenRecord
    key: KeyRecord


ChangeKind = Literal["org", "service", "repo", "key"]


@dataclass(frozen=True, slots=True)
class Change:
    """One mutation, for running servers to drop what they cached."""

    seq: int
    kind: ChangeKind
    org: str
    key_name: str | None
    at: float


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One entry of an org's audit log: who did what to which target, and how it ended.

    ``actor`` is ``cli`` or the acting principal (``name@org``); ``client`` the
    address an API call came from. Never a secret or a hash: ``detail`` is a
    short human-readable note (``"grace 2h"``). ``seq`` is given by the store.
    """

    at: float
    org: str
    actor: str
    action: str
    target: str
    outcome: str
    client: str | None = None
    detail: str = ""
    seq: int = 0
