"""Tests for fluxauth.auth.ratelimit: failed attempts counted per subject in fixed windows."""

from __future__ import annotations

import pytest

from fluxauth.auth.ratelimit import FailureLimiter
from fluxauth.clock import FakeClock

LIMIT = 3
WINDOW = 60.0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> FailureLimiter:
    return FailureLimiter(limit=LIMIT, window=WINDOW, clock=clock)


def fail(limiter: FailureLimiter, subject: str, times: int) -> None:
    for _ in range(times):
        limiter.record(subject)


def test_failure_limiter_new_subject_may_try(limiter: FailureLimiter) -> None:
    """A subject with no failures is not held back."""
    assert limiter.retry_after("10.0.0.1") is None


def test_failure_limiter_below_limit_may_try(limiter: FailureLimiter) -> None:
    """Fewer failures than the limit do not hold a subject back."""
    fail(limiter, "10.0.0.1", LIMIT - 1)
    assert limiter.retry_after("10.0.0.1") is None


def test_failure_limiter_at_limit_waits_until_window_ends(limiter: FailureLimiter, clock: FakeClock) -> None:
    """At the limit, the subject waits until the window that began with its first failure ends."""
    limiter.record("10.0.0.1")
    clock.advance(10)
    fail(limiter, "10.0.0.1", LIMIT - 1)
    assert limiter.retry_after("10.0.0.1") == pytest.approx(WINDOW - 10)
    clock.advance(20)
    assert limiter.retry_after("10.0.0.1") == pytest.approx(WINDOW - 30)


def test_failure_limiter_releases_when_window_ends(limiter: FailureLimiter, clock: FakeClock) -> None:
    """Once the window has passed, the subject may try again."""
    fail(limiter, "10.0.0.1", LIMIT)
    clock.advance(WINDOW - 0.5)
    assert limiter.retry_after("10.0.0.1") is not None
    clock.advance(0.5)
    assert limiter.retry_after("10.0.0.1") is None


def test_failure_limiter_new_window_starts_count_afresh(limiter: FailureLimiter, clock: FakeClock) -> None:
    """Failures of an ended window do not count toward the next one."""
    fail(limiter, "10.0.0.1", LIMIT - 1)
    clock.advance(WINDOW)
    fail(limiter, "10.0.0.1", LIMIT - 1)
    assert limiter.retry_after("10.0.0.1") is None
    limiter.record("10.0.0.1")
    assert limiter.retry_after("10.0.0.1") == pytest.approx(WINDOW)


def test_failure_limiter_failures_spread_over_the_window_count(limiter: FailureLimiter, clock: FakeClock) -> None:
    """Failures within one window add up even when spread out."""
    for _ in range(LIMIT):
        limiter.record("10.0.0.1")
        clock.advance(WINDOW / (LIMIT + 1))
    assert limiter.retry_after("10.0.0.1") == pytest.approx(WINDOW / (LIMIT + 1))


def test_failure_limiter_subjects_are_independent(limiter: FailureLimiter) -> None:
    """One subject's failures never hold back another."""
    fail(limiter, "10.0.0.1", LIMIT)
    fail(limiter, "token:0123456789abcdef", LIMIT - 1)
    assert limiter.retry_after("10.0.0.1") is not None
    assert limiter.retry_after("10.0.0.2") is None
    assert limiter.retry_after("token:0123456789abcdef") is None


def test_failure_limiter_retry_after_does_not_count(limiter: FailureLimiter) -> None:
    """Asking whether a subject may try is not a failure."""
    for _ in range(LIMIT * 3):
        assert limiter.retry_after("10.0.0.1") is None


def test_failure_limiter_maxsize_bounds_memory(clock: FakeClock) -> None:
    """A flood of distinct subjects evicts old ones instead of growing without bound."""
    limiter = FailureLimiter(limit=1, window=WINDOW, clock=clock, maxsize=10)
    for index in range(100):
        limiter.record(f"10.0.{index // 256}.{index % 256}")
    assert limiter.retry_after("10.0.0.99") is not None
    assert limiter.retry_after("10.0.0.0") is None
