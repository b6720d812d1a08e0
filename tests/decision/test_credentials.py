"""Tests for fluxauth.decision.credentials: the Basic header parsed into credentials, anonymous, or malformed."""

from __future__ import annotations

import base64

import pytest

from fluxauth.decision.credentials import MAX_HEADER_BYTES, BasicCredentials, parse_basic
from fluxauth.decision.tokens import TokenParts
from fluxauth.errors import MalformedCredentials

TOKEN_ID = "0123456789abcdef"
SECRET = "S3cr3t-S3cr3t_S3cr3t-S3cr3t_S3cr3t-S3cr3"
TOKEN = f"ema_{TOKEN_ID}_{SECRET}"


def basic(raw: bytes) -> bytes:
    """An Authorization value for the raw ``user:password`` bytes."""
    return b"Basic " + base64.b64encode(raw)


def test_parse_basic_no_header_is_anonymous() -> None:
    """No Authorization header means no credentials, not malformed ones."""
    assert parse_basic([]) is None
    assert parse_basic(()) is None


@pytest.mark.parametrize(
    "value",
    [
        basic(f"acme:{TOKEN}".encode()),
        b"basic " + base64.b64encode(f"acme:{TOKEN}".encode()),
        b"BASIC " + base64.b64encode(f"acme:{TOKEN}".encode()),
        b"  Basic   " + base64.b64encode(f"acme:{TOKEN}".encode()) + b"  ",
    ],
)
def test_parse_basic_well_formed_yields_username_and_token(value: bytes) -> None:
    """The username is the org and the password splits into token id and secret."""
    credentials = parse_basic([value])
    assert credentials is not None
    assert credentials.username == "acme"
    assert credentials.token == TokenParts(TOKEN_ID, SECRET)
    assert credentials.username_raw == b"acme"
    assert credentials.password_raw == TOKEN.encode()


def test_parse_basic_non_ascii_username_is_utf8() -> None:
    """The username is decoded as UTF-8 (RFC 7617 charset="UTF-8")."""
    credentials = parse_basic([basic(f"ãcme:{TOKEN}".encode())])
    assert credentials is not None
    assert credentials.username == "ãcme"
    assert credentials.username_raw == "ãcme".encode()


MALFORMED = [
    pytest.param(b"", id="empty-value"),
    pytest.param(b"Basic", id="scheme-only"),
    pytest.param(b"Basic ", id="scheme-and-space"),
    pytest.param(base64.b64encode(f"acme:{TOKEN}".encode()), id="no-scheme"),
    pytest.param(b"Bearer " + TOKEN.encode(), id="bearer"),
    pytest.param(b"Digest username=acme", id="digest"),
    pytest.param(b"Basicx " + base64.b64encode(f"acme:{TOKEN}".encode()), id="scheme-prefix"),
    pytest.param(b"Basic not-base64!", id="bad-base64"),
    pytest.param(b"Basic " + base64.b64encode(f"acme:{TOKEN}".encode())[:-1], id="truncated-base64"),
    pytest.param(b"Basic " + base64.urlsafe_b64encode(b"\xfb\xff:" + TOKEN.encode()), id="urlsafe-alphabet"),
    pytest.param(basic(TOKEN.encode()), id="no-colon"),
    pytest.param(basic(f":{TOKEN}".encode()), id="empty-user"),
    pytest.param(basic(b"acme:"), id="empty-password"),
    pytest.param(basic(b":"), id="colon-only"),
    pytest.param(basic(b""), id="empty-decoded"),
    pytest.param(basic(b"\xff\xfe:" + TOKEN.encode()), id="non-utf8-user"),
    pytest.param(basic(b"acme:" + TOKEN.encode()[:-1] + b"\xff"), id="non-utf8-password"),
    pytest.param(basic(b"acme:hunter2"), id="password-not-a-token"),
    pytest.param(basic(f"acme:{TOKEN}x".encode()), id="token-too-long"),
    pytest.param(basic(f"acme:{TOKEN} ".encode()), id="token-trailing-space"),
    pytest.param(basic(f"acme:{TOKEN.upper()}".encode()), id="token-upper-case"),
    pytest.param(basic(f"acme:{TOKEN}:extra".encode()), id="second-colon"),
    pytest.param(b"Basic " + b"A" * (16 * 1024), id="16KiB"),
    pytest.param(b"Basic " + b"A" * MAX_HEADER_BYTES, id="just-over-limit"),
]


@pytest.mark.parametrize("value", MALFORMED)
def test_parse_basic_malformed_is_401(value: bytes) -> None:
    """A header that cannot be ``org:ema_...`` in Basic is malformed: 401."""
    with pytest.raises(MalformedCredentials) as caught:
        parse_basic([value])
    assert caught.value.status == 401
    assert caught.value.detail
    assert SECRET not in caught.value.detail


def test_parse_basic_length_limit_applies_to_well_formed_values() -> None:
    """A well-formed value within the limit parses; the same shape beyond it is refused."""
    fits = basic(b"a" * 600 + b":" + TOKEN.encode())
    too_long = basic(b"a" * 800 + b":" + TOKEN.encode())
    assert len(fits) <= MAX_HEADER_BYTES < len(too_long)
    assert parse_basic([fits]) is not None
    with pytest.raises(MalformedCredentials, match="too long") as caught:
        parse_basic([too_long])
    assert caught.value.status == 401


def test_parse_basic_two_headers_is_400() -> None:
    """Two Authorization headers are ambiguous (which one wins differs by server): 400."""
    value = basic(f"acme:{TOKEN}".encode())
    with pytest.raises(MalformedCredentials) as caught:
        parse_basic([value, value])
    assert caught.value.status == 400


def test_parse_basic_malformed_error_hides_the_cause() -> None:
    """The decoding error is not chained, so no traceback carries the decoded secret."""
    with pytest.raises(MalformedCredentials) as caught:
        parse_basic([basic(b"acme:" + SECRET.encode() + b"\xff")])
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


def test_basic_credentials_repr_hides_the_secret() -> None:
    """repr() of parsed credentials shows the username and token id, never the secret."""
    credentials = parse_basic([basic(f"acme:{TOKEN}".encode())])
    assert isinstance(credentials, BasicCredentials)
    for text in (repr(credentials), str(credentials), f"{credentials!r}"):
        assert SECRET not in text
        assert TOKEN not in text
        assert "acme" in text
        assert TOKEN_ID in text
