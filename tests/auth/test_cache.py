"""Tests for fluxauth.auth.cache: HMAC keys and a cache that never outlives a token, a TTL or a change."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from fluxauth.auth.cache import CredentialCache, cache_key
from fluxauth.clock import FakeClock
from fluxauth.decision.policy import Principal

SECRET = b"cache-secret-cache-secret"
TOKEN = b"ema_0123456789abcdef_S3cr3t-S3cr3t_S3cr3t-S3cr3t_S3cr3t-S3cr3"
TTL = 300.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> CredentialCache:
    return CredentialCache(ttl=TTL, maxsize=100, clock=clock)


def principal(clock: FakeClock, *, org: str = "acme", name: str = "reader", lifetime: float = 86_400.0) -> Principal:
    return Principal(
        org=org,
        name=name,
        permissions=frozenset({"read"}),
        repo_grants={},
        expires_at=clock() + lifetime,
        not_after=None,
    )


def test_cache_key_is_hmac_sha256_of_length_prefixed_pair() -> None:
    """The key is HMAC-SHA256 under the cache secret, over len(username) || username || token."""
    expected = hmac.new(SECRET, (4).to_bytes(4, "big") + b"acme" + TOKEN, hashlib.sha256).digest()
    assert cache_key(SECRET, b"acme", TOKEN) == expected
    assert len(expected) == 32


def test_cache_key_contains_no_token_nor_plain_hash() -> None:
    """Neither the token nor its unkeyed SHA-256 can be read from the key."""
    key = cache_key(SECRET, b"acme", TOKEN)
    assert TOKEN not in key
    assert key != hashlib.sha256(TOKEN).digest()
    assert key != hashlib.sha256(b"acme" + TOKEN).digest()


def test_cache_key_is_stable() -> None:
    """The same secret, username and token always give the same key."""
    assert cache_key(SECRET, b"acme", TOKEN) == cache_key(SECRET, b"acme", TOKEN)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param((SECRET, b"acme", TOKEN), (SECRET, b"other", TOKEN), id="username"),
        pytest.param((SECRET, b"acme", TOKEN), (SECRET, b"acme", TOKEN[:-1] + b"x"), id="token"),
        pytest.param((SECRET, b"acme", TOKEN), (b"another-cache-secret!", b"acme", TOKEN), id="secret"),
        pytest.param((SECRET, b"ab", b"c"), (SECRET, b"a", b"bc"), id="length-prefixed"),
        pytest.param((SECRET, b"", b"abc"), (SECRET, b"abc", b""), id="empty-sides"),
    ],
)
def test_cache_key_differs(first: tuple[bytes, bytes, bytes], second: tuple[bytes, bytes, bytes]) -> None:
    """A different username, token or secret, or the same bytes split elsewhere, give another key."""
    assert cache_key(*first) != cache_key(*second)


def test_cache_get_returns_what_was_put(cache: CredentialCache, clock: FakeClock) -> None:
    """A principal put under a key is returned for that key and no other."""
    reader = principal(clock)
    key = cache_key(SECRET, b"acme", TOKEN)
    assert cache.put(key, reader, cache.generation) is True
    assert cache.get(key) is reader
    assert cache.get(cache_key(SECRET, b"other", TOKEN)) is None
    assert len(cache) == 1


def test_cache_get_not_past_principal_valid_until(cache: CredentialCache, clock: FakeClock) -> None:
    """An entry is not returned once the principal's key has expired, though the TTL has not passed."""
    short = principal(clock, lifetime=60)
    cache.put(b"k", short, cache.generation)
    clock.advance(59.9)
    assert cache.get(b"k") is short
    clock.advance(0.1)
    assert cache.get(b"k") is None
    assert len(cache) == 0


def test_cache_get_not_past_token_grace(cache: CredentialCache, clock: FakeClock) -> None:
    """An entry of a token rotated out is not returned after its grace ends."""
    rotated = Principal(
        org="acme",
        name="reader",
        permissions=frozenset({"read"}),
        repo_grants={},
        expires_at=clock() + 86_400,
        not_after=clock() + 30,
    )
    cache.put(b"k", rotated, cache.generation)
    clock.advance(29)
    assert cache.get(b"k") is rotated
    clock.advance(1)
    assert cache.get(b"k") is None


def test_cache_get_not_past_ttl(cache: CredentialCache, clock: FakeClock) -> None:
    """An entry of a long-lived key is dropped when the cache's TTL passes."""
    reader = principal(clock)
    cache.put(b"k", reader, cache.generation)
    clock.advance(TTL - 1)
    assert cache.get(b"k") is reader
    clock.advance(1)
    assert cache.get(b"k") is None


def test_cache_put_refused_when_generation_changed(cache: CredentialCache, clock: FakeClock) -> None:
    """A verification that started before a change does not cache what it read."""
    started = cache.generation
    cache.bump()
    assert cache.put(b"k", principal(clock), started) is False
    assert cache.get(b"k") is None
    assert cache.put(b"k", principal(clock), cache.generation) is True


@pytest.mark.parametrize("change", ["bump", "clear", "drop_key"])
def test_cache_every_change_moves_generation(cache: CredentialCache, change: str) -> None:
    """bump, clear and drop_key all start a new generation."""
    before = cache.generation
    if change == "drop_key":
        cache.drop_key("acme", "nobody")
    else:
        getattr(cache, change)()
    assert cache.generation > before


def test_cache_put_refused_for_lapsed_principal(cache: CredentialCache, clock: FakeClock) -> None:
    """A principal already past its validity is not cached."""
    assert cache.put(b"k", principal(clock, lifetime=0), cache.generation) is False
    assert len(cache) == 0


def test_cache_drop_key_drops_only_that_key(cache: CredentialCache, clock: FakeClock) -> None:
    """Forgetting ``reader@acme`` forgets all its tokens and keeps other keys' entries."""
    reader_one, reader_two = principal(clock), principal(clock)
    same_name_other_org = principal(clock, org="other")
    other_name_same_org = principal(clock, name="writer")
    for key, value in [
        (b"r1", reader_one),
        (b"r2", reader_two),
        (b"o", same_name_other_org),
        (b"w", other_name_same_org),
    ]:
        cache.put(key, value, cache.generation)
    assert cache.drop_key("acme", "reader") == 2
    assert cache.get(b"r1") is None
    assert cache.get(b"r2") is None
    assert cache.get(b"o") is same_name_other_org
    assert cache.get(b"w") is other_name_same_org
    assert len(cache) == 2


def test_cache_clear_drops_everything(cache: CredentialCache, clock: FakeClock) -> None:
    """clear forgets every entry."""
    cache.put(b"a", principal(clock), cache.generation)
    cache.put(b"b", principal(clock, org="other"), cache.generation)
    cache.clear()
    assert len(cache) == 0
    assert cache.get(b"a") is None


def test_cache_maxsize_bounds_entries(clock: FakeClock) -> None:
    """The cache never holds more than ``maxsize`` entries."""
    small = CredentialCache(ttl=TTL, maxsize=3, clock=clock)
    for index in range(10):
        small.put(bytes([index]), principal(clock), small.generation)
    assert len(small) == 3
