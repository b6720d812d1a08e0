"""argon2id hashing of token secrets, with parameters from a named profile checked once here."""

from __future__ import annotations

import secrets

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from fluxauth.config.settings import Argon2Profile

_PROFILES: dict[Argon2Profile, argon2.Parameters] = {
    "rfc9106-low-memory": argon2.profiles.RFC_9106_LOW_MEMORY,
    "rfc9106-high-memory": argon2.profiles.RFC_9106_HIGH_MEMORY,
    # For tests only: "any unnecessary slowdown when hashing is a tangible
    # advantage for a brute-force attacker" does not apply to a test store.
    "cheapest": argon2.profiles.CHEAPEST,
}


def lanes(profile: Argon2Profile) -> int:
    """The threads one verification runs with this profile (argon2's parallelism)."""
    return _PROFILES[profile].parallelism


class TokenHasher:
    """argon2id hashing with parameters from a named profile, checked once here."""

    def __init__(self, profile: Argon2Profile) -> None:
        self._hasher = argon2.PasswordHasher.from_parameters(_PROFILES[profile])
        # Verified against when the token id is unknown, so that an unknown id
        # costs the same time as a wrong secret and does not reveal itself.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(30))

    def hash(self, secret: str) -> str:
        return self._hasher.hash(secret)

    def verify(self, hashed: str, secret: str) -> bool:
        """True if ``secret`` matches ``hashed``; a corrupt hash counts as no match."""
        try:
            return self._hasher.verify(hashed, secret)
        # argon2-cffi encodes the hash as ASCII before parsing it, so a corrupt
        # hash with a non-ASCII character raises UnicodeEncodeError, not InvalidHashError.
        except (VerifyMismatchError, VerificationError, InvalidHashError, UnicodeEncodeError):
            return False

    def verify_decoy(self, secret: str) -> bool:
        """Spend one verification's time and answer False."""
        self.verify(self._decoy, secret)
        return False
