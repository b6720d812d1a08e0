"""Self-URLs of routed responses, mapped back from the upstream's base to the public one.

A stock server writes absolute URLs built from its own view of the request
(its Host, the ``X-Forwarded-Proto`` fluxauth sends) into TileJSON ``tiles``,
WMS/WMTS capabilities (``OnlineResource``, ``ResourceURL``), OGC API
``links``, HTML pages, and ``Location``/``Content-Location``/``Link``. Each
such URL under the route's upstream base (the template up to ``{path}``, in
``http`` or ``https``) becomes the same URL under the public base
``{scheme}://{host}/v1/services/{protocol}/{org}/{repo}/{ref}/{group}/{marker}/``,
without the pinned parameters (the client could not send them back, and
should not learn which file the server opened). Relative and root-relative
links are left alone; URLs elsewhere on the upstream are too (they are not
under the route, so nothing public names them).

The mapping is textual, over the body's bytes, so that a document keeps its
formatting, namespace prefixes and number spellings (a serializer round trip
would not: QGIS refuses ``ns0:`` prefixes). It knows the spellings of each
kind of document: in JSON ``\\/`` for ``/`` and ``\\u0026`` for ``&``, in XML
and HTML ``&amp;`` between parameters; what it writes is escaped for the
document it goes into.

Only metadata bodies (JSON, XML, HTML) are collected, up to
``max_metadata_body`` after decompression (gzip, deflate); beyond it, or in a
content coding fluxauth cannot read, the answer is 502, never a body with the
upstream's URLs in it. Tiles and everything else stream through untouched.
"""

from __future__ import annotations

import functools
import html
import re
import zlib
from collections.abc import Callable

from fluxauth.decision.routing import parameter_name
from fluxauth.errors import UnwritableHost, UpstreamUnmappable
from fluxauth.types import Headers

JSON = "json"
MARKUP = "markup"  # XML and HTML: the same escaping
HEADER = "header"

_MAPPED_HEADERS = frozenset({b"location", b"content-location", b"link"})
# What no longer describes a body that was decoded and rewritten.
_BODY_HEADERS = frozenset({b"content-length", b"content-encoding", b"content-md5", b"digest", b"content-digest"})
_XML_TYPES = frozenset({b"application/xml", b"text/xml", b"application/vnd.ogc.wms_xml", b"application/vnd.ogc.se_xml"})
_JSON_TYPES = frozenset({b"application/json", b"text/json"})
_CODINGS = frozenset({b"gzip", b"x-gzip", b"deflate", b"identity"})
# A URL goes on until a quote, an angle bracket, a backtick or white space; a
# backslash only as JSON's "\/" or "\uXXXX".
_URL_REST = re.compile(rb"(?:[^\"'<>`\s\\]|\\[/u])*")
# After the base without its "/": a byte that continues the segment (".../wmsx") is another URL.
_SEGMENT_BYTE = re.compile(rb"[A-Za-z0-9._~%-]")
_SEPARATOR = re.compile(rb"(&amp;|&#0*38;|&#[xX]0*26;|\\u0026|&)")
_FRAGMENT = re.compile(rb"(?<!&)#")  # not the '#' of a character reference (&#38;)
_JSON_ESCAPE = re.compile(rb"\\u([0-9A-Fa-f]{4})|\\(/)")


