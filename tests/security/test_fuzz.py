"""Fuzzing with hypothesis: the Basic parser, the path parser, the decision, and whole requests on the wire.

Deterministic (``derandomize=True``) and bounded (``max_examples``) so that the
suite stays fast; each property names the defence whose removal breaks it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import posixpath
import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.credentials import MAX_HEADER_BYTES, BasicCredentials, parse_basic
from fluxauth.decision.policy import READ_METHODS, Decision, Failure, Outcome, Principal, decide
from fluxauth.decision.target import Target, check_query, parse_target
from fluxauth.errors import AmbiguousPath, MalformedCredentials, NotComputePath, PathError
from fluxauth.manage.admin import Admin
from fluxauth.model import OrgPolicy, ServiceRecord
from tests.support.readers import get_raw, request_bytes, send_raw
from tests.support.servers import Proxy, start_proxy

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

FAST = hypothesis_settings(max_examples=1000, deadline=None, derandomize=True, database=None)
PROTOCOLS = frozenset({"tiles", "wms"})


# -- the Basic header ----------------------------------------------------------

TOKEN = "ema_0123456789abcdef_" + "A" * 40
CREDENTIAL_TEXT = st.one_of(
    st.text(max_size=80),
    st.builds(
        lambda user, rest: f"{user}:{rest}", st.sampled_from(["acme", "", "ACME", "acme\x00"]), st.text(max_size=70)
    ),
    st.builds(lambda user, cut: f"{user}:{TOKEN[:cut]}", st.sampled_from(["acme", "beta"]), st.integers(0, len(TOKEN))),
)
AUTHORIZATION = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda scheme, text, pad: scheme + b" " + base64.b64encode(text.encode("utf-8", "surrogatepass")) + pad,
        st.sampled_from([b"Basic", b"basic", b"BASIC", b"Bearer", b"Digest", b"Negotiate", b"Basic ", b"Basic\t"]),
        CREDENTIAL_TEXT,
        st.sampled_from([b"", b"=", b"==", b" ", b"\t", b"!", b"\x00"]),
    ),
    st.builds(lambda raw: b"Basic " + base64.b64encode(raw), st.binary(max_size=120)),
)


@FAST
@given(values=st.lists(AUTHORIZATION, max_size=3))
def test_fuzz_parse_basic_only_refuses_or_parses(values: list[bytes]) -> None:
    """Any Authorization header values: a credential, no credential, or MalformedCredentials (400/401), nothing else.

    Defence: ``parse_basic`` catches every decoding error (base64, UTF-8) and
    refuses what is not ``org:ema_...``; an escaping exception would be a 500.
    """
    try:
        parsed = parse_basic(values)
    except MalformedCredentials as exc:
        refused: MalformedCredentials | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.status in (400, 401)
        assert refused.status == 400 or len(values) == 1
        return
    if parsed is None:
        assert values == []
        return
    assert isinstance(parsed, BasicCredentials)
    assert len(values) == 1
    assert len(values[0]) <= MAX_HEADER_BYTES
    # What was parsed is exactly what was sent: no lenient base64, no trimmed secret.
    encoded = values[0].strip().partition(b" ")[2].strip()
    assert base64.b64decode(encoded, validate=True) == parsed.username_raw + b":" + parsed.password_raw
    assert parsed.password_raw.decode() == f"ema_{parsed.token.token_id}_{parsed.token.secret}"
    assert parsed.token.secret not in repr(parsed)


def test_fuzz_parse_basic_rejects_lenient_base64() -> None:
    """Non-alphabet bytes inside the base64 are refused, not skipped (binascii's default would skip them)."""
    good = base64.b64encode(f"acme:{TOKEN}".encode())
    assert parse_basic([b"Basic " + good]) is not None
    with pytest.raises(MalformedCredentials):
        parse_basic([b"Basic " + good[:10] + b"!" + good[10:]])
    assert binascii.a2b_base64(good[:10] + b"!" + good[10:]) == base64.b64decode(good)  # what leniency would do


# -- the path ------------------------------------------------------------------

NAMES = ["acme", "era5", "main", "x", "A", "a-b", "v1.2"]
TRICKS = [
    "", ".", "..", "...", "%2e", "%2E", "%252e", "%25", "%2f", "%5c", "\\", ";", "%3b", "%00", "%23", "%3f",
    "%c0%ae", "%ef%bc%8e", "%ef%bc%8f", "%e2%80%a5", "%20", "%c2%a0", "%e2%80%8b", "%41", "%c3%a9", "+", "@",
    "%zz", "%", "-", "_", "~", "..%20", ".%20", "..%c2%a0", "..;x", "%2e%2e%3b", "..%e3%80%80", "era5.", "main..",
]  # fmt: skip
PIECE = st.one_of(st.sampled_from(NAMES), st.sampled_from(TRICKS))
# Mostly whole names or whole tricks; sometimes glued together ("era5%2f..").
SEGMENT = st.one_of(PIECE, PIECE, st.lists(PIECE, min_size=2, max_size=4).map("".join))
CRAFTED_PATHS = st.builds(
    lambda prefix, segments: (prefix + "/".join(segments)).encode("utf-8"),
    st.sampled_from(
        ["/v1/services/", "/v1/services/tiles/", "/v1/services/tiles/acme/", "/v1/services/tiles/acme/era5/"]
    ),
    st.lists(SEGMENT, min_size=1, max_size=8),
)
RAW_PATHS = st.one_of(CRAFTED_PATHS, st.binary(max_size=120).map(lambda tail: b"/v1/services/tiles/" + tail))

_SEPARATORS = re.compile(r"[/\\]")


def _resolve(path: str) -> list[str]:
    """RFC 3986 remove_dot_segments with slashes merged, as nginx and most file servers do."""
    return posixpath.normpath(path).split("/")[1:]


def readings(raw_path: bytes) -> dict[str, list[str]]:
    """How readers other than fluxauth split ``raw_path`` into segments (emulated, in process).

    Starlette/uvicorn decode once; nginx decodes, resolves dots and merges
    slashes; IIS-style readers decode twice; Tomcat/Spring strip ``;params``;
    Windows reads ``\\`` as ``/`` and trims trailing dots and spaces; some
    frameworks fold Unicode compatibility forms (NFKC) or strip whitespace.
    """
    once = unquote(raw_path.decode("ascii"), errors="surrogateescape")
    twice = unquote(once, errors="surrogateescape")
    tomcat = "/".join(segment.split(";", 1)[0] for segment in raw_path.decode("ascii").split("/"))
    windows = "/".join(part.rstrip(". ") or part for part in _SEPARATORS.split(once))
    nfkc = unicodedata.normalize("NFKC", once)
    stripped = "/".join(segment.strip() for segment in nfkc.split("/"))
    return {
        "decoded once": once.split("/")[1:],
        "decoded, dots resolved": _resolve(once),
        "decoded twice, dots resolved": _resolve(twice),
        "params stripped, decoded, dots resolved": _resolve(unquote(tomcat, errors="surrogateescape")),
        "windows": _resolve(windows.replace("\\", "/")),
        "nfkc, stripped, dots resolved": _resolve(stripped),
    }


@hypothesis_settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(raw_path=RAW_PATHS)
def test_fuzz_parse_target_every_reader_agrees(raw_path: bytes) -> None:
    """A path is refused (PathError only) or every emulated reader finds the same protocol/org/repo/ref in it.

    Defence: ``parse_target``'s refusal of dot segments at any depth of
    decoding, of ``;`` tricks, encoded separators, whitespace- and
    NFKC-disguised dots, and of anything but plain names in the decided four.
    """
    try:
        target = parse_target(raw_path, PROTOCOLS)
    except PathError as exc:
        refused: PathError | None = exc
    else:
        refused = None
    if refused is not None:
        assert isinstance(refused, AmbiguousPath | NotComputePath)
        assert refused.status in (400, 404)
        return
    decided = ["v1", "services", target.protocol, target.org, target.repo, target.ref]
    assert target.raw_path == raw_path
    for reader, segments in readings(raw_path).items():
        assert segments[:6] == decided, (reader, raw_path, segments[:6])


@FAST
@given(query=st.binary(max_size=100))
def test_fuzz_check_query_refuses_or_passes(query: bytes) -> None:
    """A query string is forwarded as sent only if it is printable ASCII without '#'.

    Defence: ``check_query``; anything else could be re-encoded (or split) differently upstream.
    """
    try:
        check_query(query)
    except AmbiguousPath:
        assert not query.isascii() or re.search(rb"[\x00-\x20\x7f#]", query)
        return
    assert query.isascii()
    assert not re.search(rb"[\x00-\x20\x7f#]", query)


# -- the decision ----------------------------------------------------------------

NOW = 1_800_000_000.0
REPOS = ["era5", "gfs", "shared", "open"]
METHODS = ["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "get", "TRACE"]

principals = st.builds(
    Principal,
    org=st.sampled_from(["acme", "beta"]),
    name=st.just("key"),
    permissions=st.frozensets(st.sampled_from(["read", "write", "manage_org_users"])),
    repo_grants=st.dictionaries(st.sampled_from(REPOS), st.sampled_from(["read", "write"]), max_size=3),
    expires_at=st.sampled_from([NOW - 1, NOW, NOW + 1, NOW + 86400]),
    not_after=st.sampled_from([None, NOW - 1, NOW, NOW + 60]),
)
policies = st.one_of(
    st.none(),
    st.builds(
        lambda services, repos: OrgPolicy("acme", services, repos),
        st.dictionaries(
            st.sampled_from(["tiles", "wms"]),
            st.builds(ServiceRecord, st.just("acme"), st.sampled_from(["tiles", "wms"]), st.booleans(), st.booleans()),
            max_size=2,
        ),
        st.dictionaries(st.sampled_from(REPOS), st.sampled_from(["private", "authenticated", "public"]), max_size=4),
    ),
)

_FAILURE_STATUS = dict.fromkeys(Failure, 401) | {
    Failure.AMBIGUOUS: 400,
    Failure.RATE_LIMITED: 429,
    Failure.STORE_UNAVAILABLE: 503,
    Failure.OVERLOADED: 503,
}


def table(
    target: Target, policy: OrgPolicy | None, method: str, preflight: str, auth: Principal | Failure | None
) -> tuple[str, int]:
    """README's "What is decided" table, written out independently of ``decide``: (outcome, status)."""
    service = policy.services.get(target.protocol) if policy else None
    if policy is None or service is None or not service.enabled:
        return "refuse", 404
    if preflight == "allowed":
        return "preflight", 204
    if preflight == "denied":
        return "refuse", 403
    reading = method in ("GET", "HEAD", "OPTIONS")
    visibility = policy.repos.get(target.repo, "private")
    if reading and (service.is_public or visibility == "public"):
        return "forward", 200
    if auth is None:
        return "authenticate", 401
    if isinstance(auth, Failure):
        return "refuse", _FAILURE_STATUS[auth]
    if auth.expires_at <= NOW or (auth.not_after is not None and auth.not_after <= NOW):
        return "refuse", 401
    grant = auth.repo_grants.get(target.repo)
    own = auth.org == target.org and (
        "write" in auth.permissions or grant == "write" or (reading and ("read" in auth.permissions or grant == "read"))
    )
    if own or (reading and visibility == "authenticated"):
        return "forward", 200
    return "refuse", 403


@hypothesis_settings(max_examples=1000, deadline=None, derandomize=True, database=None)
@given(
    protocol=st.sampled_from(["tiles", "wms"]),
    repo=st.sampled_from(REPOS),
    policy=policies,
    method=st.sampled_from(METHODS),
    preflight=st.sampled_from(["none", "none", "allowed", "denied"]),
    auth=st.one_of(st.none(), st.sampled_from(list(Failure)), principals),
)
def test_fuzz_decide_never_allows_what_the_table_denies(
    protocol: str, repo: str, policy: OrgPolicy | None, method: str, preflight: str, auth: Principal | Failure | None
) -> None:
    """``decide`` gives the table's outcome and status for every combination; it never forwards what the table refuses.


    Defence: ``fluxauth.decision.policy.decide`` (deny by default; reads only for
    public and ``authenticated``; grants within the key's own org; expiry).
    """
    target = Target(protocol, "acme", repo, "main", f"/v1/services/{protocol}/acme/{repo}/main/x".encode())
    decision: Decision = decide(target=target, policy=policy, method=method, preflight=preflight, auth=auth, now=NOW)  # type: ignore[arg-type]
    expected = table(target, policy, method, preflight, auth)
    assert (decision.outcome.value, decision.status) == expected
    if decision.outcome is Outcome.FORWARD:
        assert decision.target is target
        assert method in READ_METHODS or isinstance(decision.principal, Principal)


# -- whole requests on the wire --------------------------------------------------


@pytest.fixture
def fuzz_world(admin: Admin) -> str:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    admin.set_visibility("acme", "pub", "public")
    return admin.create_key("acme", "reader", repo_grants={"era5": "read"}).token


@pytest.fixture
def front(settings: Settings, store_path: str, clock: FakeClock, fuzz_world: str) -> Iterator[Proxy]:
    served = start_proxy(dataclasses.replace(settings, rate_limit_failures=10_000), store_path, clock)
    yield served
    served.server.stop()


HEADER_NAMES = [
    b"Authorization", b"Origin", b"Access-Control-Request-Method", b"Access-Control-Request-Headers",
    b"X-Forwarded-For", b"X-Forwarded-Host", b"Forwarded", b"Connection", b"X-Fluxauth-Org", b"X_Fluxauth_Org",
    b"Expect", b"Upgrade", b"Cookie", b"Accept", b"Te", b"Proxy-Authorization", b"X-Original-URL",
]  # fmt: skip
HEADER_VALUE = st.binary(max_size=60).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b"").strip())


