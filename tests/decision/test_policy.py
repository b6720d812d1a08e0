"""Tests for fluxauth.decision.policy: the decision of docs/architecture.md §3 as one table over plain data."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from fluxauth.decision.policy import (
    STORE_RETRY_AFTER,
    Access,
    Decision,
    Failure,
    Outcome,
    Preflight,
    Principal,
    decide,
    refuse,
)
from fluxauth.decision.target import Target
from fluxauth.errors import AmbiguousPath, NotComputePath, PathError
from fluxauth.model import OrgPolicy, ServiceRecord

NOW = 1_800_000_000.0
DAY = 86_400.0

ACME = OrgPolicy(
    org="acme",
    services={
        "tiles": ServiceRecord("acme", "tiles", enabled=True, is_public=False),
        "wms": ServiceRecord("acme", "wms", enabled=True, is_public=True),
        "zarr": ServiceRecord("acme", "zarr", enabled=False, is_public=False),
        "dap2": ServiceRecord("acme", "dap2", enabled=False, is_public=True),
    },
    repos={"era5": "private", "open": "public", "shared": "authenticated"},
)


def key(
    *,
    org: str = "acme",
    permissions: frozenset[str] = frozenset(),
    grants: dict[str, str] | None = None,
    expires_at: float = NOW + 30 * DAY,
    not_after: float | None = None,
) -> Principal:
    """A principal named after what it holds."""
    return Principal(
        org=org,
        name="key",
        permissions=permissions,
        repo_grants=grants or {},
        expires_at=expires_at,
        not_after=not_after,
    )


READER = key(permissions=frozenset({"read"}))
WRITER = key(permissions=frozenset({"write"}))
GRANT_READ = key(grants={"era5": "read"})
GRANT_WRITE = key(grants={"era5": "write"})
MANAGER = key(permissions=frozenset({"manage_org_users"}))
NOTHING = key()
OTHER_ORG = key(org="other", permissions=frozenset({"read", "write"}))
EXPIRED = key(permissions=frozenset({"read"}), expires_at=NOW - 1)
EXPIRES_NOW = key(permissions=frozenset({"read"}), expires_at=NOW)
PAST_GRACE = key(permissions=frozenset({"read"}), not_after=NOW - 1)
GRACE_ENDS_NOW = key(permissions=frozenset({"read"}), not_after=NOW)
IN_GRACE = key(permissions=frozenset({"read"}), not_after=NOW + 3600)

FORWARD = (Outcome.FORWARD, 200)
AUTHENTICATE = (Outcome.AUTHENTICATE, 401)
PREFLIGHT = (Outcome.PREFLIGHT, 204)


def refused(status: int) -> tuple[Outcome, int]:
    return (Outcome.REFUSE, status)


class Row(NamedTuple):
    """One request and the decision it must get; ``as_principal``: forwarded with the key, not anonymously."""

    expected: tuple[Outcome, int]
    method: str = "GET"
    auth: Principal | Failure | None = None
    repo: str = "era5"
    protocol: str = "tiles"
    preflight: Preflight = "none"
    policy: OrgPolicy | None = ACME
    path_error: PathError | None = None
    as_principal: bool = False


TABLE = {
    # 1. Paths and services.
    "ambiguous-path-400": Row(refused(400), path_error=AmbiguousPath("dot segments are not allowed")),
    "not-compute-404": Row(refused(404), path_error=NotComputePath("not a compute URL")),
    "unknown-org-404": Row(refused(404), policy=None, auth=READER),
    "protocol-not-enabled-404": Row(refused(404), protocol="edr", auth=READER),
    "disabled-service-404": Row(refused(404), protocol="zarr", auth=READER),
    "disabled-public-service-404": Row(refused(404), protocol="dap2"),
    "preflight-to-disabled-service-404": Row(refused(404), protocol="zarr", method="OPTIONS", preflight="allowed"),
    # 2. CORS preflight, answered without credentials.
    "preflight-allowed-204": Row(PREFLIGHT, method="OPTIONS", preflight="allowed"),
    "preflight-allowed-public-204": Row(PREFLIGHT, method="OPTIONS", preflight="allowed", protocol="wms"),
    "preflight-denied-403": Row(refused(403), method="OPTIONS", preflight="denied"),
    "preflight-denied-with-key-403": Row(refused(403), method="OPTIONS", preflight="denied", auth=WRITER),
    # 3. Public service or public repo: read anonymously, never write.
    "public-service-get": Row(FORWARD, protocol="wms"),
    "public-service-head": Row(FORWARD, protocol="wms", method="HEAD"),
    "public-service-get-ignores-key": Row(FORWARD, protocol="wms", auth=OTHER_ORG),
    "public-service-get-ignores-bad-secret": Row(FORWARD, protocol="wms", auth=Failure.BAD_SECRET),
    "public-repo-get": Row(FORWARD, repo="open"),
    "public-repo-get-other-org-key": Row(FORWARD, repo="open", auth=OTHER_ORG),
    "public-service-put-needs-credentials": Row(AUTHENTICATE, protocol="wms", method="PUT"),
    "public-repo-post-needs-credentials": Row(AUTHENTICATE, repo="open", method="POST"),
    "public-repo-put-reader-403": Row(refused(403), repo="open", method="PUT", auth=READER),
    "public-repo-put-writer": Row(FORWARD, repo="open", method="PUT", auth=WRITER, as_principal=True),
    "public-service-delete-no-key-401": Row(refused(401), protocol="wms", method="DELETE", auth=Failure.MISSING),
    # 4. Credentials not looked at yet, or no principal behind them.
    "private-no-auth-yet": Row(AUTHENTICATE),
    "authenticated-repo-no-auth-yet": Row(AUTHENTICATE, repo="shared"),
    "missing-401": Row(refused(401), auth=Failure.MISSING),
    "malformed-401": Row(refused(401), auth=Failure.MALFORMED),
    "ambiguous-credentials-400": Row(refused(400), auth=Failure.AMBIGUOUS),
    "unknown-token-401": Row(refused(401), auth=Failure.UNKNOWN_TOKEN),
    "bad-secret-401": Row(refused(401), auth=Failure.BAD_SECRET),
    "expired-failure-401": Row(refused(401), auth=Failure.EXPIRED),
    "revoked-failure-401": Row(refused(401), auth=Failure.REVOKED),
    "wrong-org-401": Row(refused(401), auth=Failure.WRONG_ORG),
    "rate-limited-429": Row(refused(429), auth=Failure.RATE_LIMITED),
    "store-unavailable-503": Row(refused(503), auth=Failure.STORE_UNAVAILABLE),
    "verifications-overloaded-503": Row(refused(503), auth=Failure.OVERLOADED),
    "failure-on-authenticated-repo-401": Row(refused(401), repo="shared", auth=Failure.BAD_SECRET),
    # 4. A principal that lapsed (e.g. taken from a cache) since it was verified.
    "key-expired-401": Row(refused(401), auth=EXPIRED),
    "key-expires-now-401": Row(refused(401), auth=EXPIRES_NOW),
    "token-past-grace-401": Row(refused(401), auth=PAST_GRACE),
    "token-grace-ends-now-401": Row(refused(401), auth=GRACE_ENDS_NOW),
    "token-in-grace": Row(FORWARD, auth=IN_GRACE, as_principal=True),
    "expired-key-on-authenticated-repo-401": Row(refused(401), repo="shared", auth=EXPIRED),
    # 5. Org-scoped permissions.
    "org-read-get": Row(FORWARD, auth=READER, as_principal=True),
    "org-read-head": Row(FORWARD, method="HEAD", auth=READER, as_principal=True),
    "org-read-options-not-preflight": Row(FORWARD, method="OPTIONS", auth=READER, as_principal=True),
    "org-read-put-403": Row(refused(403), method="PUT", auth=READER),
    "org-read-post-403": Row(refused(403), method="POST", auth=READER),
    "org-read-delete-403": Row(refused(403), method="DELETE", auth=READER),
    "org-read-patch-403": Row(refused(403), method="PATCH", auth=READER),
    "org-write-get": Row(FORWARD, auth=WRITER, as_principal=True),
    "org-write-put": Row(FORWARD, method="PUT", auth=WRITER, as_principal=True),
    "org-write-any-repo": Row(FORWARD, repo="unlisted", method="POST", auth=WRITER, as_principal=True),
    "org-read-any-repo": Row(FORWARD, repo="unlisted", auth=READER, as_principal=True),
    # 5. Repo-scoped grants.
    "grant-read-get": Row(FORWARD, auth=GRANT_READ, as_principal=True),
    "grant-read-put-403": Row(refused(403), method="PUT", auth=GRANT_READ),
    "grant-read-other-repo-403": Row(refused(403), repo="unlisted", auth=GRANT_READ),
    "grant-write-get": Row(FORWARD, auth=GRANT_WRITE, as_principal=True),
    "grant-write-put": Row(FORWARD, method="PUT", auth=GRANT_WRITE, as_principal=True),
    "grant-write-other-repo-403": Row(refused(403), repo="unlisted", method="PUT", auth=GRANT_WRITE),
    # 5. Keys that hold nothing here.
    "manage-org-users-alone-403": Row(refused(403), auth=MANAGER),
    "manage-org-users-alone-put-403": Row(refused(403), method="PUT", auth=MANAGER),
    "no-permissions-403": Row(refused(403), auth=NOTHING),
    "other-org-key-403": Row(refused(403), auth=OTHER_ORG),
    "other-org-key-put-403": Row(refused(403), method="PUT", auth=OTHER_ORG),
    # 5. `authenticated` repos: any valid key of any org may read, not write.
    "authenticated-repo-other-org-get": Row(FORWARD, repo="shared", auth=OTHER_ORG, as_principal=True),
    "authenticated-repo-other-org-put-403": Row(refused(403), repo="shared", method="PUT", auth=OTHER_ORG),
    "authenticated-repo-manager-get": Row(FORWARD, repo="shared", auth=MANAGER, as_principal=True),
    "authenticated-repo-reader-put-403": Row(refused(403), repo="shared", method="PUT", auth=READER),
    "authenticated-repo-writer-put": Row(FORWARD, repo="shared", method="PUT", auth=WRITER, as_principal=True),
}


@pytest.mark.parametrize("row", TABLE.values(), ids=TABLE.keys())
def test_decide_table(row: Row) -> None:
    """Each request of the table gets the outcome and status of docs/architecture.md §3."""
    raw_path = f"/v1/services/{row.protocol}/acme/{row.repo}/main/x".encode()
    target = row.path_error or Target(row.protocol, "acme", row.repo, "main", raw_path)
    decision = decide(
        target=target, policy=row.policy, method=row.method, preflight=row.preflight, auth=row.auth, now=NOW
    )
    assert (decision.outcome, decision.status) == row.expected
    if decision.outcome is Outcome.FORWARD:
        assert decision.target is target
        assert decision.principal is (row.auth if row.as_principal else None)
    else:
        assert decision.principal is None
        assert decision.target is None
    if decision.outcome is Outcome.REFUSE:
        assert decision.error
        assert decision.detail


def test_decide_table_covers_every_failure() -> None:
    """Every way credentials can fail has a row in the table."""
    assert {row.auth for row in TABLE.values() if isinstance(row.auth, Failure)} == set(Failure)


@pytest.mark.parametrize(
    ("failure", "status", "retry_after"),
    [
        (Failure.MISSING, 401, None),
        (Failure.MALFORMED, 401, None),
        (Failure.AMBIGUOUS, 400, None),
        (Failure.UNKNOWN_TOKEN, 401, None),
        (Failure.BAD_SECRET, 401, None),
        (Failure.EXPIRED, 401, None),
        (Failure.REVOKED, 401, None),
        (Failure.WRONG_ORG, 401, None),
        # At least 1 s; the gate replaces it with the real wait (see gate.authenticate).
        (Failure.RATE_LIMITED, 429, 1),
        (Failure.STORE_UNAVAILABLE, 503, STORE_RETRY_AFTER),
        (Failure.OVERLOADED, 503, 1),
    ],
)
def test_refuse_maps_failure_to_status(failure: Failure, status: int, retry_after: int | None) -> None:
    """Each failure has one status, and a 503 says when to retry."""
    decision = refuse(failure)
    assert decision == Decision(
        Outcome.REFUSE, status, decision.error, decision.detail, failure=failure, retry_after=retry_after
    )
    assert decision.error
    assert decision.detail


def test_refuse_unknown_token_and_bad_secret_read_the_same() -> None:
    """An unknown token id and a wrong secret get the same answer, so ids cannot be probed."""
    unknown, bad = refuse(Failure.UNKNOWN_TOKEN), refuse(Failure.BAD_SECRET)
    assert (unknown.status, unknown.error, unknown.detail) == (bad.status, bad.error, bad.detail)


def test_decide_path_error_carries_its_message() -> None:
    """A path refusal says what was wrong with the path."""
    decision = decide(
        target=AmbiguousPath("dot segments are not allowed"),
        policy=ACME,
        method="GET",
        preflight="none",
        auth=None,
        now=NOW,
    )
    assert (decision.status, decision.error, decision.detail) == (400, "bad_path", "dot segments are not allowed")


@pytest.mark.parametrize(
    ("principal", "org", "repo", "access", "allowed"),
    [
        (READER, "acme", "era5", "read", True),
        (READER, "acme", "era5", "write", False),
        (WRITER, "acme", "era5", "read", True),
        (WRITER, "acme", "era5", "write", True),
        (WRITER, "other", "era5", "read", False),
        (GRANT_READ, "acme", "era5", "read", True),
        (GRANT_READ, "acme", "era5", "write", False),
        (GRANT_READ, "acme", "gfs", "read", False),
        (GRANT_READ, "other", "era5", "read", False),
        (GRANT_WRITE, "acme", "era5", "read", True),
        (GRANT_WRITE, "acme", "era5", "write", True),
        (GRANT_WRITE, "acme", "gfs", "write", False),
        (MANAGER, "acme", "era5", "read", False),
        (MANAGER, "acme", "era5", "write", False),
        (NOTHING, "acme", "era5", "read", False),
        (OTHER_ORG, "acme", "era5", "read", False),
        (OTHER_ORG, "other", "era5", "write", True),
        (key(grants={"era5": "admin"}), "acme", "era5", "read", False),
    ],
)
def test_principal_may(principal: Principal, org: str, repo: str, access: Access, allowed: bool) -> None:
    """A key's own grants allow reading and writing in its own org only, as they say."""
    assert principal.may(org, repo, access) is allowed


