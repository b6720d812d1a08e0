"""An upstream's responses as events: bytes in, ``Head``, body ``bytes`` and ``End`` out, no sockets.

httptools (llhttp, Node's parser, which uvicorn also uses for requests) reads
the bytes; this decides what they mean for a proxy, and its callbacks only
collect: what follows from an event runs after ``feed`` returns, in the
connection (as h11 and aiohttp's client protocol do), so that an exception in
fluxauth's own code is never taken for a parse error of the upstream's.

What it refuses (``UpstreamBroken``, answered 502) that llhttp lets through:

- a response head over ``max_header_bytes`` (counted per read while it is
  arriving, so an endless head is cut off after one read past the limit);
- a status outside 100-599 (no status line can be written for it), and 101:
  fluxauth never asks to switch protocols (``Upgrade`` is hop-by-hop);
- any transfer coding but a lone ``chunked``: a body in ``gzip`` coding would
  have to be decoded to be forwarded (RFC 9112 §6.1), and llhttp would read it
  to the end of the connection.

And what it takes care of:

- interim answers (``103 Early Hints``) are skipped;
- a HEAD response has no body (RFC 9110 §9.3.2) whatever its
  ``Content-Length`` says; body bytes after it are surplus;
- on 204 and 304 ``Content-Length`` frames nothing (RFC 9110 §8.6) and is
  left out of the head, so that no server downstream expects a body;
- bytes past the end of a response — a second answer, garbage, the rest of a
  body longer than its ``Content-Length`` — are never parsed as the next
  response: ``surplus`` says the connection must not be reused.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

import httptools

from fluxauth.errors import UpstreamBroken
from fluxauth.types import Headers

# The bound on a response's head, as aiohttp's client (8 KiB per line) and
# httpcore (h11's 64 KiB) have one: the pool accepted 200,001 headers (20.5 MB)
# from an upstream before it.
MAX_HEADER_BYTES = 64 * 1024
_NO_LENGTH = frozenset({204, 304})


class Head(NamedTuple):
    """A final response head: status, headers (names in lower case), whether the upstream keeps the connection."""

    status: int
    headers: Headers
    keep_alive: bool


class End(NamedTuple):
    """The response is complete."""


END = End()
# Body bytes (decoded from chunks if the response was chunked) are events as
# they are: they are most of the events, and a wrapper per piece costs the hot
# path more than the parse of the piece.
Event = Head | bytes | End
_head = tuple.__new__  # Head(...) without NamedTuple's __new__ in Python: once per response


class _Part(enum.Enum):
    HEAD = "head"  # waiting for, or reading, the (final) head
    BODY = "body"
    DONE = "done"  # the response is complete; any further byte is surplus


_HEAD, _BODY, _DONE = _Part.HEAD, _Part.BODY, _Part.DONE  # as globals: cheaper to read (connection.py)


class _Stop(Exception):
    """Raised from a callback to stop llhttp: the response failed, or what follows it is surplus."""


class ResponseFraming:
    """Turns one upstream connection's responses into events, one response at a time (``start`` each)."""

    def __init__(self, *, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
        self.max_header_bytes = max_header_bytes
        self._parser = httptools.HttpResponseParser(self)
        self._part = _DONE
        self._head_only = False
        self._fresh = True  # the parser has read nothing it did not finish
        self._events: list[Event] = []
        self._headers: Headers = []
        self._head_bytes = 0  # of the reads that brought the head (and perhaps some body)
        self._until_close = False  # neither length nor chunked: the body ends with the connection
        self._failure: UpstreamBroken | None = None
        self.started = False  # some byte of this response arrived
        self.surplus = False  # bytes arrived past the end of the response

    def start(self, *, head_only: bool) -> None:
        """Expect a new response; ``head_only``: to a HEAD request."""
        if not self._fresh:
            self._parser = httptools.HttpResponseParser(self)
        self._fresh = not head_only  # llhttp would wait for the body a HEAD response's length announces
        self._part = _HEAD
        self._head_only = head_only
        self._headers = []
        self._head_bytes = 0
        self._until_close = False
        self._failure = None
        self.started = self.surplus = False

    def feed(self, data: bytes) -> list[Event]:
        """The events that ``data`` completes; raises ``UpstreamBroken`` if the response cannot be read."""
        if self._part is _DONE:
            self.surplus = True
            return []
        self.started = True
        if self._part is _HEAD:
            self._head_bytes += len(data)
        events = self._events = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if self._failure is not None:
                raise self._failure from None
            if not isinstance(exc.__context__, _Stop):
                # A bug in a callback below, not the upstream's fault: raised as it is.
                raise exc.__context__ or exc  # noqa: B904 -- the callback's own exception, its traceback kept
        except httptools.HttpParserUpgrade:
            raise UpstreamBroken("the upstream switched protocols unasked") from None
        except httptools.HttpParserError as exc:
            self._fresh = False
            if not self.complete:
                raise UpstreamBroken(f"the upstream's response cannot be parsed: {exc}") from exc
            self.surplus = True  # what follows a whole response is not HTTP: dropped with the connection
        if self._part is _HEAD and self._head_bytes > self.max_header_bytes:
            raise UpstreamBroken(f"the upstream's response head is longer than {self.max_header_bytes} bytes")
        return events

    @property
    def complete(self) -> bool:
        """The response is complete (what arrives from now on is surplus)."""
        return self._part is _DONE

    def feed_eof(self) -> list[Event]:
        """The connection closed cleanly: the end of a body that lasts until then, else ``UpstreamBroken``."""
        if self._part is _DONE:
            return []
        if self._part is _BODY and self._until_close:
            self._part = _DONE
            return [END]
        raise UpstreamBroken("the upstream closed the connection mid-response")

    # -- httptools callbacks: they only collect --------------------------------------

    def _fail(self, detail: str) -> None:
        self._failure = UpstreamBroken(detail)
        raise _Stop

    def on_message_begin(self) -> None:
        if self._part is _DONE:
            # A second answer in the same read as the first: nobody asked for it.
            self.surplus = True
            self._fresh = False
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        # The reads that brought the head bound its size; only when they also
        # brought more than the limit (some body, say) is the head measured.
        if self._head_bytes > self.max_header_bytes and self._head_size() > self.max_header_bytes:
            self._fail(f"the upstream's response head is longer than {self.max_header_bytes} bytes")
        status = self._parser.get_status_code()
        if status == 101:
            self._fail("the upstream switched protocols unasked")
        if status < 200:
            self._headers = []  # an interim answer (103 Early Hints...): the final one follows
            return
        if status > 599:
            self._fail(f"the upstream answered with status {status}")
        headers = self._headers
        chunked = has_length = False
        for name, value in headers:  # one pass, no comprehension: once per response of the hot path
            if name == b"transfer-encoding":
                if chunked or value.strip().lower() != b"chunked":
                    self._fail("the upstream used a transfer coding other than chunked")
                chunked = True
            elif name == b"content-length":
                has_length = True
        if status in _NO_LENGTH:
            headers = [(name, value) for name, value in headers if name != b"content-length"]
        elif not self._head_only and not chunked:
            self._until_close = not has_length
        self._events.append(_head(Head, (status, headers, self._parser.should_keep_alive())))
        if self._head_only:
            self._events.append(END)
            self._part = _DONE
        else:
            self._part = _BODY

    def _head_size(self) -> int:
        """The head's size as sent, give or take the status line's reason phrase."""
        return len(b"HTTP/1.1 200 \r\n\r\n") + sum(len(name) + len(value) + 4 for name, value in self._headers)

    def on_body(self, body: bytes) -> None:
        if self._part is _BODY:
            self._events.append(body)
        else:  # a body to a HEAD request
            self.surplus = True
            raise _Stop

    def on_message_complete(self) -> None:
        if self._part is _BODY:
            self._events.append(END)
            self._part = _DONE
        # else: the end of an interim answer, or of the body a HEAD response announced