def test_fuzz_requests_on_the_wire_never_500(front: Proxy, fuzz_world: str) -> None:
    """Random methods, targets and headers through uvicorn and fluxauth: no 500, no forward the key may not have.

    Defences: every parser refuses with its own status (no exception reaches
    uvicorn's 500 handler), and the decision only forwards acme/era5 (the
    key's grant) or acme/pub (public).
    """
    valid = b"Basic " + base64.b64encode(f"acme:{fuzz_world}".encode())
    statuses: dict[int, int] = {}

    @hypothesis_settings(
        max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
    )
    @given(
        method=st.sampled_from([b"GET", b"HEAD", b"OPTIONS", b"DELETE", b"PROPFIND", b"TRACE", b"PATCH"]),
        target=st.one_of(
            st.sampled_from(
                [b"/v1/services/tiles/acme/" + repo + b"/main/_echo" for repo in (b"era5", b"pub", b"gfs")]
            ),
            st.sampled_from(
                [b"/v1/services/tiles/acme/era5/main/_echo/", b"/v1/services/tiles/acme/era5/main/a;b/_echo"]
            ),
            CRAFTED_PATHS,
            st.binary(min_size=1, max_size=40).map(lambda tail: b"/v1/services/tiles/acme/" + tail),
        ),
        query=st.one_of(st.just(b""), st.just(b"?a=1"), st.binary(max_size=20).map(lambda q: b"?" + q)),
        authorization=st.sampled_from([[valid], [valid], [valid], [], [valid, valid]]),
        headers=st.lists(st.tuples(st.sampled_from(HEADER_NAMES), HEADER_VALUE), max_size=3),
    )
    def check(
        method: bytes, target: bytes, query: bytes, authorization: list[bytes], headers: list[tuple[bytes, bytes]]
    ) -> None:
        before = len(front.decisions)
        sent = [(b"Authorization", value) for value in authorization] + headers
        data = request_bytes(target.replace(b" ", b"%20") + query.replace(b" ", b"+"), sent, method=method)
        try:
            status = send_raw(front.port, data, method=method.decode()).status
        except (ConnectionError, OSError):
            return  # the server hung up on bytes it could not parse: nothing decided, nothing forwarded
        statuses[status] = statuses.get(status, 0) + 1
        assert status != 500, data
        for decision in front.decisions[before:]:
            if decision.outcome is Outcome.FORWARD:
                assert decision.target is not None
                assert (decision.target.org, decision.target.repo) in {("acme", "era5"), ("acme", "pub")}

    check()
    print("statuses on the wire:", dict(sorted(statuses.items())))
    assert {200, 400, 401} <= set(statuses)


def test_fuzz_on_the_wire_sanity(front: Proxy, fuzz_world: str) -> None:
    """The wire fuzzer's fixture serves the key's repo (so that the fuzzer's 200s mean something)."""
    valid = b"Basic " + base64.b64encode(f"acme:{fuzz_world}".encode())
    assert get_raw(front.port, b"/v1/services/tiles/acme/era5/main/_echo", [(b"Authorization", valid)]).status == 200
    assert get_raw(front.port, b"/v1/services/tiles/acme/gfs/main/_echo", [(b"Authorization", valid)]).status == 403
