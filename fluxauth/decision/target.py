"""Compute URLs: ``/v1/services/{protocol}/{org}/{repo}/{ref}/{group...}/{service...}``.

The decision is made on exactly the bytes that are forwarded (ASGI ``raw_path``),
never on a decoded or normalized copy. A path that a server or upstream could
read another way is refused (``AmbiguousPath``, 400) rather than repaired:
auth proxies are broken most often where they and the upstream disagree on
what a path means (CVE-2021-32813 in Traefik, the ``..;/`` class in Tomcat
behind proxies, nginx ``merge_slashes`` surprises, double decoding in IIS).
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote_to_bytes

from fluxauth import names
from fluxauth.errors import AmbiguousPath, NotComputePath

if TYPE_CHECKING:
    from fluxauth.decision.routing import Routed, Routes


# The four decided segments follow the name rules of fluxauth/names.py. An
# org, repo or ref that is not a plain name (the repo rule: letters, digits,
# '.', '_', '-', starting with a letter or digit; refs also '+' and '@') is
# ambiguous (400); a plain one that is no org name names nothing that could
# exist (404, as an unknown org does).
_PROTOCOL = re.compile(names.PROTOCOL.encode())
_ORG = re.compile(names.ORG.encode())
_PLAIN_NAME = re.compile(names.REPO.encode())
_REF = re.compile(names.REF.encode())
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_CONTROL = re.compile(rb"[\x00-\x20\x7f\\#?]")
_DECODED_FORBIDDEN = re.compile(rb"[\x00-\x1f\x7f/\\?#]")
_DOTS = (b".", b"..")
_TEXT_DOTS = (".", "..")
_NON_ASCII = re.compile(rb"[\x80-\xff]")
# Unicode categories no path segment needs and some readers drop or break lines
# at: C1 controls, format characters (zero-width, bidi overrides), U+2028/9.
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})
_MAX_DECODES = 4  # enough to unwrap %25252e; each round can only shrink the segment


@dataclass(frozen=True, slots=True)
class Target:
    """The decided part of a compute URL; ``raw_path`` is what is forwarded, or ``routed`` says what instead."""

    protocol: str
    org: str
    repo: str
    ref: str
    raw_path: bytes
    routed: Routed | None = None  # set when a [[routes]] entry serves it (fluxauth.decision.routing)

    @property
    def repository(self) -> str:
        return f"{self.org}/{self.repo}"


def _looks_like_dots(value: bytes) -> bool:
    """Whether some reader could take ``value`` for ``.`` or ``..``.

    Plain, with ``;params`` cut off (Tomcat, Spring: ``..;/``), with
    surrounding whitespace trimmed (``..%20``: Windows drops trailing spaces,
    and ``str.strip()`` any Unicode space) or NFKC-folded (``%EF%BC%8E`` is a
    fullwidth full stop, ``%E2%80%A5`` a two-dot leader: both fold to dots).
    """
    if value in _DOTS or value.split(b";", 1)[0] in _DOTS:
        return True
    if b"." not in value and not _NON_ASCII.search(value):
        return False  # the common case: no dot could come out of it
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return False  # refused as invalid UTF-8 once fully decoded
    for reading in (text, unicodedata.normalize("NFKC", text)):
        if reading.strip() in _TEXT_DOTS or reading.split(";", 1)[0].strip() in _TEXT_DOTS:
            return True
    return False


def _read_once(value: bytes) -> bytes:
    """One more layer of what a reader might do to a segment: percent-decoding, then NFKC folding."""
    if b"%" in value:
        if _BAD_ESCAPE.search(value):
            raise AmbiguousPath("malformed percent-encoding")
        return unquote_to_bytes(value)
    if value.isascii():
        return value  # ASCII is its own NFKC form
    try:
        text = value.decode("utf-8")  # strict: also refuses overlong forms such as %C0%AE
    except UnicodeDecodeError:
        raise AmbiguousPath("the path is not valid UTF-8") from None
    if any(unicodedata.category(char) in _INVISIBLE for char in text):
        raise AmbiguousPath("invisible or line-breaking characters in the path")
    # Compatibility forms fold into the characters they imitate: a fullwidth
    # solidus (%EF%BC%8F) is '/' to any reader that normalizes (NFKC).
    return unicodedata.normalize("NFKC", text).encode("utf-8")


def _check_segment(segment: bytes) -> None:
    """Refuse a segment that any depth of decoding turns into a separator or dot segment.

    An upstream may decode once (most), twice (IIS, some frameworks), strip
    ``;params`` (Tomcat, Spring: ``..;/``), trim spaces or fold Unicode
    compatibility forms; each reading must see a plain segment.
    """
    value = segment
    for layer in range(_MAX_DECODES):
        if _looks_like_dots(value):
            raise AmbiguousPath("dot segments are not allowed")
        if layer and _DECODED_FORBIDDEN.search(value):
            raise AmbiguousPath("an encoded '/', '\\', '?', '#' or control character in the path")
        read = _read_once(value)
        if read == value:
            return
        value = read
    raise AmbiguousPath("too many layers of percent-encoding")


def parse_target(
    raw_path: bytes, protocols: frozenset[str] | tuple[str, ...], routes: Routes | None = None, query: bytes = b""
) -> Target:
    """Parse ``raw_path`` (no query string) into a ``Target`` or raise ``PathError``.

    With ``routes``, the ``Target`` carries its route's upstream request (``routed``), built
    from ``query`` too (pinned parameters), once the path passed every check here.
    """
    if not raw_path.startswith(names.SERVICES):
        raise NotComputePath("not a compute URL")
    if _CONTROL.search(raw_path) or not raw_path.isascii():
        raise AmbiguousPath("control characters, backslashes or raw non-ASCII bytes in the path")
    parts = raw_path[len(names.SERVICES) :].split(b"/", 4)
    if len(parts) < 4:
        raise NotComputePath("a compute URL names /{protocol}/{org}/{repo}/{ref}")
    protocol, org, repo, ref = parts[:4]
    rest = parts[4] if len(parts) == 5 else b""
    if b"%" in rest or b";" in rest:
        for segment in rest.split(b"/"):
            _check_segment(segment)
    elif b"." in rest:
        # The common case, and the same verdict as _check_segment's, faster:
        # printable ASCII (checked above) with no escape and no parameter is
        # read the same by every reader (its own NFKC form, nothing to strip),
        # so only a plain dot segment is a dot segment.
        segments = rest.split(b"/")
        if b"." in segments or b".." in segments:
            raise AmbiguousPath("dot segments are not allowed")
    name, org_name, repo_name, ref_name = _decided_segments(protocol, org, repo, ref)
    if name not in protocols:
        raise NotComputePath("unknown protocol")
    routed = None if routes is None else routes.routed(name, org_name, repo_name, ref_name, rest, query)
    return Target(name, org_name, repo_name, ref_name, raw_path, routed)


# A tile pyramid asks for thousands of paths under the same few repos: the
# four decided segments are checked once per distinct value, not per request.
# Only what passes is remembered (an exception is never cached).
@functools.lru_cache(maxsize=4096)
def _decided_segments(protocol: bytes, org: bytes, repo: bytes, ref: bytes) -> tuple[str, str, str, str]:
    if not _PROTOCOL.fullmatch(protocol):
        if protocol and b"%" not in protocol and b"." not in protocol:
            raise NotComputePath("unknown protocol")
        raise AmbiguousPath("the protocol segment is not a plain name")
    if not (_PLAIN_NAME.fullmatch(org) and _PLAIN_NAME.fullmatch(repo) and _REF.fullmatch(ref)):
        raise AmbiguousPath("org, repo and ref must be plain names (letters, digits, '.', '_', '-')")
    if not (names.plain(org) and names.plain(repo) and names.plain(ref)):
        raise AmbiguousPath("org, repo and ref may neither contain '..' nor end with '.'")
    if not _ORG.fullmatch(org):
        raise NotComputePath("no such org")  # plain, but no org can be created with that name
    return protocol.decode("ascii"), org.decode("ascii"), repo.decode("ascii"), ref.decode("ascii")


_QUERY_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f#]")


def check_query(query: bytes) -> None:
    """Refuse a query string that is not plain ASCII: it is forwarded byte for byte."""
    if query and (not query.isascii() or _QUERY_FORBIDDEN.search(query)):
        raise AmbiguousPath("the query string must be percent-encoded ASCII")
