"""The management API's bodies and answers, as pydantic models: checked input, typed output, one JSON Schema each.

Why pydantic: a body is checked into typed values in one call that refuses
unknown fields, wrong types and out-of-range values with the field's
location (the 422 names it), and the JSON Schemas of ``openapi.json`` come
from the same models, so the document cannot drift from what is enforced.
Names and durations use the patterns of ``fluxauth.names`` and
``fluxauth.config.durations``: the schema says exactly what the command line
accepts. Limits that depend on the settings (the grace's 7 days, the maximum
lifetime) are ``Admin``'s to check; it names the field too.

Request bodies are strict (``"extend_months": "3"`` is a wrong type, not 3);
the audit query, which arrives as text, is read as text.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, WithJsonSchema

from fluxauth.config.durations import DURATION_PATTERN
from fluxauth.manage.admin import IssuedToken, iso
from fluxauth.model import (
    PERMISSIONS,
    AuditEvent,
    KeyRecord,
    Permission,
    RepoAccess,
    ServiceRecord,
    TokenRecord,
    Visibility,
)
from fluxauth.names import KEY_SCHEMA, REPO_SCHEMA

KeyName = Annotated[str, StringConstraints(pattern=KEY_SCHEMA.pattern, max_length=KEY_SCHEMA.max_length)]
RepoName = Annotated[str, StringConstraints(pattern=REPO_SCHEMA.pattern, max_length=REPO_SCHEMA.max_length)]
Duration = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN, max_length=40),
    Field(description="a number with a unit s, m, h, d or w, or several: 90d, 2h, 1h30m, 0s"),
]
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
MAX_GRANTS = 1000
# RFC 3339's date-time, which JSON Schema's format names: pydantic alone would also take 0.5 or a date.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not _RFC3339.fullmatch(value):
        raise ValueError("expected an RFC 3339 date-time such as 2027-01-15T08:00:00Z")
    return value


def _digits(value: object) -> object:
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise ValueError("expected a whole number")
    return value


Moment = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]
Count = Annotated[int, BeforeValidator(_digits)]  # in a query: digits only, not 5.0 or " 5"


def stamp(timestamp: float) -> str:
    """An ISO 8601 UTC time, to the second (``Admin``'s form in listings)."""
    text = iso(timestamp)
    assert text is not None
    return text


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class NewKey(_Body):
    """``POST orgs/{org}/keys``: a key (service account) and its first token."""

    name: KeyName = Field(description="the bare name: the key is name@org")
    permissions: list[Permission] = Field(default_factory=list, max_length=len(PERMISSIONS), description="at org scope")
    repos: dict[RepoName, RepoAccess] = Field(
        default_factory=dict,
        max_length=MAX_GRANTS,
        description="grants on single repos of the org",
        # patternProperties alone would let other names through in the schema, not in the model.
        json_schema_extra={"additionalProperties": False},
    )
    expires_in: Duration | None = Field(None, description="the key's lifetime (default 365d, at most the maximum)")


class Rotation(_Body):
    """``POST orgs/{org}/keys/{name}/rotate``: a new token; the old ones end after the grace."""

    grace: Duration | None = Field(None, description="how long the old token stays valid: 0s to 7d (default 1d)")
    extend_months: int | None = Field(None, ge=1, le=12, description="move the expiry on by 1 to 12 months")


class ServiceSettings(_Body):
    """``PUT orgs/{org}/services/{protocol}``."""

    enabled: bool
    is_public: bool = Field(False, description="anyone may read, without credentials (only when enabled)")


class RepoSettings(_Body):
    """``PUT orgs/{org}/repos/{repo}``."""

    visibility: Visibility


class AuditQuery(BaseModel):
    """``GET orgs/{org}/audit``'s query: filters and the page."""

    model_config = ConfigDict(extra="forbid")

    since: Moment | None = Field(None, description="events at or after this time")
    until: Moment | None = Field(None, description="events before this time")
    actor: str | None = Field(None, max_length=200, description="cli, or a key name@org")
    before: Count | None = Field(None, ge=1, le=2**62, description="the next page: events before this seq")
    limit: Count = Field(100, ge=1, le=1000)


# -- answers ----------------------------------------------------------------------


class TokenView(BaseModel):
    token_id: str
    created_at: Timestamp
    not_after: Timestamp | None = Field(description="the end of its grace once rotated out; null: the current token")

    @classmethod
    def of(cls, token: TokenRecord) -> TokenView:
        return cls(token_id=token.token_id, created_at=stamp(token.created_at), not_after=iso(token.not_after))


class KeyView(BaseModel):
    """A key as listed: never a token or a hash."""

    name: str
    key: str = Field(description="name@org")
    permissions: list[Permission]
    repos: dict[str, RepoAccess]
    created_at: Timestamp
    expires_at: Timestamp
    last_used_at: Timestamp | None = Field(description="null: never used")
    tokens: list[TokenView]

    @classmethod
    def of(cls, key: KeyRecord, last_used_at: float | None = None) -> KeyView:
        used = key.last_used_at if last_used_at is None else max(last_used_at, key.last_used_at or 0.0)
        return cls(
            name=key.name,
            key=key.principal,
            permissions=sorted(key.permissions),
            repos=dict(sorted(key.repo_grants.items())),
            created_at=stamp(key.created_at),
            expires_at=stamp(key.expires_at),
            last_used_at=iso(used),
            tokens=[TokenView.of(token) for token in key.tokens],
        )


class IssuedView(BaseModel):
    """The answer to create and rotate: the only response that ever holds the token."""

    token: str = Field(description="ema_<token_id>_<secret>: shown once, never again")
    token_id: str
    key: str
    expires_at: Timestamp
    permissions: list[Permission]
    repos: dict[str, RepoAccess]

    @classmethod
    def of(cls, issued: IssuedToken) -> IssuedView:
        key = issued.key
        return cls(
            token=issued.token,
            token_id=issued.token_id,
            key=key.principal,
            expires_at=stamp(key.expires_at),
            permissions=sorted(key.permissions),
            repos=dict(sorted(key.repo_grants.items())),
        )


class ServiceView(BaseModel):
    protocol: str
    enabled: bool
    is_public: bool

    @classmethod
    def of(cls, service: ServiceRecord) -> ServiceView:
        return cls(protocol=service.protocol, enabled=service.enabled, is_public=service.is_public)


class RepoView(BaseModel):
    repo: str
    visibility: Visibility


class AuditEventView(BaseModel):
    seq: int
    at: Timestamp
    actor: str = Field(description="cli, or the acting key name@org")
    client: str | None = Field(description="the address an API call came from")
    action: str
    target: str
    outcome: str = Field(description="ok; denied (not allowed); failed (allowed, but refused: bad input, conflict)")
    detail: str

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventView:
        return cls(
            seq=event.seq,
            at=stamp(event.at),
            actor=event.actor,
            client=event.client,
            action=event.action,
            target=event.target,
            outcome=event.outcome,
            detail=event.detail,
        )


class ErrorView(BaseModel):
    """Every refusal: a short code and a sentence; ``field`` names the input at fault (422)."""

    error: str
    detail: str
    field: str | None = None


def dump(value: BaseModel | list[Any]) -> Any:
    """A view as plain JSON data."""
    if isinstance(value, list):
        return [item.model_dump(mode="json") for item in value]
    return value.model_dump(mode="json", exclude_none=isinstance(value, ErrorView))


def json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
