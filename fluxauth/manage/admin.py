"""What an operator does: orgs, compute services, repo visibility, keys and rotation.

The command line is a thin shell over ``Admin``. Every check happens before the
store is touched, so bad input changes nothing.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fluxauth.auth.hashing import TokenHasher
from fluxauth.clock import Clock, system_clock
from fluxauth.config.settings import MAX_GRACE_SECONDS, Settings
from fluxauth.decision.tokens import new_token
from fluxauth.errors import InputError
from fluxauth.model import PERMISSIONS, REPO_ACCESS, VISIBILITIES, Permission, RepoAccess
from fluxauth.names import check_key_name, check_org, check_repo
from fluxauth.store import KeyRecord, ServiceRecord, Store

DEFAULT_GRACE_SECONDS = 86400


@dataclass(frozen=True)
class IssuedToken:
    """A token just created or rotated: the only time its secret exists outside a request."""

    token: str
    token_id: str
    key: KeyRecord


def add_months(timestamp: float, months: int) -> float:
    """``timestamp`` moved ``months`` calendar months on, the day clamped to the month's end."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day).timestamp()


def iso(timestamp: float | None) -> str | None:
    """An ISO 8601 UTC form for listings."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Admin:
    """The operator's actions, checked, over a ``Store``."""

    def __init__(self, store: Store, settings: Settings, clock: Clock = system_clock) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._hasher: TokenHasher | None = None

    @property
    def hasher(self) -> TokenHasher:
        # Built on first use: listing keys should not pay for argon2 set-up.
        if self._hasher is None:
            self._hasher = TokenHasher(self.settings.argon2_profile)
        return self._hasher

    def _protocol(self, protocol: str) -> str:
        if protocol not in self.settings.protocols:
            raise InputError(f"unknown protocol {protocol!r}: expected one of {', '.join(self.settings.protocols)}")
        return protocol

    def create_org(self, org: str) -> None:
        self.store.create_org(check_org(org), self.clock())

    def enable_service(self, org: str, protocol: str, *, is_public: bool = False) -> None:
        self.store.set_service(
            check_org(org), self._protocol(protocol), enabled=True, is_public=is_public, now=self.clock()
        )

    def disable_service(self, org: str, protocol: str) -> None:
        self.store.set_service(
            check_org(org), self._protocol(protocol), enabled=False, is_public=False, now=self.clock()
        )

    def list_services(self, org: str) -> Sequence[ServiceRecord]:
        return self.store.list_services(check_org(org))

    def set_visibility(self, org: str, repo: str, visibility: str) -> None:
        if visibility not in VISIBILITIES:
            raise InputError(f"bad visibility {visibility!r}: expected one of {', '.join(VISIBILITIES)}")
        self.store.set_repo_visibility(check_org(org), check_repo(repo), visibility, self.clock())

    @staticmethod
    def _permissions(permissions: Iterable[str]) -> frozenset[Permission]:
        # Read once: a generator would be empty the second time, and the key
        # would silently get no permissions.
        chosen = frozenset(permissions)
        for permission in sorted(chosen):
            if permission not in PERMISSIONS:
                raise InputError(f"bad permission {permission!r}: expected one of {', '.join(PERMISSIONS)}")
        return chosen  # type: ignore[return-value]

    @staticmethod
    def _grants(grants: Mapping[str, str]) -> dict[str, RepoAccess]:
        for repo, access in grants.items():
            check_repo(repo)
            if access not in REPO_ACCESS:
                raise InputError(f"bad access {access!r} for repo {repo!r}: expected read or write")
        return dict(grants)  # type: ignore[arg-type]

    def create_key(
        self,
        org: str,
        name: str,
        *,
        permissions: Iterable[str] = (),
        repo_grants: Mapping[str, str] | None = None,
        expires_in: int | None = None,
    ) -> IssuedToken:
        lifetime = self.settings.key_default_lifetime if expires_in is None else expires_in
        if not 0 < lifetime <= self.settings.key_max_lifetime:
            raise InputError(
                f"bad expiry: a key lives between 1 second and {self.settings.key_max_lifetime // 86400} days"
            )
        now = self.clock()
        key = KeyRecord(
            org=check_org(org),
            name=check_key_name(name),
            permissions=self._permissions(permissions),
            repo_grants=self._grants(repo_grants or {}),
            created_at=now,
            expires_at=now + lifetime,
            last_used_at=None,
        )
        parts, token = new_token()
        self.store.create_key(key, parts.token_id, self.hasher.hash(parts.secret), now)
        return IssuedToken(token, parts.token_id, key)

    def list_keys(self, org: str) -> Sequence[KeyRecord]:
        return self.store.list_keys(check_org(org))

    def rotate_key(
        self,
        org: str,
        name: str,
        *,
        grace: int = DEFAULT_GRACE_SECONDS,
        extend_months: int | None = None,
    ) -> IssuedToken:
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise InputError(f"bad grace period: at most 7 days, got {grace} seconds")
        if extend_months is not None and not 1 <= extend_months <= 12:
            raise InputError(f"bad --extend-months {extend_months}: expected 1 to 12")
        now = self.clock()
        key = self.store.get_key(check_org(org), check_key_name(name))
        expires_at = key.expires_at
        if extend_months is not None:
            expires_at = add_months(max(expires_at, now), extend_months)
            latest = now + self.settings.key_max_lifetime
            if expires_at > latest:
                raise InputError(
                    f"extending by {extend_months} months would pass the maximum lifetime (latest {iso(latest)})"
                )
        parts, token = new_token()
        self.store.rotate_key(
            key.org,
            key.name,
            token_id=parts.token_id,
            token_hash=self.hasher.hash(parts.secret),
            grace_end=now + grace,
            expires_at=expires_at,
            now=now,
        )
        return IssuedToken(token, parts.token_id, self.store.get_key(key.org, key.name))

    def delete_key(self, org: str, name: str) -> None:
        self.store.delete_key(check_org(org), check_key_name(name), self.clock())
