"""Tests for fluxauth.decision.target: compute URLs are decided on the raw bytes, ambiguity is refused."""

from __future__ import annotations

import pytest

from fluxauth.config.settings import DEFAULT_PROTOCOLS
from fluxauth.decision.target import (
    Target,
    check_query,
    parse_target,
)
from fluxauth.errors import AmbiguousPath, NotComputePath, PathError
from fluxauth.names import check_org

PROTOCOLS = frozenset(DEFAULT_PROTOCOLS)
BASE = b"/v1/services/tiles/acme/era5/main"

ACCEPTED = [
    # The examples of docs/architecture.md §1 (their query strings travel separately).
    (
        b"/v1/services/tiles/acme/era5/main/surface/tiles/WebMercatorQuad/3/2/4",
        ("tiles", "acme", "era5", "main"),
    ),
    (b"/v1/services/wms/acme/gfs/main/wms", ("wms", "acme", "gfs", "main")),
    (b"/v1/services/dap2/acme/hindcast/main/regrid/main/opendap", ("dap2", "acme", "hindcast", "main")),
    (b"/v1/services/edr/acme/gfs/main/solar/edr/position", ("edr", "acme", "gfs", "main")),
    # Shapes of the group and service parts.
    (b"/v1/services/zarr/acme/era5/main", ("zarr", "acme", "era5", "main")),
    (b"/v1/services/zarr/acme/era5/main/", ("zarr", "acme", "era5", "main")),
    (b"/v1/services/tiles/acme/era5/main/a/b/c/tiles/0/0/0", ("tiles", "acme", "era5", "main")),
    (b"/v1/services/tiles/acme/era5/main/surface/tiles/", ("tiles", "acme", "era5", "main")),
    (b"/v1/services/zarr/acme/era5/main/.zmetadata", ("zarr", "acme", "era5", "main")),
    (b"/v1/services/zarr/acme/era5/main//double//slash", ("zarr", "acme", "era5", "main")),
    # Names and refs in their full alphabets.
    (b"/v1/services/tiles/acme-2/Era5_v1.0/v1.2.3/x", ("tiles", "acme-2", "Era5_v1.0", "v1.2.3")),
    (b"/v1/services/tiles/acme/era5/0123456789abcdef0123/x", ("tiles", "acme", "era5", "0123456789abcdef0123")),
    (b"/v1/services/tiles/acme/era5/release-1+build@2/x", ("tiles", "acme", "era5", "release-1+build@2")),
    # Escapes after the decided segments that every reader decodes the same way.
    (b"/v1/services/edr/acme/gfs/main/edr/items/a%20b", ("edr", "acme", "gfs", "main")),
    (b"/v1/services/edr/acme/gfs/main/edr/items/%C3%A9t%C3%A9", ("edr", "acme", "gfs", "main")),
    (b"/v1/services/edr/acme/gfs/main/edr/items/%2541", ("edr", "acme", "gfs", "main")),
    (b"/v1/services/edr/acme/gfs/main/edr/items/a%3Bb", ("edr", "acme", "gfs", "main")),
    (b"/v1/services/edr/acme/gfs/main/edr/items/a;b", ("edr", "acme", "gfs", "main")),
    (b"/v1/services/edr/acme/gfs/main/edr/items/...", ("edr", "acme", "gfs", "main")),
]

