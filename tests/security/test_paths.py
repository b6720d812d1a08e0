"""Path confusion: fluxauth must never authorize one org/repo while an upstream serves another.

Every target of ``tests/data/path_confusion.txt`` is sent byte for byte to
fluxauth as ``fluxauth serve`` runs it (uvicorn, httptools, the serve
protocol's limits) with a key that may read ``acme/era5`` only. Refusals must
have the corpus's status and never reach the upstream. For every target that
is forwarded, three real upstream readers (Starlette under uvicorn, nginx, the
standard library's wsgiref) report how they read it, and each must resolve it
to exactly the org/repo/ref fluxauth decided on, which the key may read.
A hypothesis property does the same with generated paths.

Defences under test: ``fluxauth.decision.target.parse_target`` (dot segments at any
depth of decoding, ``;`` tricks, encoded separators, Unicode folding,
closed alphabets for the decided segments, ``..`` glued to them), the decision
on exactly the forwarded bytes, ``check_framing``'s URL length limit and the
serve protocol's head limit.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import httptools
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.decision.policy import Outcome
from fluxauth.decision.target import check_query, parse_target
from fluxauth.errors import AmbiguousPath
from fluxauth.manage.admin import Admin
from tests.support.readers import (
    NginxReader,
    Reader,
    StarletteReader,
    WsgiReader,
    basic_value,
    get_raw,
    load_corpus,
)
from tests.support.servers import Proxy, start_proxy

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

CORPUS = load_corpus()
ALLOWED = {("acme", "era5"), ("acme", "pub")}  # the key's grant, and a public repo


@pytest.fixture
def reader_token(admin: Admin) -> str:
    admin.create_org("acme")
    admin.create_org("other")
    admin.enable_service("acme", "tiles")
    admin.enable_service("other", "tiles")
    admin.set_visibility("acme", "pub", "public")
    return admin.create_key("acme", "reader", repo_grants={"era5": "read"}).token


@pytest.fixture(scope="module")
def readers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Reader]]:
    with contextlib.ExitStack() as stack:
        yield {
            "starlette": stack.enter_context(StarletteReader()),
            "nginx": stack.enter_context(NginxReader(tmp_path_factory.mktemp("nginx-reader"))),
            "wsgiref": stack.enter_context(WsgiReader()),
        }


@pytest.fixture
def fronts(
    readers: dict[str, Reader], settings: Settings, store_path: str, clock: FakeClock, reader_token: str
) -> Iterator[dict[str, Proxy]]:
    """One fluxauth in front of each reader."""
    served = {
        name: start_proxy(dataclasses.replace(settings, upstream=r.url), store_path, clock)
        for name, r in readers.items()
    }
    yield served
    for front in served.values():
        front.server.stop()


def check_case(front: Proxy, reader: Reader, credentials: bytes, target: bytes, expect: int | None) -> list[str]:
    """Send ``target``; the problems found (empty when fluxauth and the reader agree)."""
    before = len(front.decisions)
    response = get_raw(front.port, target, [(b"Authorization", credentials)])
    decision = front.decisions[-1] if len(front.decisions) > before else None
    problems = []
    if expect is not None and response.status != expect:
        problems.append(f"status {response.status}, expected {expect}: {response.body[:200]!r}")
    if response.status != 200:
        if decision is not None and decision.outcome is Outcome.FORWARD:
            problems.append(f"forwarded, but the client got {response.status}")
        return problems
    if decision is None or decision.outcome is not Outcome.FORWARD or decision.target is None:
        return [*problems, f"200 without a decision to forward: {decision}"]
    decided = decision.target
    if (decided.org, decided.repo) not in ALLOWED:
        problems.append(f"authorized {decided.repository}, which the key may not read")
    reading = reader.parse(response)
    want = (decided.protocol, decided.org, decided.repo, decided.ref)
    for route in reading.routes:
        if route != want:
            problems.append(f"{reader.name} read {route}, fluxauth decided {want}")
    received_path = reading.raw_target.split("?", 1)[0].encode("latin-1")
    if received_path != decided.raw_path:
        problems.append(f"{reader.name} received {received_path!r}, fluxauth decided on {decided.raw_path!r}")
    return problems


def test_security_corpus_is_large_and_covers_every_class() -> None:
    """The corpus holds at least 150 targets and each class of the issue."""
    assert len(CORPUS) >= 150
    targets = [case.target.lower() for case in CORPUS]
    for needle in (
        b"/../",
        b"%2e%2e",
        b"%252e",
        b"%2f",
        b"%5c",
        b"\\",
        b"//",
        b";",
        b"%3b",
        b"%00",
        b"\x00",
        b"%c0%ae",
    ):
        assert any(needle in target for target in targets), needle
    for needle in (b"#", b"?", b"http://"):
        assert any(needle in target for target in targets), needle
    assert any(len(case.target) > 65536 for case in CORPUS)
    assert {case.expect for case in CORPUS} >= {200, 400, 403, 404, 414, 431}


@pytest.mark.parametrize("reader_name", ["starlette", "nginx", "wsgiref"])
def test_security_corpus_refused_or_read_alike(
    reader_name: str, readers: dict[str, Reader], fronts: dict[str, Proxy], reader_token: str
) -> None:
    """Each corpus target gets its status; what is forwarded, the reader resolves to the decided org/repo/ref."""
    credentials = basic_value("acme", reader_token)
    failures = []
    for case in CORPUS:
        problems = check_case(fronts[reader_name], readers[reader_name], credentials, case.target, case.expect)
        failures += [f"{case.target[:120]!r} ({case.note}): {problem}" for problem in problems]
    forwarded = sum(1 for case in CORPUS if case.expect == 200)
    print(f"{reader_name}: {len(CORPUS)} targets, {forwarded} forwarded and read alike, the rest refused")
    assert not failures, "\n".join(failures)


def test_security_corpus_refusals_never_reach_the_upstream(
    readers: dict[str, Reader], fronts: dict[str, Proxy], reader_token: str
) -> None:
    """The upstream receives exactly the corpus's forwarded targets, not one refused request more."""
    reader = readers["starlette"]
    assert isinstance(reader, StarletteReader)
    credentials = basic_value("acme", reader_token)
    for case in CORPUS:
        before = reader.requests
        status = get_raw(fronts["starlette"].port, case.target, [(b"Authorization", credentials)]).status
        assert reader.requests - before == (1 if status == 200 else 0), case


