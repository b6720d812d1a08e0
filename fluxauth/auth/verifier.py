"""The verification pool: argon2 off the event loop, below its priority, its threads shared fairly between clients.

A plain thread pool serves verifications in the order they arrive. One client
flooding wrong secrets for a real token id keeps ``rate_limit_failures`` (20)
of them queued, and every new credential waited behind all of them: 9 to 19 s
on a 2-core machine with one verification thread (``loadtests/verify_flood.py``).
Here a verification waits only behind the *first* verifications of other
clients, not behind their backlogs: each one's rank is how many verifications
its client already has waiting or running (a client's first is rank 0, its
twentieth rank 19), and the lowest rank goes next, oldest first. A new
credential therefore waits for at most one verification per other client
with work queued (plus those running), whatever their backlogs — one
flooding address costs it one verification's time, not twenty.

Ahead of every rank come credentials that verified on this server within a
day (``returning``): only a right secret earns that, so an attacker cannot
jump the queue with it, and a client that used its key before is never
queued behind a flood at all.

The client is the rate limiter's subject (the address, an IPv6 /64, behind
``trusted_proxies`` the first untrusted hop): clients that share an address
(NAT) share a rank, and a flood from many addresses still fills the bound of
``max_pending_verifications`` (SECURITY.md: what is not defended).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from fluxauth.auth.hashing import lanes
from fluxauth.config.settings import Settings

T = TypeVar("T")

# argon2 is slow on purpose and runs on every core it is given (the default
# profile has 4 lanes, each a thread of the verifying one): at the same
# priority as the event loop, a burst of wrong secrets takes the cores from
# the cached traffic. Verification threads (and the lane threads they start,
# which inherit it) run at this nice value instead: they get what the event
# loop leaves, which is most of the machine except under full load.
VERIFY_NICE = 10


def verify_threads(settings: Settings) -> int:
    """How many verifications run at once: the setting, or the cores divided by the profile's lanes."""
    return settings.verify_threads or max(1, (os.cpu_count() or 1) // lanes(settings.argon2_profile))


def yield_to_the_event_loop() -> None:
    """Lower the calling verification thread's scheduling priority (per thread on Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # no setpriority, or not allowed: run as is
        os.setpriority(os.PRIO_PROCESS, 0, VERIFY_NICE)


def _timed(work: Callable[..., T], *args: object) -> tuple[T, float]:
    """``work(*args)`` and the seconds it took, in the thread that ran it (not counting the wait for it)."""
    started = time.perf_counter()
    result = work(*args)
    return result, time.perf_counter() - started


class Verifier:
    """``threads`` verifications at once, in the order described above; created at start, shut down at stop."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(
            threads, thread_name_prefix="fluxauth-verify", initializer=yield_to_the_event_loop
        )
        self._running = 0
        # (0 returning / 1 new, rank, arrival, handed a thread); a heap, lowest first.
        self._waiting: list[tuple[int, int, int, asyncio.Future[None]]] = []
        self._load: Counter[str] = Counter()  # per client: verifications waiting or running
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def run(self, client: str, work: Callable[..., T], *args: object, returning: bool = False) -> tuple[T, float]:
        """``work(*args)`` in a verification thread when ``client``'s turn comes; its result and seconds."""
        rank = self._load[client]
        self._load[client] += 1
        try:
            if self._running < self.threads and not self._waiting:
                self._running += 1
            else:
                turn = asyncio.get_running_loop().create_future()
                heapq.heappush(self._waiting, (0 if returning else 1, rank, next(self._arrivals), turn))
                try:
                    await turn
                except asyncio.CancelledError:
                    if turn.done() and not turn.cancelled():  # handed a thread, then cancelled
                        self._next()
                    raise
            try:
                return await asyncio.get_running_loop().run_in_executor(self._pool, _timed, work, *args)
            finally:
                self._next()
        finally:
            self._load[client] -= 1
            if not self._load[client]:
                del self._load[client]

    def _next(self) -> None:
        """A thread is free: hand it to the first waiting verification, or keep it free."""
        while self._waiting:
            turn = heapq.heappop(self._waiting)[3]
            if not turn.done():  # not cancelled meanwhile
                turn.set_result(None)
                return
        self._running -= 1

    async def call(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` in a verification thread, outside the queue (the hasher's start-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, work, *args)

    def shutdown(self) -> None:
        for *_, turn in self._waiting:
            turn.cancel()
        self._waiting.clear()
        self._pool.shutdown(wait=True)