AMBIGUOUS = [
    # Dot segments, plain and encoded once, twice, three times.
    pytest.param(BASE + b"/../../other/repo/main/x", id="dotdot"),
    pytest.param(BASE + b"/./x", id="dot"),
    pytest.param(BASE + b"/x/..", id="trailing-dotdot"),
    pytest.param(BASE + b"/%2e%2e/x", id="%2e%2e"),
    pytest.param(BASE + b"/%2E%2E/x", id="%2E%2E"),
    pytest.param(BASE + b"/.%2e/x", id=".%2e"),
    pytest.param(BASE + b"/%2e/x", id="%2e"),
    pytest.param(BASE + b"/%252e%252e/x", id="%252e%252e"),
    pytest.param(BASE + b"/%25252e%25252e/x", id="%25252e%25252e"),
    pytest.param(BASE + b"/%2525252541", id="too-many-layers"),
    # Tomcat and Spring strip ;params: "..;" is a dot segment to them.
    pytest.param(BASE + b"/..;/x", id="..;"),
    pytest.param(BASE + b"/..;jsessionid=1/x", id="..;param"),
    pytest.param(BASE + b"/..%3B/x", id="..%3B"),
    pytest.param(BASE + b"/..%3bx/y", id="..%3b"),
    pytest.param(BASE + b"/%2e%2e%3B/x", id="%2e%2e%3B"),
    pytest.param(b"/v1/services/tiles/acme/era5/main%3Bx/y", id="%3B-in-ref"),
    pytest.param(b"/v1/services/tiles/acme/era5/main;x/y", id=";-in-ref"),
    # Encoded separators and control characters.
    pytest.param(BASE + b"/a%2Fb", id="%2F"),
    pytest.param(BASE + b"/a%2fb", id="%2f"),
    pytest.param(BASE + b"/a%252Fb", id="%252F"),
    pytest.param(BASE + b"/a%5Cb", id="%5C"),
    pytest.param(BASE + b"/a%5cb", id="%5c"),
    pytest.param(BASE + b"/a%3Fb", id="%3F"),
    pytest.param(BASE + b"/a%23b", id="%23"),
    pytest.param(BASE + b"/a%00b", id="%00"),
    pytest.param(BASE + b"/a%0Ab", id="%0A"),
    pytest.param(BASE + b"/a%0D%0Ab", id="%0D%0A"),
    pytest.param(BASE + b"/a%7Fb", id="%7F"),
    pytest.param(b"/v1/services/tiles/ac%2Fme/era5/main/x", id="%2F-in-org"),
    pytest.param(b"/v1/services/tiles/acme/era%35/main/x", id="escape-in-repo"),
    # Raw bytes that no reader should have to interpret.
    pytest.param(BASE + b"/a\\b", id="backslash"),
    pytest.param(b"/v1/services/tiles/acme\\..\\other/era5/main", id="backslash-in-org"),
    pytest.param(BASE + b"/a\x00b", id="NUL"),
    pytest.param(BASE + b"/a\x01b", id="SOH"),
    pytest.param(BASE + b"/a\tb", id="tab"),
    pytest.param(BASE + b"/a\rb", id="CR"),
    pytest.param(BASE + b"/a\nb", id="LF"),
    pytest.param(BASE + b"/a\x7fb", id="DEL"),
    pytest.param(BASE + b"/a b", id="space"),
    pytest.param(BASE + b"/a#b", id="hash"),
    pytest.param(BASE + b"/a?b", id="question-mark"),
    pytest.param(BASE + "/été".encode(), id="raw-utf8"),
    pytest.param(BASE + b"/\xff", id="raw-invalid-utf8"),
    # Empty decided segments.
    pytest.param(b"/v1/services//acme/era5/main/x", id="empty-protocol"),
    pytest.param(b"/v1/services/tiles//era5/main/x", id="empty-org"),
    pytest.param(b"/v1/services/tiles/acme//main/x", id="empty-repo"),
    pytest.param(b"/v1/services/tiles/acme/era5//x", id="empty-ref"),
    pytest.param(b"/v1/services/tiles/acme/era5/", id="empty-ref-trailing-slash"),
    # Decided segments that are not plain names.
    pytest.param(b"/v1/services/tiles/../era5/main/x", id="dotdot-org"),
    pytest.param(b"/v1/services/tiles/acme/./main/x", id="dot-repo"),
    pytest.param(b"/v1/services/tiles/acme/era5/../x", id="dotdot-ref"),
    pytest.param(b"/v1/services/tiles/-acme/era5/main/x", id="org-leading-dash"),
    pytest.param(b"/v1/services/tiles/.acme/era5/main/x", id="org-leading-dot"),
    pytest.param(b"/v1/services/tiles/ac:me/era5/main/x", id="colon-in-org"),
    pytest.param(b"/v1/services/tiles/" + b"a" * 101 + b"/era5/main/x", id="org-too-long"),
    pytest.param(b"/v1/services/ti%6Ces/acme/era5/main/x", id="escaped-protocol"),
    pytest.param(b"/v1/services/tiles./acme/era5/main/x", id="protocol-with-dot"),
    pytest.param(b"/v1/services/../acme/era5/main/x", id="dotdot-protocol"),
    # Invalid or overlong UTF-8 once decoded (overlong '.' and '/').
    pytest.param(BASE + b"/%C0%AE%C0%AE/x", id="overlong-dotdot"),
    pytest.param(BASE + b"/%C0%AF", id="overlong-slash"),
    pytest.param(BASE + b"/%E0%80%AE", id="overlong-3-byte-dot"),
    pytest.param(BASE + b"/%FF", id="invalid-utf8"),
    pytest.param(BASE + b"/%C3", id="truncated-utf8"),
    pytest.param(BASE + b"/%ED%A0%80", id="surrogate"),
    pytest.param(BASE + b"/%25C0%25AE", id="double-encoded-overlong"),
    # Malformed escapes, which readers repair in different ways.
    pytest.param(BASE + b"/%zz", id="%zz"),
    pytest.param(BASE + b"/%", id="lone-percent"),
    pytest.param(BASE + b"/%4", id="short-escape"),
    pytest.param(BASE + b"/100%25", id="%25-then-nothing"),
    pytest.param(BASE + b"/%25zz", id="%25zz"),
]