@pytest.mark.parametrize(
    ("principal", "now", "failure"),
    [
        (READER, NOW, None),
        (EXPIRED, NOW, Failure.EXPIRED),
        (EXPIRES_NOW, NOW, Failure.EXPIRED),
        (EXPIRES_NOW, NOW - 0.001, None),
        (PAST_GRACE, NOW, Failure.REVOKED),
        (GRACE_ENDS_NOW, NOW, Failure.REVOKED),
        (GRACE_ENDS_NOW, NOW - 0.001, None),
        (IN_GRACE, NOW, None),
        (IN_GRACE, NOW + 3600, Failure.REVOKED),
        (key(expires_at=NOW - 1, not_after=NOW - 1), NOW, Failure.REVOKED),
    ],
)
def test_principal_lapsed(principal: Principal, now: float, failure: Failure | None) -> None:
    """A principal lapses when its key expires or its token's grace ends, at that instant."""
    assert principal.lapsed(now) is failure


@pytest.mark.parametrize(
    ("expires_at", "not_after", "valid_until"),
    [
        (NOW + DAY, None, NOW + DAY),
        (NOW + DAY, NOW + 60, NOW + 60),
        (NOW + 60, NOW + DAY, NOW + 60),
    ],
)
def test_principal_valid_until_is_the_earlier_end(
    expires_at: float, not_after: float | None, valid_until: float
) -> None:
    """A principal is valid until its key expires or its token's grace ends, whichever comes first."""
    assert key(expires_at=expires_at, not_after=not_after).valid_until == valid_until


def test_principal_label_is_name_at_org() -> None:
    """A principal is named ``name@org``."""
    assert READER.label == "key@acme"
