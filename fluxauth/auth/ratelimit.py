"""Failed verifications, counted per client and per token id (fixed windows)."""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable

from cachetools import TTLCache

from fluxauth.clock import Clock

# One IPv6 client commonly holds a whole /64 (RFC 6177 hands out /48 to /64
# per site), and picks a new address in it for every connection at no cost;
# counting per address would let it spread its guesses over 2**64 counters.
IPV6_CLIENT_PREFIX = 64


def client_subject(address: str) -> str:
    """The subject that failures of the client at ``address`` are counted against.

    IPv4 addresses (also when mapped into IPv6) count alone; IPv6 addresses by
    their /64. Anything else (``unknown``, a Unix socket) is taken as it is.
    """
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed)


class FailureLimiter:
    """After ``limit`` failures within ``window`` seconds, a subject is refused until the window ends.

    Only failures count, and the limiter is consulted only before an uncached
    verification: a token that is already cached is never locked out by
    somebody else's failures. Verifications still running are counted as if
    they had failed (``reserve``/``release``): otherwise a client sending a
    thousand guesses at once would pass the check a thousand times before the
    first of them had failed, and cost a thousand argon2 verifications.
    """

    def __init__(self, *, limit: int, window: float, clock: Clock, maxsize: int = 100_000) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        # subject -> (failures, window start); the TTL forgets quiet subjects.
        self._counts: TTLCache[str, tuple[int, float]] = TTLCache(maxsize, window, timer=clock)
        self._pending: Counter[str] = Counter()

    def retry_after(self, subject: str) -> float | None:
        """Seconds until ``subject`` may try again, or ``None`` if it may now."""
        now = self._clock()
        failures, start = self._counts.get(subject, (0, now))
        if now - start >= self._window:
            failures = 0
        if failures + self._pending[subject] < self._limit:
            return None
        if failures >= self._limit:
            return start + self._window - now
        # The limit is reached only with attempts still running: their outcome
        # is known within about one verification's time.
        return 1.0

    def record(self, subject: str) -> None:
        now = self._clock()
        count, start = self._counts.get(subject, (0, now))
        if now - start >= self._window:
            count, start = 0, now
        self._counts[subject] = (count + 1, start)

    def reserve(self, subjects: Iterable[str]) -> None:
        """Count a verification that has started for ``subjects`` until it is released."""
        self._pending.update(subjects)

    def release(self, subjects: Iterable[str]) -> None:
        """The verification ``reserve`` counted has ended (record its failure separately)."""
        for subject in subjects:
            self._pending[subject] -= 1
            if self._pending[subject] <= 0:
                del self._pending[subject]