NOT_COMPUTE = [
    pytest.param(b"/", id="root"),
    pytest.param(b"/v1/services", id="no-trailing-slash"),
    pytest.param(b"/v1/services/", id="prefix-only"),
    pytest.param(b"/v1/servicesX/tiles/acme/era5/main", id="other-prefix"),
    pytest.param(b"/v2/services/tiles/acme/era5/main", id="other-version"),
    pytest.param(b"/V1/services/tiles/acme/era5/main", id="upper-case-prefix"),
    pytest.param(b"/v1/%73ervices/tiles/acme/era5/main", id="escaped-prefix"),
    pytest.param(b"//v1/services/tiles/acme/era5/main", id="double-slash-prefix"),
    pytest.param(b"/_fluxauth/healthz", id="internal"),
    pytest.param(b"/v1/services/tiles", id="protocol-only"),
    pytest.param(b"/v1/services/tiles/acme", id="no-repo"),
    pytest.param(b"/v1/services/tiles/acme/era5", id="missing-ref"),
    pytest.param(b"/v1/services/ftp/acme/era5/main/x", id="unknown-protocol"),
    pytest.param(b"/v1/services/Tiles/acme/era5/main/x", id="upper-case-protocol"),
    pytest.param(b"/v1/services/" + b"a" * 33 + b"/acme/era5/main/x", id="protocol-too-long"),
]


@pytest.mark.parametrize(("raw_path", "expected"), ACCEPTED)
def test_parse_target_accepts(raw_path: bytes, expected: tuple[str, str, str, str]) -> None:
    """A plain compute URL yields its protocol, org, repo and ref, and keeps the raw path."""
    target = parse_target(raw_path, PROTOCOLS)
    assert (target.protocol, target.org, target.repo, target.ref) == expected
    assert target.raw_path is raw_path


@pytest.mark.parametrize("raw_path", AMBIGUOUS)
def test_parse_target_refuses_ambiguous_path_with_400(raw_path: bytes) -> None:
    """A path that some reader could understand another way is refused with 400, not repaired."""
    with pytest.raises(AmbiguousPath) as caught:
        parse_target(raw_path, PROTOCOLS)
    assert caught.value.status == 400
    assert caught.value.error == "bad_path"


