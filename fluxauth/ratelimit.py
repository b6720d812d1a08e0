"""Failed verifications, counted per client and per token id (fixed windows)."""

from __future__ import annotations

from cachetools import TTLCache

from fluxauth.clock import Clock


class FailureLimiter:
    """After ``limit`` failures within ``window`` seconds, a subject is refused until the window ends.

    Only failures count, and the limiter is consulted only before an uncached
    verification: a token that is already cached is never locked out by
    somebody else's failures.
    """

    def __init__(self, *, limit: int, window: float, clock: Clock, maxsize: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        # subject -> (failures, window start); the TTL forgets quiet subjects.
        self._counts: TTLCache[str, tuple[int, float]] = TTLCache(maxsize, window, timer=clock)

    def retry_after(self, subject: str) -> float | None:
        """Seconds until ``subject`` may try again, or ``None`` if it may now."""
        entry = self._counts.get(subject)
        if entry is None or entry[0] < self._limit:
            return None
        remaining = entry[1] + self._window - self._clock()
        return remaining if remaining > 0 else None

    def record(self, subject: str) -> None:
        now = self._clock()
        count, start = self._counts.get(subject, (0, now))
        if now - start >= self._window:
            count, start = 0, now
        self._counts[subject] = (count + 1, start)