def metadata_kind(content_type: bytes | None) -> str | None:
    """``JSON`` or ``MARKUP`` for the media types whose bodies are rewritten; ``None`` for the rest."""
    if not content_type:
        return None
    media = content_type.split(b";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith(b"+json"):
        return JSON
    if media == b"text/html" or media in _XML_TYPES or media.endswith((b"+xml", b"_xml")):
        return MARKUP
    return None


def _authority_pattern(authority: bytes) -> bytes:
    host, colon, port = authority.rpartition(b":") if not authority.endswith(b"]") else (authority, b"", b"")
    if not colon:
        host, port = authority, b""
    if port in (b"", b"80", b"443"):
        # A default port may be written or left out, whichever the server prefers.
        return rb"(?i:" + re.escape(host) + rb")(?::(?:80|443))?"
    return rb"(?i:" + re.escape(host) + rb"):" + re.escape(port)


@functools.lru_cache(maxsize=1024)
def _base_pattern(authority: bytes, base: bytes) -> re.Pattern[bytes]:
    """The upstream base without its final "/", as a server may write it (http or https; JSON's ``\\/``)."""
    path = rb"(?:/|\\/)".join(re.escape(part) for part in base.rstrip(b"/").split(b"/"))
    return re.compile(rb"(?i:https?):(?://|\\/\\/)" + _authority_pattern(authority) + path)


def _escape(text: bytes, kind: str) -> bytes:
    if kind == JSON:
        return text.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    if kind == MARKUP:
        return html.escape(text.decode("latin-1"), quote=True).encode("latin-1")
    return text


def _unescape(name: bytes, kind: str) -> str:
    if kind == JSON:
        name = _JSON_ESCAPE.sub(lambda m: m[2] or chr(int(m[1], 16)).encode("latin-1", "replace"), name)
    text = name.decode("latin-1")
    return html.unescape(text) if kind == MARKUP else text


class SelfUrls:
    """The mapping for one routed request: from its upstream base to its public base."""

    __slots__ = ("_public", "authority", "base", "pinned", "public")

    def __init__(self, authority: bytes, base: bytes, public: bytes, pinned: frozenset[str]) -> None:
        self.authority = authority  # the upstream's host[:port], as its Host header says
        self.base = base  # the upstream path up to the service path, ending with "/"
        self.public = public  # scheme://host/v1/services/.../{marker}/
        self.pinned = pinned  # lower-case names of the pinned parameters
        self._public: dict[str, bytes] = {}

    def map(self, text: bytes, kind: str) -> bytes:
        """``text`` (a body of ``kind``, or a header value) with every URL under the upstream base mapped."""
        pattern = _base_pattern(self.authority, self.base)
        out: list[bytes] = []
        last = 0
        for match in pattern.finditer(text):
            end = match.end()
            if text.startswith(b"/", end):
                tail_at, public = end + 1, self._public_base(kind, slash=True)
            elif text.startswith(b"\\/", end):
                tail_at, public = end + 2, self._public_base(kind, slash=True)
            elif _SEGMENT_BYTE.match(text, end):
                continue  # the base's last segment goes on: another URL
            else:
                tail_at, public = end, self._public_base(kind, slash=False)
            rest = _URL_REST.match(text, tail_at)
            assert rest is not None  # it matches the empty string
            stop = rest.end()
            out += (text[last : match.start()], public, self._unpinned(text[tail_at:stop], kind))
            last = stop
        if not out:
            return text
        out.append(text[last:])
        return b"".join(out)

    def _public_base(self, kind: str, *, slash: bool) -> bytes:
        key = kind + ("/" if slash else "")
        value = self._public.get(key)
        if value is None:
            value = self._public[key] = _escape(self.public if slash else self.public[:-1], kind)
        return value

    def _unpinned(self, tail: bytes, kind: str) -> bytes:
        """``tail`` (path, query, fragment) without the pinned parameters in its query."""
        at = tail.find(b"?")
        if at < 0 or not self.pinned:
            return tail
        path, rest = tail[:at], tail[at + 1 :]
        fragment = _FRAGMENT.search(rest)
        query, fragment_part = (rest, b"") if fragment is None else (rest[: fragment.start()], rest[fragment.start() :])
        pieces = _SEPARATOR.split(query)  # parameter, separator, parameter, ...
        kept: list[bytes] = []
        for index in range(0, len(pieces), 2):
            parameter = pieces[index]
            name = parameter.split(b"=", 1)[0]
            if parameter_name(_unescape(name, kind)) in self.pinned:
                continue
            if kept:
                kept.append(pieces[index - 1])
            kept.append(parameter)
        return path + (b"?" + b"".join(kept) if kept else b"") + fragment_part

    def map_headers(self, headers: Headers) -> Headers:
        """``Location``, ``Content-Location`` and ``Link`` mapped; the other headers as they are."""
        return [(name, self.map(value, HEADER) if name in _MAPPED_HEADERS else value) for name, value in headers]


class Rewrite:
    """One routed response: its headers mapped, and its body if it is metadata, collected and mapped at the end.

    ``head`` says whether the body is to be collected (``collect``); then
    ``feed`` takes it piece by piece and ``finish`` returns the headers and
    the mapped body. Each raises ``UpstreamUnmappable`` (502) for what cannot
    be rewritten: too large, a partial response, an unknown content coding;
    and ``UnwritableHost`` (400) when the client's Host cannot be written.

    The mapping itself (``urls``, from the client's scheme and host) is made
    only for a response that needs it: a tile costs one look at its headers.
    """

    __slots__ = ("_chunks", "_codings", "_headers", "_kind", "_limit", "_make_urls", "_size", "_urls", "collect")

    def __init__(self, urls: Callable[[], SelfUrls | None], limit: int) -> None:
        # One per routed request, tiles included: only what every response needs is set here;
        # the rest, for a body to collect, by head().
        self._make_urls = urls
        self._urls: SelfUrls | None = None
        self._limit = limit
        self.collect = False

    @property
    def urls(self) -> SelfUrls:
        if self._urls is None:
            urls = self._make_urls()
            if urls is None:
                raise UnwritableHost("this answer names its URLs, and the request gave no plain Host to name them by")
            self._urls = urls
        return self._urls

    def head(self, status: int, headers: Headers, *, head_only: bool) -> Headers:
        """The response headers to send, or to finish with once the body is in (``collect``)."""
        content_type = None
        mapped = False
        for name, value in headers:
            if name == b"content-type":
                content_type = value
            elif name in _MAPPED_HEADERS:
                mapped = True
        kind = None if status in (204, 304) else metadata_kind(content_type)
        if not mapped and kind is None:
            return headers  # a tile: nothing to map
        if mapped:
            headers = self.urls.map_headers(headers)
        if kind is None:
            return headers
        if head_only:
            # The length and coding a GET would get are those of the rewritten body, unknown here.
            return [(name, value) for name, value in headers if name not in _BODY_HEADERS]
        if status == 206:
            raise UpstreamUnmappable("a partial metadata response cannot be rewritten")
        codings = [
            coding.strip().lower()
            for name, value in headers
            if name == b"content-encoding"
            for coding in value.split(b",")
            if coding.strip()
        ]
        unknown = [coding for coding in codings if coding not in _CODINGS]
        if unknown:
            raise UpstreamUnmappable(f"a metadata response in content coding {unknown[0].decode('latin-1')!r}")
        self._codings = [coding for coding in codings if coding != b"identity"]
        self._chunks: list[bytes] = []
        self._size = 0
        for name, value in headers:
            if name == b"content-length" and value.isdigit() and int(value) > self._limit:
                raise UpstreamUnmappable(f"a metadata response of {int(value)} bytes, over max_metadata_body")
        self._kind: str = kind
        self.urls  # noqa: B018 - refused now (400) rather than after the body is read
        self._headers: Headers = [
            (name, b"W/" + value if name == b"etag" and value.startswith(b'"') else value)
            for name, value in headers
            if name not in _BODY_HEADERS
        ]
        self.collect = True
        return self._headers

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._limit:
            raise UpstreamUnmappable("a metadata response over max_metadata_body")
        self._chunks.append(data)

    def finish(self) -> tuple[Headers, bytes]:
        """The headers (with the new ``Content-Length``) and the mapped body."""
        body = b"".join(self._chunks)
        self._chunks = []
        for coding in reversed(self._codings):
            body = _decode(body, coding, self._limit)
        body = self.urls.map(body, self._kind)
        return [*self._headers, (b"content-length", str(len(body)).encode("ascii"))], body


def _decode(body: bytes, coding: bytes, limit: int) -> bytes:
    """``body`` decompressed, at most ``limit`` bytes of it (a small gzip can hold gigabytes)."""
    attempts = (31,) if coding in (b"gzip", b"x-gzip") else (15, -15)  # "deflate" is zlib, or raw in the wild
    for wbits in attempts:
        decoder = zlib.decompressobj(wbits)
        try:
            out = decoder.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or decoder.unconsumed_tail:
            raise UpstreamUnmappable("a metadata response over max_metadata_body once decompressed")
        if not decoder.eof:
            raise UpstreamUnmappable(f"a truncated {coding.decode('ascii')} metadata response")
        return out
    raise UpstreamUnmappable(f"a metadata response that is not valid {coding.decode('ascii')}")
