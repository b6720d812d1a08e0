"""Level 2: what workers and replicas share through Redis.

- Verified credentials, under the same HMAC as level 1 (never a token or a
  plain hash of one), as JSON that expires no later than the principal's own
  validity. Each entry carries the change-feed sequence number its verifier had
  applied *before* it read the store; a reader accepts the entry only if that
  number is at least the last change the reader has applied to the key, and at
  least the reader's own starting point. A verification that raced a deletion
  or rotation therefore never grants from Redis, whether or not notices arrive,
  Redis restarts, or replicas start later.
- Change notices on a pub/sub channel: a notice only wakes servers up to read
  the store's change feed at once, so a forged notice can neither revoke nor grant.
- Failure counts for the rate limiter, shared by every replica.

Redis is an accelerator, never an authority: when it cannot be reached, every
call here fails fast (short timeouts, no retries, a one-second circuit
breaker) and the caller falls back to level 1 and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from fluxauth.clock import Clock
from fluxauth.decision.policy import Principal

log = logging.getLogger("fluxauth.shared")

PREFIX = "fluxauth:"
CHANNEL = PREFIX + "changes"
_DOWN_SECONDS = 1.0
_TIMEOUT = 0.5


def _encode(principal: Principal, seq: int) -> bytes:
    return json.dumps(
        {
            "org": principal.org,
            "name": principal.name,
            "permissions": sorted(principal.permissions),
            "repo_grants": dict(principal.repo_grants),
            "expires_at": principal.expires_at,
            "not_after": principal.not_after,
            "seq": seq,
        },
        separators=(",", ":"),
    ).encode()


def _decode(raw: bytes | str) -> tuple[Principal, int]:
    data = json.loads(raw)
    principal = Principal(
        org=data["org"],
        name=data["name"],
        permissions=frozenset(data["permissions"]),
        repo_grants=data["repo_grants"],
        expires_at=float(data["expires_at"]),
        not_after=None if data["not_after"] is None else float(data["not_after"]),
    )
    return principal, int(data["seq"])


class SharedCache:
    """Redis-backed level 2 cache, change notices and failure counts."""

    def __init__(self, url: str, *, ttl: float, clock: Clock) -> None:
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=_TIMEOUT,
            socket_connect_timeout=_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=10,
        )
        self._ttl = ttl
        self._clock = clock
        self._down_until = 0.0
        self.errors = 0
        self.l2_hits = 0

    async def close(self) -> None:
        await self._redis.aclose()

    def _available(self) -> bool:
        return self._clock() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        if self._available():
            log.warning("redis unavailable, using the in-process cache and the store: %s", exc)
        self.errors += 1
        self._down_until = self._clock() + _DOWN_SECONDS

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    # -- credentials ---------------------------------------------------------

    async def get(self, key: bytes) -> tuple[Principal, int] | None:
        """The principal cached under ``key`` and the change sequence it was verified at."""
        if not self._available():
            return None
        try:
            raw = await self._redis.get(PREFIX + "cred:" + key.hex())
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        if raw is None:
            return None
        principal, seq = _decode(raw)
        if principal.lapsed(self._clock()) is not None:
            return None
        return principal, seq

    async def put(self, key: bytes, principal: Principal, seq: int) -> None:
        lifetime = min(self._ttl, principal.valid_until - self._clock())
        if lifetime <= 0 or not self._available():
            return
        try:
            await self._redis.set(PREFIX + "cred:" + key.hex(), _encode(principal, seq), px=int(lifetime * 1000))
        except (RedisError, OSError) as exc:
            self._failed(exc)

    # -- change notices ------------------------------------------------------

    async def notify(self) -> None:
        """Tell every server to read the change feed now."""
        try:
            await self._redis.publish(CHANNEL, b"1")
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def follow_notices(self, on_notice: Callable[[], Awaitable[object]]) -> None:
        """Call ``on_notice`` for every notice, reconnecting for as long as the task lives."""
        delay = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                delay = 0.1
                # A notice may have been missed while disconnected: catch up.
                await on_notice()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                    if message is not None:
                        await on_notice()
            except (RedisError, OSError) as exc:
                self._failed(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    # -- failure counts ------------------------------------------------------

    async def record_failure(self, subject: str, window: int) -> None:
        if not self._available():
            return
        key = PREFIX + "fail:" + subject
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, window, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)

    async def retry_after(self, subjects: list[str], limit: int) -> float | None:
        """Seconds until all ``subjects`` may try again; None if they may now (or Redis is down)."""
        if not self._available():
            return None
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for subject in subjects:
                    pipe.get(PREFIX + "fail:" + subject)
                    pipe.pttl(PREFIX + "fail:" + subject)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        waits = [
            ttl / 1000
            for count, ttl in zip(replies[::2], replies[1::2], strict=True)
            if count is not None and int(count) >= limit and ttl > 0
        ]
        return max(waits) if waits else None


async def announce(url: str, *, clock: Clock) -> bool:
    """What the command line does after a change: wake the servers to read the change feed.

    Returns False if Redis could not be reached (the servers then see the
    change through their own polling of the feed, within a second).
    """
    shared = SharedCache(url, ttl=1, clock=clock)
    try:
        await shared.notify()
    finally:
        await shared.close()
    return shared.errors == 0