def _refused(path: bytes, query: bytes) -> bool:
    try:
        parse_target(path, frozenset({"tiles"}))
        check_query(query)
    except AmbiguousPath:
        return True
    return False


def test_security_corpus_refusals_are_fluxauths_own() -> None:
    """Every 400 of the corpus that the HTTP parser lets through is refused by fluxauth's own path parser.

    Defence: ``parse_target``/``check_query``, whatever server is in front
    (the target is split as uvicorn splits it, with httptools.parse_url).
    """
    reached = 0
    for case in CORPUS:
        if case.expect != 400 or not all(0x21 <= byte <= 0x7E for byte in case.target):
            continue  # raw control, space or non-ASCII bytes: llhttp refuses the request line
        url = httptools.parse_url(case.target)
        reached += 1
        assert _refused(url.path, url.query or b""), case
    print(f"{reached} of the corpus's 400s reach fluxauth and are refused by its parser")
    assert reached > 150


# -- generated paths -------------------------------------------------------------

# Names that lead to allowed and forbidden repos, and pieces that readers
# decode, fold, split or resolve differently; segments are mostly one or the
# other, sometimes both glued together ("era5%2f..").
NAMES = ["acme", "era5", "secret", "other", "pub", "main", "tiles", "x", "tiles/0/0/0"]
TRICKS = [
    "", ".", "..", "...", "%2e", "%2E", "%2e%2e", "%252e", "%25", "%2f", "%2F", "%252f", "%5c", "\\",
    ";", "%3b", "%3B", "..;", "%00", "%0a", "%23", "%3f", "#", "?", " ",
    "%c0%ae", "%c0%af", "%ef%bc%8e", "%ef%bc%8f", "%e2%80%a5", "%20", "..%20", "%41", "%c3%a9", "+", "@",
]  # fmt: skip
PIECE = st.one_of(st.sampled_from(NAMES), st.sampled_from(TRICKS))
SEGMENT = st.one_of(
    st.sampled_from(NAMES), st.sampled_from(NAMES), PIECE, st.lists(PIECE, min_size=2, max_size=3).map("".join)
)
PATHS = st.builds(
    lambda prefix, segments: prefix + "/".join(segments),
    st.sampled_from(["/v1/services/tiles/", "/v1/services/tiles/acme/", "/v1/services/tiles/acme/era5/main/"]),
    st.lists(SEGMENT, min_size=1, max_size=8),
)


def test_security_generated_paths_are_read_alike(
    readers: dict[str, Reader], fronts: dict[str, Proxy], reader_token: str
) -> None:
    """Hypothesis: whatever path fluxauth forwards, Starlette and nginx route it to the decided org/repo/ref."""
    credentials = basic_value("acme", reader_token)
    forwarded: list[str] = []

    @hypothesis_settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(path=PATHS)
    def check(path: str) -> None:
        target = path.encode("utf-8")
        for name in ("starlette", "nginx"):
            problems = check_case(fronts[name], readers[name], credentials, target, expect=None)
            assert not problems, (target, problems)
        if fronts["starlette"].decisions[-1:] and fronts["starlette"].decisions[-1].outcome is Outcome.FORWARD:
            forwarded.append(path)

    check()
    print(f"{len(forwarded)} generated paths forwarded and read alike by Starlette and nginx")
    assert forwarded  # the strategy does reach the allowed repo
