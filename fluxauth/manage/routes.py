"""The management API's operations: one table that both the API (``api.py``) and its document (``openapi.py``) read.

Paths are relative to ``PREFIX``, with ``{param}`` segments; each operation
names its handler (``ManagementApi.<name>``), its audit action, its body,
query and answer models (``fluxauth.manage.schemas``) and its statuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from fluxauth.manage.schemas import (
    AuditEventView,
    AuditQuery,
    IssuedView,
    KeyView,
    NewKey,
    RepoSettings,
    RepoView,
    Rotation,
    ServiceSettings,
    ServiceView,
)

PREFIX = "/_fluxauth/api/v1"
MAX_BODY = 64 * 1024
TOKEN_ID = r"^[0-9a-f]{16}$"  # noqa: S105 (the pattern of token ids, not a secret)


@dataclass(frozen=True)
class Route:
    """One operation: what it matches, takes and answers ."""

    method: str
    path: str  # relative to PREFIX, "{param}" segments
    name: str  # the operationId, and the handler ``ManagementApi.<name>``
    action: str  # in the audit log
    summary: str
    status: int = 200
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    answer: Any = None  # a model, list[model], or None (no content)
    errors: tuple[int, ...] = ()  # beyond those every org route has

    @property
    def mutates(self) -> bool:
        return self.method != "GET"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/"))

    @property
    def params(self) -> list[str]:
        return [part[1:-1] for part in self.segments if part.startswith("{")]


ROUTES: tuple[Route, ...] = (
    Route("GET", "orgs/{org}/keys", "list_keys", "keys.list", "The org's keys", answer=list[KeyView]),
    Route(
        "POST", "orgs/{org}/keys", "create_key", "keys.create", "Create a key and its first token",
        status=201, body=NewKey, answer=IssuedView, errors=(409,),
    ),
    Route("GET", "orgs/{org}/keys/{name}", "get_key", "keys.get", "One key", answer=KeyView),
    Route(
        "DELETE", "orgs/{org}/keys/{name}", "delete_key", "keys.delete", "Delete a key: all its tokens stop working",
        status=204,
    ),
    Route(
        "POST", "orgs/{org}/keys/{name}/rotate", "rotate_key", "keys.rotate",
        "A new token; the previous ones stay valid for the grace", body=Rotation, answer=IssuedView,
    ),
    Route(
        "POST", "orgs/{org}/keys/{name}/tokens/{token_id}/revoke", "revoke_token", "keys.revoke-token",
        "End a rotated-out token's grace now", status=204, errors=(409,),
    ),
    Route("GET", "orgs/{org}/services", "list_services", "services.list", "Every protocol's service",
          answer=list[ServiceView]),
    Route("GET", "orgs/{org}/services/{protocol}", "get_service", "services.get", "One service", answer=ServiceView),
    Route(
        "PUT", "orgs/{org}/services/{protocol}", "set_service", "services.set", "Enable, disable, make public",
        body=ServiceSettings, answer=ServiceView,
    ),
    Route("GET", "orgs/{org}/repos", "list_repos", "repos.list", "Repos whose visibility was set",
          answer=list[RepoView]),
    Route("GET", "orgs/{org}/repos/{repo}", "get_repo", "repos.get", "One repo's visibility", answer=RepoView),
    Route(
        "PUT", "orgs/{org}/repos/{repo}", "set_repo", "repos.visibility", "Set a repo's visibility",
        body=RepoSettings, answer=RepoView,
    ),
    Route(
        "GET", "orgs/{org}/audit", "list_audit", "audit.list", "The org's audit log, newest first, paged",
        query=AuditQuery, answer=list[AuditEventView],
    ),
)  # fmt: skip
