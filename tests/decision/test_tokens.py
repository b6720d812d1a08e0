"""Tests for fluxauth.decision.tokens: token shape, randomness and parsing."""

from __future__ import annotations

import re
import secrets

import pytest

from fluxauth.decision import tokens
from fluxauth.decision.tokens import TokenParts, new_token, parse_token

TOKEN_SHAPE = re.compile(r"ema_[0-9a-f]{16}_[A-Za-z0-9_-]{40}")
TOKEN_ID = "0123456789abcdef"
SECRET = "abcdefghijABCDEFGHIJ0123456789-_abcdefgh"


def test_new_token_has_the_documented_shape() -> None:
    """A new token reads ``ema_<16 hex>_<40 urlsafe>`` and matches its parts."""
    parts, text = new_token()
    assert TOKEN_SHAPE.fullmatch(text)
    assert text == f"ema_{parts.token_id}_{parts.secret}"


def test_new_token_secret_carries_at_least_160_bits_from_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secret comes from ``secrets`` with at least 20 random bytes (160 bits)."""
    asked: list[int] = []
    real = secrets.token_urlsafe

    def token_urlsafe(nbytes: int) -> str:
        asked.append(nbytes)
        return real(nbytes)

    monkeypatch.setattr(tokens.secrets, "token_urlsafe", token_urlsafe)
    parts, _ = new_token()
    assert asked
    assert asked[0] * 8 >= 160
    # 40 characters of a 64-letter alphabet: 240 bits.
    assert len(parts.secret) * 6 >= 160


def test_new_token_is_unique() -> None:
    """A thousand new tokens share neither an id nor a secret."""
    made = [new_token()[0] for _ in range(1000)]
    assert len({parts.token_id for parts in made}) == 1000
    assert len({parts.secret for parts in made}) == 1000


def test_parse_token_round_trips_new_token() -> None:
    """parse_token gives back exactly the parts new_token made."""
    parts, text = new_token()
    assert parse_token(text) == parts


def test_parse_token_splits_id_and_secret() -> None:
    """The id is the 16 hex digits and the secret the 40 characters after them."""
    assert parse_token(f"ema_{TOKEN_ID}_{SECRET}") == TokenParts(TOKEN_ID, SECRET)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param(f"{TOKEN_ID}_{SECRET}", id="no-prefix"),
        pytest.param(f"EMA_{TOKEN_ID}_{SECRET}", id="upper-case-prefix"),
        pytest.param(f"emb_{TOKEN_ID}_{SECRET}", id="other-prefix"),
        pytest.param(f"ema_{TOKEN_ID.upper()}_{SECRET}", id="upper-case-id"),
        pytest.param(f"ema_{TOKEN_ID[:-1]}_{SECRET}", id="short-id"),
        pytest.param(f"ema_{TOKEN_ID}0_{SECRET}", id="long-id"),
        pytest.param(f"ema_0123456789abcdeg_{SECRET}", id="non-hex-id"),
        pytest.param(f"ema_{TOKEN_ID}_{SECRET[:-1]}", id="short-secret"),
        pytest.param(f"ema_{TOKEN_ID}_{SECRET}a", id="long-secret"),
        pytest.param(f"ema_{TOKEN_ID}_{SECRET[:-1]}+", id="plus-in-secret"),
        pytest.param(f"ema_{TOKEN_ID}_{SECRET[:-1]}=", id="padding-in-secret"),
        pytest.param(f"ema_{TOKEN_ID}_{SECRET[:-1]}é", id="non-ascii-secret"),
        pytest.param(f"ema_{TOKEN_ID}{SECRET}", id="no-separator"),
        pytest.param(f" ema_{TOKEN_ID}_{SECRET}", id="leading-space"),
        pytest.param(f"ema_{TOKEN_ID}_{SECRET}\n", id="trailing-newline"),
    ],
)
def test_parse_token_rejects_other_shapes(text: str) -> None:
    """Anything not exactly ``ema_<16 hex>_<40 urlsafe>`` is not a token."""
    assert parse_token(text) is None


def test_token_parts_repr_hides_secret() -> None:
    """repr() of a token shows its id, never its secret."""
    text = repr(TokenParts(TOKEN_ID, SECRET))
    assert SECRET not in text
    assert TOKEN_ID in text
