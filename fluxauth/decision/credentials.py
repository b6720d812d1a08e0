"""The ``Authorization: Basic`` header: username = org, password = API key.

Three outcomes, as in httpx's auth flow: ``BasicCredentials`` (well formed),
``None`` (no credentials: anonymous), or ``MalformedCredentials`` raised (401;
``ConflictingCredentials``, 400, for two headers). Nothing here looks anything up.
"""

from __future__ import annotations

import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from fluxauth.decision.tokens import TokenParts, parse_token
from fluxauth.errors import ConflictingCredentials, MalformedCredentials

# A Basic value for an org name and an ``ema_`` token is ~100 bytes; anything
# far larger is an attack on the decoder, not a credential.
MAX_HEADER_BYTES = 1024
# The 401's challenge. RFC 7617 §2.1: the charset parameter tells clients to send UTF-8.
CHALLENGE = (b"www-authenticate", b'Basic realm="fluxauth", charset="UTF-8"')


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """A well-formed Basic credential. ``repr`` never shows the secret."""

    username: str
    token: TokenParts
    username_raw: bytes  # as sent, for the cache HMAC only
    password_raw: bytes

    def __repr__(self) -> str:
        return f"BasicCredentials(username={self.username!r}, token_id={self.token.token_id!r})"


def split_basic(values: Sequence[bytes]) -> tuple[bytes, bytes] | None:
    """The username and password of the request's Basic credentials, as sent; ``None`` means none.

    Only the header's structure is checked here (one header, Basic, base64, a
    colon): the hot path looks these bytes up in the cache before anything
    else, and ``parse_basic`` checks the rest.
    Two values are ambiguous (400): servers and frameworks disagree on which wins.
    """
    if not values:
        return None
    if len(values) > 1:
        raise ConflictingCredentials("more than one Authorization header")
    value = values[0]
    if len(value) > MAX_HEADER_BYTES:
        raise MalformedCredentials("the Authorization header is too long")
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        raise MalformedCredentials("use HTTP Basic authentication: username = org, password = API key")
    try:
        decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True)
    except binascii.Error:
        raise MalformedCredentials("the Basic credentials are not valid base64 of UTF-8 text") from None
    username_raw, colon, password_raw = decoded.partition(b":")
    if not colon or not username_raw or not password_raw:
        raise MalformedCredentials("Basic credentials must be org:api-key")
    return username_raw, password_raw


def credentials_from(username_raw: bytes, password_raw: bytes) -> BasicCredentials:
    """Well-formed credentials from what ``split_basic`` found, or ``MalformedCredentials``."""
    try:
        username, password = username_raw.decode("utf-8"), password_raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedCredentials("the Basic credentials are not valid base64 of UTF-8 text") from None
    token = parse_token(password)
    if token is None:
        raise MalformedCredentials("the password is not a fluxauth API key (ema_...)")
    return BasicCredentials(username, token, username_raw, password_raw)


def parse_basic(values: Sequence[bytes]) -> BasicCredentials | None:
    """Parse the request's Authorization header values; ``None`` means no credentials."""
    raw = split_basic(values)
    return None if raw is None else credentials_from(*raw)