@pytest.mark.parametrize("raw_path", NOT_COMPUTE)
def test_parse_target_refuses_non_compute_path_with_404(raw_path: bytes) -> None:
    """Not a compute URL, or an unknown protocol: 404."""
    with pytest.raises(NotComputePath) as caught:
        parse_target(raw_path, PROTOCOLS)
    assert caught.value.status == 404
    assert caught.value.error == "not_found"


def test_parse_target_disabled_protocol_is_404() -> None:
    """A protocol that exists but is not among the enabled ones is not found."""
    with pytest.raises(NotComputePath):
        parse_target(b"/v1/services/zarr/acme/era5/main/.zmetadata", ("tiles", "wms"))
    assert parse_target(b"/v1/services/tiles/acme/era5/main/x", ("tiles", "wms")).protocol == "tiles"


def test_parse_target_configured_protocol_is_accepted() -> None:
    """An extra protocol from the configuration is accepted like a default one."""
    target = parse_target(b"/v1/services/wcs/acme/era5/main/wcs", frozenset({"wcs"}))
    assert target.protocol == "wcs"


# Plain characters, but names that fluxauth.names would never let anyone create.
UNCREATABLE = [
    b"/v1/services/tiles/Acme/era5/main/x",  # orgs are lower case
    b"/v1/services/tiles/acme_corp/era5/main/x",  # no '_' in an org
    b"/v1/services/tiles/acme.corp/era5/main/x",  # nor '.'
    b"/v1/services/tiles/" + b"a" * 64 + b"/era5/main/x",  # at most 63
]


@pytest.mark.parametrize("raw_path", UNCREATABLE)
def test_parse_target_uncreatable_name_is_404(raw_path: bytes) -> None:
    """A path naming an org or repo that no command could create is not found, like an unknown org."""
    with pytest.raises(NotComputePath, match="no such org"):
        parse_target(raw_path, PROTOCOLS)


@pytest.mark.parametrize("org", ["acme", "acme-2", "a" * 63, "0"])
def test_parse_target_accepts_every_creatable_org(org: str) -> None:
    """Every org name the command line can create can be named in a path."""
    assert check_org(org) == org
    assert parse_target(f"/v1/services/tiles/{org}/era5/main/x".encode(), PROTOCOLS).org == org


def test_parse_target_path_errors_share_one_root() -> None:
    """Both refusals are PathError, so a caller can answer with ``status`` in one place."""
    assert issubclass(AmbiguousPath, PathError)
    assert issubclass(NotComputePath, PathError)


def test_target_repository_is_org_slash_repo() -> None:
    """``repository`` names the repo as ``org/repo``."""
    target = Target("tiles", "acme", "era5", "main", b"/v1/services/tiles/acme/era5/main")
    assert target.repository == "acme/era5"


@pytest.mark.parametrize(
    "query",
    [
        b"",
        b"service=WMS&request=GetMap&layers=t2m&bbox=-90,-180,90,180",
        b"variables=t2m&style=raster/jet",
        b"coords=POINT(10%2050)",
        b"q=%C3%A9t%C3%A9",
        b"a=%00",  # encoded: forwarded as sent; the upstream decides what it means
    ],
)
def test_check_query_accepts_percent_encoded_ascii(query: bytes) -> None:
    """A percent-encoded ASCII query string passes unchanged."""
    assert check_query(query) is None


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("q=été".encode(), id="raw-utf8"),
        pytest.param(b"q=\xff", id="raw-invalid-utf8"),
        pytest.param(b"q=a b", id="space"),
        pytest.param(b"q=\x00", id="NUL"),
        pytest.param(b"q=\t", id="tab"),
        pytest.param(b"q=a\r\nX-Injected: 1", id="CRLF"),
        pytest.param(b"q=\x7f", id="DEL"),
        pytest.param(b"q=a#frag", id="hash"),
    ],
)
def test_check_query_refuses_raw_non_ascii_and_control_bytes(query: bytes) -> None:
    """A query string with raw non-ASCII, whitespace or control bytes is refused with 400."""
    with pytest.raises(AmbiguousPath) as caught:
        check_query(query)
    assert caught.value.status == 400
