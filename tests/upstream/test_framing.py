"""The response framing without sockets: lists of byte strings in, events out (as h11 and httpcore test theirs).

Every response is also fed split at every byte and byte by byte: the events
must not depend on how the network cut the bytes.
"""

from __future__ import annotations

import pytest

from fluxauth.errors import UpstreamBroken
from fluxauth.upstream.framing import END, Event, Head, ResponseFraming

OK = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: 4\r\n\r\ntile"


def feed(pieces: list[bytes], *, head_only: bool = False, eof: bool = False, limit: int = 65536) -> list[Event]:
    """The events of one response fed as ``pieces`` (then the connection's end, if ``eof``), bodies joined."""
    framing = ResponseFraming(max_header_bytes=limit)
    framing.start(head_only=head_only)
    events: list[Event] = []
    for piece in pieces:
        events += framing.feed(piece)
    if eof:
        events += framing.feed_eof()
    return joined(events)


def joined(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        if isinstance(event, bytes) and out and isinstance(out[-1], bytes):
            out[-1] += event
        else:
            out.append(event)
    return out


def cuts(data: bytes) -> list[list[bytes]]:
    """``data`` whole, split in two at every byte, and byte by byte."""
    return [[data], *([data[:i], data[i:]] for i in range(1, len(data))), [data[i : i + 1] for i in range(len(data))]]


FRAMED = [
    pytest.param(
        OK,
        False,
        False,
        [Head(200, [(b"content-type", b"image/png"), (b"content-length", b"4")], True), b"tile", END],
        id="length",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        False,
        False,
        [Head(200, [(b"transfer-encoding", b"chunked")], True), b"hello world", END],
        id="chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it",
        False,
        True,
        [Head(200, [(b"content-type", b"text/plain")], False), b"all of it", END],
        id="until-close",
    ),
    pytest.param(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n" + OK,
        False,
        False,
        [Head(200, [(b"content-type", b"image/png"), (b"content-length", b"4")], True), b"tile", END],
        id="interim-103-skipped",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ncontent-length: 12288\r\n\r\n",
        True,
        False,
        [Head(200, [(b"content-length", b"12288")], True), END],
        id="head-request",
    ),
    pytest.param(
        b'HTTP/1.1 304 Not Modified\r\netag: "x"\r\ncontent-length: 12288\r\n\r\n',
        False,
        False,
        [Head(304, [(b"etag", b'"x"')], True), END],
        id="304-length-dropped",
    ),
    pytest.param(
        b"HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
        False,
        False,
        [Head(204, [], True), END],
        id="204-length-dropped",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        False,
        False,
        [Head(200, [(b"content-length", b"0"), (b"connection", b"close")], False), END],
        id="connection-close",
    ),
]


@pytest.mark.parametrize(("data", "head_only", "eof", "expected"), FRAMED)
def test_framing_response_gives_the_same_events_however_it_is_cut(
    data: bytes, head_only: bool, eof: bool, expected: list[Event]
) -> None:
    """A response's events are the same whole, split at any byte, or byte by byte."""
    for pieces in cuts(data):
        assert feed(pieces, head_only=head_only, eof=eof) == expected, pieces


BROKEN = [
    pytest.param(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "cannot be parsed", id="not-http"),
    pytest.param(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n", "switched", id="101"
    ),
    pytest.param(b"HTTP/1.1 999 Odd\r\ncontent-length: 1\r\n\r\na", "status 999", id="999"),
    pytest.param(b"HTTP/1.1 600 Odd\r\ncontent-length: 0\r\n\r\n", "status 600", id="600"),
    pytest.param(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nabcdef", "transfer coding", id="te-gzip"),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        "transfer coding",
        id="te-gzip-chunked",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "transfer coding",
        id="te-twice",
    ),
    pytest.param(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        "cannot be parsed",
        id="cl-and-te",
    ),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort", "mid-response", id="eof-mid-body"),
    pytest.param(b"HTTP/1.1 200 OK\r\ncontent-le", "mid-response", id="eof-mid-head"),
    pytest.param(b"", "mid-response", id="eof-before-anything"),
]


@pytest.mark.parametrize(("data", "reason"), BROKEN)
def test_framing_unreadable_response_is_broken(data: bytes, reason: str) -> None:
    """What a proxy cannot relay as it is raises ``UpstreamBroken`` (502), whole or byte by byte."""
    for pieces in cuts(data) if data else [[]]:
        with pytest.raises(UpstreamBroken, match=reason):
            feed(pieces, eof=True)


SURPLUS = [
    pytest.param(OK, OK, id="second-answer-same-read"),
    pytest.param(OK, b"GARBAGE", id="garbage"),
    pytest.param(OK, b"extra body beyond content-length", id="long-body"),
]


@pytest.mark.parametrize(("first", "rest"), SURPLUS)
def test_framing_bytes_past_a_response_are_surplus_not_a_response(first: bytes, rest: bytes) -> None:
    """After a whole response, more bytes (in the same read or later) are surplus: never a second answer."""
    for pieces in ([first + rest], [first, rest]):
        framing = ResponseFraming()
        framing.start(head_only=False)
        events: list[Event] = []
        for piece in pieces:
            events += framing.feed(piece)
        assert joined(events)[-2:] == [b"tile", END]
        assert sum(isinstance(event, Head) for event in events) == 1
        assert framing.surplus


def test_framing_head_response_body_is_surplus_and_not_delivered() -> None:
    """An upstream that answers HEAD with a body: the body never becomes an event, and the connection is spent."""
    data = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n" + b'{"connection":"ok"}\n'
    for pieces in cuts(data):
        framing = ResponseFraming()
        framing.start(head_only=True)
        events: list[Event] = []
        for piece in pieces:
            events += framing.feed(piece)
        assert events == [Head(200, [(b"content-length", b"20")], True), END]
        assert framing.surplus


def test_framing_next_response_parses_after_a_head_response() -> None:
    """The parser left waiting for a HEAD response's announced body starts afresh for the next response."""
    framing = ResponseFraming()
    framing.start(head_only=True)
    assert framing.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")[-1] == END
    framing.start(head_only=False)
    assert joined(framing.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nsecond"[:-1])) == [
        Head(200, [(b"content-length", b"5")], True),
        b"secon",
        END,
    ]
    assert not framing.surplus


def test_framing_keep_alive_responses_follow_one_another() -> None:
    """One framing serves a connection's responses one after another."""
    framing = ResponseFraming()
    for _ in range(3):
        framing.start(head_only=False)
        assert joined(framing.feed(OK))[-2:] == [b"tile", END]
        assert framing.started
        assert not framing.surplus


@pytest.mark.parametrize("limit", [1024, 8192])
def test_framing_head_over_the_limit_is_broken(limit: int) -> None:
    """A head over ``max_header_bytes`` is broken, whole, in pieces, or endless (cut off one read past the limit)."""
    many = (
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"x-h%d: v\r\n" % n for n in range(limit // 8)) + b"content-length: 0\r\n\r\n"
    )
    with pytest.raises(UpstreamBroken, match="head is longer"):
        feed([many], limit=limit)
    with pytest.raises(UpstreamBroken, match="head is longer"):
        feed([many[i : i + 100] for i in range(0, len(many), 100)], limit=limit)
    framing = ResponseFraming(max_header_bytes=limit)
    framing.start(head_only=False)
    framing.feed(b"HTTP/1.1 200 OK\r\nx-endless: ")
    fed = 0
    with pytest.raises(UpstreamBroken, match="head is longer"):  # noqa: PT012 -- fed until it breaks
        while fed < 100 * limit:
            fed += 512
            framing.feed(b"a" * 512)
    assert fed <= limit + 512
    fits = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (limit - 100) + b"\r\ncontent-length: 4\r\n\r\ntile"
    assert feed([fits], limit=limit)[-2:] == [b"tile", END]


def test_framing_head_with_a_body_in_the_same_read_is_measured_exactly() -> None:
    """A small head read together with a body longer than the limit is not mistaken for a long head."""
    body = b"z" * 5000
    data = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body
    assert feed([data], limit=1024)[-2:] == [body, END]


def test_framing_bug_in_a_callback_is_raised_as_itself() -> None:
    """An exception of fluxauth's own inside a callback is raised as it is, never as the upstream's parse error."""

    class Buggy(ResponseFraming):
        def on_header(self, name: bytes, value: bytes) -> None:
            raise ZeroDivisionError("injected")

    framing = Buggy()
    framing.start(head_only=False)
    with pytest.raises(ZeroDivisionError, match="injected"):
        framing.feed(OK)
