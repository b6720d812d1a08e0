"""The decision (docs/architecture.md §3): a pure function over plain data.

``decide`` takes the parsed target (or why it could not be parsed), the org's
policy, the request's method, whether it is a CORS preflight, what is known of
the credentials and the time, and returns a frozen ``Decision``. It does no I/O:
when it needs credentials that have not been looked at yet it says so
(``Outcome.AUTHENTICATE``) and the caller asks again with them. Every refusal
maps to its status code here and nowhere else; anything not allowed is denied.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fluxauth.decision.target import Target
from fluxauth.errors import PathError, Refusal
from fluxauth.model import OrgPolicy

Access = Literal["read", "write"]
Preflight = Literal["none", "allowed", "denied"]

# Methods that only read. Everything else (PUT, POST, DELETE...) needs write.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified key: who it is, what it may do, and until when (never beyond its token or key)."""

    org: str
    name: str
    permissions: frozenset[str]
    repo_grants: Mapping[str, str]
    expires_at: float  # the key's expiry
    not_after: float | None  # the token's grace end, once rotated out

    @property
    def label(self) -> str:
        return f"{self.name}@{self.org}"

    @property
    def valid_until(self) -> float:
        return self.expires_at if self.not_after is None else min(self.expires_at, self.not_after)

    def lapsed(self, now: float) -> Failure | None:
        """Why this principal is no longer valid at ``now``, or ``None``."""
        if self.not_after is not None and self.not_after <= now:
            return Failure.REVOKED
        if self.expires_at <= now:
            return Failure.EXPIRED
        return None

    def may(self, org: str, repo: str, access: Access) -> bool:
        """Whether this key's own grants allow ``access`` to ``org/repo``."""
        if org != self.org:
            return False
        if "write" in self.permissions or self.repo_grants.get(repo) == "write":
            return True
        return access == "read" and ("read" in self.permissions or self.repo_grants.get(repo) == "read")


class Failure(enum.Enum):
    """Why credentials yielded no principal; each maps to one refusal below."""

    MISSING = "missing"
    MALFORMED = "malformed"
    AMBIGUOUS = "ambiguous"
    UNKNOWN_TOKEN = "unknown_token"
    BAD_SECRET = "bad_secret"
    EXPIRED = "expired"
    REVOKED = "revoked"
    WRONG_ORG = "wrong_org"
    RATE_LIMITED = "rate_limited"
    STORE_UNAVAILABLE = "store_unavailable"
    OVERLOADED = "overloaded"


class Outcome(enum.Enum):
    FORWARD = "forward"
    PREFLIGHT = "preflight"
    AUTHENTICATE = "authenticate"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    status: int
    error: str = ""
    detail: str = ""
    principal: Principal | None = None
    failure: Failure | None = None
    retry_after: int | None = None  # for 429 and 503
    target: Target | None = None  # what to forward to, when forwarding


PREFLIGHT = Decision(Outcome.PREFLIGHT, 204)
AUTHENTICATE = Decision(Outcome.AUTHENTICATE, 401)

# The one place where a reason becomes a status. 401s say only as much as the
# client needs to fix its request: an unknown token and a wrong secret read
# the same, so that the answer does not tell which token ids exist.
_INVALID = "the credentials are not valid"
_REFUSALS: dict[Failure, tuple[int, str, str]] = {
    Failure.MISSING: (401, "unauthorized", "credentials are required: HTTP Basic, username = org, password = API key"),
    Failure.MALFORMED: (401, "unauthorized", "the Authorization header is not HTTP Basic org:API-key"),
    Failure.AMBIGUOUS: (400, "bad_request", "the request carries conflicting credentials"),
    Failure.UNKNOWN_TOKEN: (401, "unauthorized", _INVALID),
    Failure.BAD_SECRET: (401, "unauthorized", _INVALID),
    Failure.EXPIRED: (401, "unauthorized", "the key has expired"),
    Failure.REVOKED: (401, "unauthorized", "the token has been rotated out or revoked"),
    Failure.WRONG_ORG: (401, "unauthorized", "the username must be the key's org"),
    Failure.RATE_LIMITED: (429, "too_many_requests", "too many failed attempts; retry later"),
    Failure.STORE_UNAVAILABLE: (503, "unavailable", "the key store cannot be reached; retry shortly"),
    # Too many verifications already waiting for the argon2 pool (max_pending_verifications):
    # not the client's fault, so not counted as a failure; cached credentials are unaffected.
    Failure.OVERLOADED: (503, "overloaded", "too many new credentials to verify at once; retry shortly"),
}
STORE_RETRY_AFTER = 2
_REFUSAL_DECISIONS = {
    failure: Decision(
        Outcome.REFUSE,
        status,
        error,
        detail,
        failure=failure,
        retry_after={Failure.STORE_UNAVAILABLE: STORE_RETRY_AFTER, Failure.OVERLOADED: 1}.get(
            failure, 1 if status == 429 else None
        ),
    )
    for failure, (status, error, detail) in _REFUSALS.items()
}


def refuse(failure: Failure) -> Decision:
    """The refusal for ``failure``."""
    return _REFUSAL_DECISIONS[failure]


def refuse_error(error: Refusal) -> Decision:
    """The refusal of a request that cannot be decided on as sent (its path, framing, size), with the error's status."""
    return Decision(Outcome.REFUSE, error.status, error.error, error.detail)


NO_SERVICE = Decision(Outcome.REFUSE, 404, "not_found", "no such service")
ORIGIN_DENIED = Decision(Outcome.REFUSE, 403, "forbidden", "this origin is not allowed")
FORBIDDEN = Decision(Outcome.REFUSE, 403, "forbidden", "this key may not access this repository")


def decide(
    *,
    target: Target | PathError,
    policy: OrgPolicy | None,
    method: str,
    preflight: Preflight,
    auth: Principal | Failure | None,
    now: float,
) -> Decision:
    """Decide on one request; ``auth=None`` means the credentials were not looked at yet."""
    if isinstance(target, PathError):
        return refuse_error(target)
    service = None if policy is None else policy.services.get(target.protocol)
    if policy is None or service is None or not service.enabled:
        return NO_SERVICE
    if preflight == "allowed":
        return PREFLIGHT
    if preflight == "denied":
        return ORIGIN_DENIED
    access: Access = "read" if method in READ_METHODS else "write"
    visibility = policy.visibility(target.repo)
    if access == "read" and (service.is_public or visibility == "public"):
        return Decision(Outcome.FORWARD, 200, target=target)
    if auth is None:
        return AUTHENTICATE
    if isinstance(auth, Failure):
        return refuse(auth)
    lapsed = auth.lapsed(now)
    if lapsed is not None:
        return refuse(lapsed)
    if auth.may(target.org, target.repo, access) or (access == "read" and visibility == "authenticated"):
        return Decision(Outcome.FORWARD, 200, principal=auth, target=target)
    return FORBIDDEN
