"""The gate: everything between a request's head and the decision.

It parses the target, looks up the org's policy and the credentials (each
cached, each loaded once however many requests ask at the same time), and asks
the pure ``decide``. It owns the long-lived resources that this takes: the
store's thread pool, the verification pool, the caches and the change feed.
The standalone proxy, the ASGI middleware and the forward-auth endpoint all
decide through one ``Gate``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cachetools import TTLCache

from fluxauth.cache import CredentialCache, cache_key
from fluxauth.clock import Clock, system_clock
from fluxauth.cors import Cors
from fluxauth.credentials import BasicCredentials, MalformedCredentials, parse_basic
from fluxauth.errors import StoreUnavailable
from fluxauth.policy import Decision, Failure, Outcome, Principal, decide, refuse, refuse_path
from fluxauth.proxies import ProxyTrust
from fluxauth.ratelimit import FailureLimiter
from fluxauth.request import RequestHead
from fluxauth.settings import Settings
from fluxauth.store import Change, Credential, OrgPolicy, Store, open_store
from fluxauth.store.aio import AsyncStore
from fluxauth.target import PathError, check_query, parse_target
from fluxauth.tokens import TokenHasher

log = logging.getLogger("fluxauth")

K = TypeVar("K")
V = TypeVar("V")
Auth = Principal | Failure
_UNKNOWN_ORG = OrgPolicy("")  # cached stand-in for "no such org" (TTLCache cannot hold None apart)
LAST_USED_FLUSH_SECONDS = 60.0


def _single_flight(table: dict[K, asyncio.Future[V]], key: K, make: Callable[[], Awaitable[V]]) -> asyncio.Future[V]:
    """One run of ``make`` for all concurrent callers with the same ``key``.

    The run is a task of its own, so a caller that goes away (client hung up)
    does not cancel it for the others; callers await it through ``shield``.
    """
    future = table.get(key)
    if future is None:
        future = asyncio.ensure_future(make())
        table[key] = future

        def forget(done: asyncio.Future[V]) -> None:
            if table.get(key) is done:
                del table[key]

        future.add_done_callback(forget)
    return future


@dataclasses.dataclass
class GateStats:
    """Plain counters, read by the metrics endpoint and by tests."""

    verifications: int = 0
    l1_hits: int = 0
    changes_applied: int = 0
    rate_limited: int = 0


class Gate:
    """Decides on requests; owns the caches, pools and the change feed."""

    def __init__(self, settings: Settings, store: Store | None = None, *, clock: Clock = system_clock) -> None:
        self.settings = settings
        self.clock = clock
        self._store = store
        self.store: AsyncStore | None = None
        self.protocols = frozenset(settings.protocols)
        self.cors = Cors(settings.cors_allow_origins, settings.cors_max_age)
        self.proxies = ProxyTrust(settings.trusted_proxies)
        self.cache = CredentialCache(ttl=settings.cache_ttl, maxsize=settings.cache_maxsize, clock=clock)
        self.limiter = FailureLimiter(
            limit=settings.rate_limit_failures, window=settings.rate_limit_window, clock=clock
        )
        self.stats = GateStats()
        self._policies: TTLCache[str, OrgPolicy] = TTLCache(10_000, settings.cache_ttl, timer=clock)
        self._policy_loads: dict[str, asyncio.Future[OrgPolicy]] = {}
        self._verifications: dict[bytes, asyncio.Future[Auth]] = {}
        self._last_used: dict[tuple[str, str], float] = {}
        self._secret = b""
        self._hasher: TokenHasher | None = None
        self._verify_pool: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.change_seq = 0
        self.started = False

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Open the store and pools, read the cache secret, follow the change feed."""
        if self.started:
            return
        self.started = True
        self.store = AsyncStore(self._store or open_store(self.settings.store))
        self._verify_pool = ThreadPoolExecutor(self.settings.verify_threads, thread_name_prefix="fluxauth-verify")
        loop = asyncio.get_running_loop()
        self._hasher = await loop.run_in_executor(self._verify_pool, TokenHasher, self.settings.argon2_profile)
        configured = self.settings.cache_secret
        self._secret = (
            configured.reveal().encode() if configured else await self.store.call(self.store.store.cache_secret)
        )
        self.change_seq = await self.store.call(self.store.store.last_change)
        self._tasks = [
            asyncio.create_task(self._follow_changes(), name="fluxauth-changes"),
            asyncio.create_task(self._flush_last_used_forever(), name="fluxauth-last-used"),
        ]

    async def stop(self) -> None:
        if not self.started:
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(StoreUnavailable):
            await self.flush_last_used()
        assert self.store is not None
        assert self._verify_pool is not None
        self._verify_pool.shutdown(wait=True)
        self.store.close()
        self.started = False

    async def ready(self) -> bool:
        """Whether the store answers."""
        if self.store is None:
            return False
        try:
            await self.store.call(self.store.store.ping)
        except StoreUnavailable:
            return False
        return True

    # -- deciding ------------------------------------------------------------

    async def check(self, head: RequestHead) -> Decision:
        """The decision for one request (path, policy, CORS, credentials)."""
        try:
            target = parse_target(head.raw_path, self.protocols)
            check_query(head.query)
        except PathError as exc:
            return refuse_path(exc)
        try:
            policy = await self.org_policy(target.org)
        except StoreUnavailable:
            return refuse(Failure.STORE_UNAVAILABLE)
        preflight = self.cors.preflight(head.method, head.origin, head.request_method)
        decision = decide(
            target=target, policy=policy, method=head.method, preflight=preflight, auth=None, now=self.clock()
        )
        if decision.outcome is not Outcome.AUTHENTICATE:
            return decision
        auth, retry_after = await self.authenticate(head)
        decision = decide(
            target=target, policy=policy, method=head.method, preflight=preflight, auth=auth, now=self.clock()
        )
        if retry_after is not None:
            decision = dataclasses.replace(decision, retry_after=retry_after)
        return decision

    async def org_policy(self, org: str) -> OrgPolicy | None:
        policy = self._policies.get(org)
        if policy is None:
            policy = await asyncio.shield(_single_flight(self._policy_loads, org, lambda: self._load_policy(org)))
        return None if policy is _UNKNOWN_ORG else policy

    async def _load_policy(self, org: str) -> OrgPolicy:
        assert self.store is not None
        generation = self.cache.generation
        policy = await self.store.call(self.store.store.org_policy, org) or _UNKNOWN_ORG
        if generation == self.cache.generation:  # not overtaken by a change
            self._policies[org] = policy
        return policy

    async def authenticate(self, head: RequestHead) -> tuple[Auth, int | None]:
        """The principal behind the request's credentials, or why there is none.

        The second value is a Retry-After for rate-limited clients.
        """
        client = self.proxies.client(head.peer, head.forwarded_for)
        try:
            credentials = parse_basic(head.authorization)
        except MalformedCredentials as exc:
            self.limiter.record(client)
            return (Failure.AMBIGUOUS if exc.status == 400 else Failure.MALFORMED), None
        if credentials is None:
            return Failure.MISSING, None
        key = cache_key(self._secret, credentials.username_raw, credentials.password_raw)
        principal = self.cache.get(key)
        if principal is not None:
            self.stats.l1_hits += 1
            self._last_used[(principal.org, principal.name)] = self.clock()
            return principal, None
        token_subject = "token:" + credentials.token.token_id
        wait = max(self.limiter.retry_after(client) or 0, self.limiter.retry_after(token_subject) or 0)
        if wait:
            self.stats.rate_limited += 1
            return Failure.RATE_LIMITED, math.ceil(wait)
        generation = self.cache.generation
        auth = await asyncio.shield(
            _single_flight(self._verifications, key, lambda: self._verify(credentials, key, generation))
        )
        if isinstance(auth, Failure):
            if auth is not Failure.STORE_UNAVAILABLE:
                self.limiter.record(client)
                self.limiter.record(token_subject)
        else:
            self._last_used[(auth.org, auth.name)] = self.clock()
        return auth, None

    async def _verify(self, credentials: BasicCredentials, key: bytes, generation: int) -> Auth:
        """One argon2 verification against the store, off the event loop; caches a success."""
        assert self.store is not None
        assert self._hasher is not None
        loop = asyncio.get_running_loop()
        try:
            found: Credential | None = await self.store.call(
                self.store.store.get_credential, credentials.token.token_id
            )
        except StoreUnavailable:
            return Failure.STORE_UNAVAILABLE
        self.stats.verifications += 1
        secret = credentials.token.secret
        if found is None:
            await loop.run_in_executor(self._verify_pool, self._hasher.verify_decoy, secret)
            return Failure.UNKNOWN_TOKEN
        if not await loop.run_in_executor(self._verify_pool, self._hasher.verify, found.token.hash, secret):
            return Failure.BAD_SECRET
        if credentials.username != found.key.org:
            return Failure.WRONG_ORG
        principal = Principal(
            org=found.key.org,
            name=found.key.name,
            token_id=found.token.token_id,
            permissions=frozenset(found.key.permissions),
            repo_grants=dict(found.key.repo_grants),
            expires_at=found.key.expires_at,
            not_after=found.token.not_after,
        )
        lapsed = principal.lapsed(self.clock())
        if lapsed is not None:
            return lapsed
        self.cache.put(key, principal, generation)
        return principal

    # -- changes -------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """Drop what ``change`` makes stale."""
        if change.kind == "key" and change.key_name is not None:
            self.cache.drop_key(change.org, change.key_name)
        else:
            self._policies.pop(change.org, None)
            self.cache.bump()
        self.change_seq = max(self.change_seq, change.seq)
        self.stats.changes_applied += 1

    async def poll_changes(self) -> int:
        """Read and apply the changes since the last one seen; returns how many."""
        assert self.store is not None
        changes = await self.store.call(self.store.store.changes_since, self.change_seq)
        for change in changes:
            self.apply(change)
        return len(changes)

    async def _follow_changes(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.change_poll_interval)
            try:
                await self.poll_changes()
            except StoreUnavailable as exc:
                if not failing:
                    log.warning("cannot read the change feed: %s", exc)
                failing = True
            else:
                failing = False

    async def flush_last_used(self) -> None:
        """Write ``last_used_at`` for keys used since the last flush, in one batch."""
        if not self._last_used or self.store is None:
            return
        batch, self._last_used = self._last_used, {}
        await self.store.call(self.store.store.touch_keys, batch)

    async def _flush_last_used_forever(self) -> None:
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
            try:
                await self.flush_last_used()
            except StoreUnavailable as exc:
                log.warning("cannot record last use of keys: %s", exc)
