"""Tests for fluxauth.auth.hashing: argon2id hashing and verification of token secrets."""

from __future__ import annotations

from typing import get_args

import argon2
import pytest

from fluxauth.auth import hashing
from fluxauth.auth.hashing import TokenHasher
from fluxauth.config.settings import Argon2Profile

SECRET = "abcdefghijABCDEFGHIJ0123456789-_abcdefgh"


@pytest.fixture(scope="module")
def hasher() -> TokenHasher:
    return TokenHasher("cheapest")


def test_token_hasher_hash_is_argon2id(hasher: TokenHasher) -> None:
    """The stored form is an argon2id hash that does not contain the secret."""
    hashed = hasher.hash(SECRET)
    assert hashed.startswith("$argon2id$")
    assert SECRET not in hashed


def test_token_hasher_hash_is_salted(hasher: TokenHasher) -> None:
    """Hashing one secret twice gives two hashes (a fresh salt each time)."""
    assert hasher.hash(SECRET) != hasher.hash(SECRET)


def test_token_hasher_verify_matches_only_the_secret(hasher: TokenHasher) -> None:
    """verify is True for the hashed secret and False for any other."""
    hashed = hasher.hash(SECRET)
    assert hasher.verify(hashed, SECRET) is True
    assert hasher.verify(hashed, SECRET[:-1] + "x") is False
    assert hasher.verify(hashed, "") is False


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param("", id="empty"),
        pytest.param("not a hash", id="garbage"),
        pytest.param("$argon2id$", id="prefix-only"),
        pytest.param("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", id="bcrypt"),
        pytest.param("$argon2id$v=19$m=8,t=1,p=1$é$abc", id="non-ascii"),
    ],
)
def test_token_hasher_verify_corrupt_hash_is_false(hasher: TokenHasher, corrupt: str) -> None:
    """A hash that cannot be read counts as no match instead of raising."""
    assert hasher.verify(corrupt, SECRET) is False


def test_token_hasher_verify_truncated_hash_is_false(hasher: TokenHasher) -> None:
    """A real hash cut short no longer verifies its own secret."""
    hashed = hasher.hash(SECRET)
    assert hasher.verify(hashed[:-4], SECRET) is False


def test_token_hasher_verify_decoy_is_false(hasher: TokenHasher) -> None:
    """The decoy verification spends the time and always answers False."""
    assert hasher.verify_decoy(SECRET) is False
    assert hasher.verify_decoy("") is False


def test_token_hasher_every_profile_is_argon2id() -> None:
    """Every profile that settings accept has parameters, all of them for argon2id."""
    # Checked on the parameters: the high-memory profile would take 2 GiB to hash with.
    assert set(hashing._PROFILES) == set(get_args(Argon2Profile))
    assert all(params.type is argon2.Type.ID for params in hashing._PROFILES.values())


def test_token_hasher_low_memory_profile_hashes_argon2id() -> None:
    """The default profile builds a hasher that hashes and verifies with argon2id."""
    hasher = TokenHasher("rfc9106-low-memory")
    hashed = hasher.hash(SECRET)
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert hasher.verify(hashed, SECRET) is True
