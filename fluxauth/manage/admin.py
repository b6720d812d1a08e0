"""What an operator or an org admin does: orgs, compute services, repo visibility, keys, rotation, the audit log.

The command line and the management API (``fluxauth.manage.api``) are thin
shells over ``Admin``. Every check happens before the store is touched, so bad
input changes nothing; every mutation is written together with its audit
event (who, from where, what, to which target), in one transaction. An
``InputError`` names the argument at fault in ``field`` where one is.
"""

from __future__ import annotations

import calendar
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fluxauth.auth.hashing import TokenHasher
from fluxauth.clock import Clock, system_clock
from fluxauth.config.durations import format_duration
from fluxauth.config.settings import MAX_GRACE_SECONDS, Settings
from fluxauth.decision.tokens import new_token
from fluxauth.errors import Conflict, InputError, NotFound
from fluxauth.model import PERMISSIONS, REPO_ACCESS, VISIBILITIES, AuditEvent, Permission, RepoAccess, Visibility
from fluxauth.names import check_key_name, check_org, check_repo
from fluxauth.store import KeyRecord, ServiceRecord, Store

DEFAULT_GRACE_SECONDS = 86400
AUDIT_PAGE = 100  # events per page when the caller says nothing
AUDIT_PAGE_MAX = 1000


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: ``cli`` (whoever runs the command line on the store) or an org admin's ``name@org``.

    ``client`` is the address an API call came from (``None`` for the command line).
    """

    name: str
    client: str | None = None


CLI = Actor("cli")


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
    """The actions of the command line and the management API, checked, over a ``Store``."""

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

    @staticmethod
    def _event(actor: Actor, now: float, org: str, action: str, target: str, detail: str = "") -> AuditEvent:
        return AuditEvent(
            at=now,
            org=org,
            actor=actor.name,
            action=action,
            target=target,
            outcome="ok",
            client=actor.client,
            detail=detail,
        )

    def protocol(self, protocol: str) -> str:
        if protocol not in self.settings.protocols:
            raise NotFound(
                f"unknown protocol {protocol!r}: expected one of {', '.join(self.settings.protocols)}",
                field="protocol",
            )
        return protocol

    # -- orgs, services, repos ----------------------------------------------------

    def create_org(self, org: str, *, actor: Actor = CLI) -> None:
        now = self.clock()
        self.store.create_org(check_org(org), now, audit=self._event(actor, now, org, "orgs.create", org))

    def set_service(self, org: str, protocol: str, *, enabled: bool, is_public: bool, actor: Actor = CLI) -> None:
        """Enable or disable ``protocol`` for ``org``; a disabled service is never public."""
        now = self.clock()
        is_public = is_public and enabled
        detail = ("enabled" + (", public" if is_public else "")) if enabled else "disabled"
        self.store.set_service(
            check_org(org),
            self.protocol(protocol),
            enabled=enabled,
            is_public=is_public,
            now=now,
            audit=self._event(actor, now, org, "services.set", f"{org}/{protocol}", detail),
        )

    def enable_service(self, org: str, protocol: str, *, is_public: bool = False, actor: Actor = CLI) -> None:
        self.set_service(org, protocol, enabled=True, is_public=is_public, actor=actor)

    def disable_service(self, org: str, protocol: str, *, actor: Actor = CLI) -> None:
        self.set_service(org, protocol, enabled=False, is_public=False, actor=actor)

    def list_services(self, org: str) -> Sequence[ServiceRecord]:
        """The services the store holds for ``org`` (set once, enabled or not)."""
        return self.store.list_services(check_org(org))

    def services(self, org: str) -> list[ServiceRecord]:
        """Every configured protocol's service for ``org``, disabled where never set."""
        known = {service.protocol: service for service in self.list_services(org)}
        return [known.get(name, ServiceRecord(org, name, False, False)) for name in self.settings.protocols]

    def service(self, org: str, protocol: str) -> ServiceRecord:
        self.protocol(protocol)
        return next(service for service in self.services(org) if service.protocol == protocol)

    def set_visibility(self, org: str, repo: str, visibility: str, *, actor: Actor = CLI) -> None:
        if visibility not in VISIBILITIES:
            raise InputError(
                f"bad visibility {visibility!r}: expected one of {', '.join(VISIBILITIES)}", field="visibility"
            )
        now = self.clock()
        self.store.set_repo_visibility(
            check_org(org),
            check_repo(repo),
            visibility,
            now,
            audit=self._event(actor, now, org, "repos.visibility", f"{org}/{repo}", visibility),
        )

    def repos(self, org: str) -> Mapping[str, Visibility]:
        """The repos of ``org`` whose visibility was set (others are ``private``)."""
        policy = self.store.org_policy(check_org(org))
        if policy is None:
            raise NotFound(f"no org named {org!r}")
        return dict(sorted(policy.repos.items()))

    def visibility(self, org: str, repo: str) -> Visibility:
        check_repo(repo)
        return self.repos(org).get(repo, "private")

    # -- keys and tokens ----------------------------------------------------------

    @staticmethod
    def _permissions(permissions: Iterable[str]) -> frozenset[Permission]:
        # Read once: a generator would be empty the second time, and the key
        # would silently get no permissions.
        chosen = frozenset(permissions)
        for permission in sorted(chosen):
            if permission not in PERMISSIONS:
                raise InputError(
                    f"bad permission {permission!r}: expected one of {', '.join(PERMISSIONS)}", field="permissions"
                )
        return chosen  # type: ignore[return-value]

    @staticmethod
    def _grants(grants: Mapping[str, str]) -> dict[str, RepoAccess]:
        for repo, access in grants.items():
            try:
                check_repo(repo)
            except InputError as exc:
                raise InputError(str(exc), field="repos") from None
            if access not in REPO_ACCESS:
                raise InputError(f"bad access {access!r} for repo {repo!r}: expected read or write", field="repos")
        return dict(grants)  # type: ignore[arg-type]

    def create_key(
        self,
        org: str,
        name: str,
        *,
        permissions: Iterable[str] = (),
        repo_grants: Mapping[str, str] | None = None,
        expires_in: int | None = None,
        actor: Actor = CLI,
    ) -> IssuedToken:
        lifetime = self.settings.key_default_lifetime if expires_in is None else expires_in
        if not 0 < lifetime <= self.settings.key_max_lifetime:
            raise InputError(
                f"bad expiry: a key lives between 1 second and {self.settings.key_max_lifetime // 86400} days",
                field="expires_in",
            )
        now = self.clock()
        try:
            key_name = check_key_name(name)
        except InputError as exc:
            raise InputError(str(exc), field="name") from None
        key = KeyRecord(
            org=check_org(org),
            name=key_name,
            permissions=self._permissions(permissions),
            repo_grants=self._grants(repo_grants or {}),
            created_at=now,
            expires_at=now + lifetime,
            last_used_at=None,
        )
        parts, token = new_token()
        grants = ",".join(f"{repo}={access}" for repo, access in sorted(key.repo_grants.items()))
        permissions = ",".join(sorted(key.permissions)) or "-"
        detail = f"permissions {permissions}; repos {grants or '-'}; expires {iso(key.expires_at)}"
        self.store.create_key(
            key,
            parts.token_id,
            self.hasher.hash(parts.secret),
            now,
            audit=self._event(actor, now, key.org, "keys.create", key.principal, detail),
        )
        return IssuedToken(token, parts.token_id, key)

    def get_key(self, org: str, name: str) -> KeyRecord:
        return self.store.get_key(check_org(org), check_key_name(name))

    def list_keys(self, org: str) -> Sequence[KeyRecord]:
        return self.store.list_keys(check_org(org))

    def rotate_key(
        self,
        org: str,
        name: str,
        *,
        grace: int = DEFAULT_GRACE_SECONDS,
        extend_months: int | None = None,
        actor: Actor = CLI,
    ) -> IssuedToken:
        if not 0 <= grace <= MAX_GRACE_SECONDS:
            raise InputError(f"bad grace period: at most 7 days, got {format_duration(grace)}", field="grace")
        if extend_months is not None and not 1 <= extend_months <= 12:
            raise InputError(f"bad --extend-months {extend_months}: expected 1 to 12", field="extend_months")
        now = self.clock()
        key = self.get_key(org, name)
        expires_at = key.expires_at
        if extend_months is not None:
            expires_at = add_months(max(expires_at, now), extend_months)
            latest = now + self.settings.key_max_lifetime
            if expires_at > latest:
                raise InputError(
                    f"extending by {extend_months} months would pass the maximum lifetime (latest {iso(latest)})",
                    field="extend_months",
                )
        parts, token = new_token()
        detail = f"grace {format_duration(grace)}; new token {parts.token_id}; expires {iso(expires_at)}"
        self.store.rotate_key(
            key.org,
            key.name,
            token_id=parts.token_id,
            token_hash=self.hasher.hash(parts.secret),
            grace_end=now + grace,
            expires_at=expires_at,
            now=now,
            audit=self._event(actor, now, key.org, "keys.rotate", key.principal, detail),
        )
        return IssuedToken(token, parts.token_id, self.store.get_key(key.org, key.name))

    def revoke_token(self, org: str, name: str, token_id: str, *, actor: Actor = CLI) -> None:
        """End a rotated-out token's grace now ("revoke now"); the key's current token is refused (Conflict)."""
        key = self.get_key(org, name)
        token = next((token for token in key.tokens if token.token_id == token_id), None)
        if token is None:
            raise NotFound(f"no token {token_id} of key {key.principal}", field="token_id")
        if token.not_after is None:
            raise Conflict(
                f"token {token_id} is the current token of {key.principal}: rotate the key first (or delete it)",
                field="token_id",
            )
        now = self.clock()
        # A grace already over stays over at its own end: revoking never lengthens a life.
        self.store.end_grace(
            key.org,
            key.name,
            token_id,
            min(token.not_after, now),
            now,
            audit=self._event(actor, now, key.org, "keys.revoke-token", f"{key.principal} token {token_id}"),
        )

    def delete_key(self, org: str, name: str, *, actor: Actor = CLI) -> None:
        now = self.clock()
        org, name = check_org(org), check_key_name(name)
        self.store.delete_key(org, name, now, audit=self._event(actor, now, org, "keys.delete", f"{name}@{org}"))

    # -- the audit log ------------------------------------------------------------

    def audit(
        self,
        org: str,
        *,
        since: float | None = None,
        until: float | None = None,
        actor: str | None = None,
        before: int | None = None,
        limit: int = AUDIT_PAGE,
    ) -> Sequence[AuditEvent]:
        """``org``'s events, newest first; ``before`` (a ``seq``) pages on."""
        if not 1 <= limit <= AUDIT_PAGE_MAX:
            raise InputError(f"bad limit {limit}: expected 1 to {AUDIT_PAGE_MAX}", field="limit")
        org = check_org(org)
        if not self.store.org_exists(org):
            raise NotFound(f"no org named {org!r}")
        return self.store.list_audit(org, since=since, until=until, actor=actor, before_seq=before, limit=limit)

    def record_refusal(self, org: str, actor: Actor, action: str, target: str, outcome: str, detail: str) -> None:
        """Note an attempt that was refused (no mutation goes with it) in ``org``'s log."""
        event = self._event(actor, self.clock(), org, action, target, detail)
        self.store.append_audit(dataclasses.replace(event, outcome=outcome))
