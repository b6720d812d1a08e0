"""API tokens' format: ``ema_<token-id>_<secret>``.

The token id (64 random bits, hex) finds the token in O(1); the secret (240
random bits from ``secrets``) is shown once and stored only as an argon2id
hash (``fluxauth.auth.hashing``). A token is therefore verified with exactly
one argon2 call. Nothing here hashes or looks anything up.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

PREFIX = "ema_"
_TOKEN = re.compile(r"ema_([0-9a-f]{16})_([A-Za-z0-9_-]{40})")


@dataclass(frozen=True, slots=True)
class TokenParts:
    """A token split into its id and secret. ``repr`` hides the secret."""

    token_id: str
    secret: str

    def __repr__(self) -> str:
        return f"TokenParts(token_id={self.token_id!r}, secret='***')"


def parse_token(text: str) -> TokenParts | None:
    """Split ``ema_<id>_<secret>``; ``None`` if ``text`` is not shaped like a token."""
    match = _TOKEN.fullmatch(text)
    return None if match is None else TokenParts(match[1], match[2])


def new_token() -> tuple[TokenParts, str]:
    """A fresh token and its printable form (shown once, never stored)."""
    parts = TokenParts(secrets.token_hex(8), secrets.token_urlsafe(30))
    return parts, f"{PREFIX}{parts.token_id}_{parts.secret}"
