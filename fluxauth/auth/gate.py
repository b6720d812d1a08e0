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
import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TypeVar

from cachetools import TTLCache

from fluxauth.auth.cache import CacheKeys, CredentialCache
from fluxauth.auth.hashing import TokenHasher
from fluxauth.auth.ratelimit import FailureLimiter, client_subject
from fluxauth.auth.shared import SharedCache
from fluxauth.auth.verifier import Verifier, verify_threads
from fluxauth.clock import Clock, system_clock
from fluxauth.config.settings import Settings
from fluxauth.decision.cors import Cors
from fluxauth.decision.credentials import BasicCredentials, credentials_from, split_basic
from fluxauth.decision.hosts import HostRules
from fluxauth.decision.policy import Decision, Failure, Outcome, Principal, decide, refuse, refuse_error
from fluxauth.decision.proxies import ProxyTrust
from fluxauth.decision.request import RequestHead, check_framing
from fluxauth.decision.routing import Routes
from fluxauth.decision.target import Target, check_query, parse_target
from fluxauth.errors import ConfigError, ConflictingCredentials, MalformedCredentials, Refusal, StoreUnavailable
from fluxauth.histogram import Histogram
from fluxauth.store import Change, ChangeListener, Credential, OrgPolicy, Store, open_store
from fluxauth.store.aio import AsyncStore

log = logging.getLogger("fluxauth")

K = TypeVar("K")
V = TypeVar("V")
Auth = Principal | Failure
_UNKNOWN_ORG = OrgPolicy("")  # cached stand-in for "no such org" (TTLCache cannot hold None apart)
LAST_USED_FLUSH_SECONDS = 60.0
# How long a credential that verified stays exempt from the failure limits and
# the bound on pending verifications (not from verification): an attacker who
# knows a token id, or floods the verify pool, can hold up *new* credentials,
# not a client that already used its own. Only a correct secret gets here, and
# each such verification is cached, so the exemption costs at most one
# verification per credential and cache_ttl.
KNOWN_GOOD_SECONDS = 86400.0
# Failures that are remembered (``Gate._failed``): what the credential's own
# bytes decide, and which no later moment can undo but a change to the store.
# A store that cannot be reached, a rate limit or a full queue are no verdict
# on the credential, and are never remembered.
REMEMBERED_FAILURES = frozenset(
    {Failure.UNKNOWN_TOKEN, Failure.BAD_SECRET, Failure.WRONG_ORG, Failure.EXPIRED, Failure.REVOKED}
)
FAILED_MAXSIZE = 10_000


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
    overloaded: int = 0  # refused: max_pending_verifications were already waiting
    failed_hits: int = 0  # failures answered from memory instead of argon2 (Gate._failed)
    pending_peak: int = 0  # the most verifications ever in flight at once
    verify_seconds: Histogram = dataclasses.field(default_factory=Histogram)


class Gate:
    """Decides on requests; owns the caches, pools and the change feed."""

    def __init__(self, settings: Settings, store: Store | None = None, *, clock: Clock = system_clock) -> None:
        self.settings = settings
        self.clock = clock
        self._store = store
        self.store: AsyncStore | None = None
        self.protocols = frozenset(settings.protocols)
        self.routes = Routes(settings.routes, settings.upstreams) if settings.routes else None
        self.cors = Cors(settings.cors_allow_origins, settings.cors_max_age)
        self.proxies = ProxyTrust(settings.trusted_proxies)
        self.hosts = HostRules(settings.public_hosts)
        self.cache = CredentialCache(ttl=settings.cache_ttl, maxsize=settings.cache_maxsize, clock=clock)
        self.limiter = FailureLimiter(
            limit=settings.rate_limit_failures, window=settings.rate_limit_window, clock=clock
        )
        self.stats = GateStats()
        self.shared = (
            SharedCache(settings.redis_url, ttl=settings.cache_ttl, clock=clock) if settings.redis_url else None
        )
        self._policies: TTLCache[str, OrgPolicy] = TTLCache(10_000, settings.cache_ttl, timer=clock)
        self._policy_loads: dict[str, asyncio.Future[OrgPolicy]] = {}
        self._verifications: dict[bytes, asyncio.Future[tuple[Auth, int | None]]] = {}
        # Credential HMACs that verified within KNOWN_GOOD_SECONDS (no principal, no secret).
        self._known_good: TTLCache[bytes, bool] = TTLCache(settings.cache_maxsize, KNOWN_GOOD_SECONDS, timer=clock)
        # Credential HMACs whose verification failed, and how (no principal, no secret): a
        # revoked token that a dashboard nobody updated sends again and again costs a lookup,
        # not argon2 (0.4-0.8 s here) each time. Emptied by every change (``apply``).
        self._failed: TTLCache[bytes, Failure] = TTLCache(FAILED_MAXSIZE, settings.cache_ttl, timer=clock)
        self._last_used: dict[tuple[str, str], float] = {}
        self._secret = b""
        self._cache_key = CacheKeys(b"")  # keyed with the cache secret at start
        self._hasher: TokenHasher | None = None
        self.verifier: Verifier | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.change_seq = 0
        self.start_seq = 0
        # (org, key name) -> number of the last change applied to it; shared
        # entries verified before it are refused.
        self._key_changed: dict[tuple[str, str], int] = {}
        self.started = False
        self.connected = False  # the store opened, its cache secret and feed read
        self.listener: ChangeListener | None = None

    # -- life cycle ----------------------------------------------------------

    async def start(self) -> None:
        """Start the pools, then open the store and follow its changes; or wait for the store, unready.

        A store that cannot be reached at start (a database still coming up)
        is no reason to exit: the server answers 503 (``readyz`` too) and
        opens the store as soon as it answers, without a restart.
        """
        if self.started:
            return
        self.started = True
        self.verifier = Verifier(verify_threads(self.settings))
        self._hasher = await self.verifier.call(TokenHasher, self.settings.argon2_profile)
        try:
            await self._connect()
        except StoreUnavailable as exc:
            log.warning("%s; not ready until the store answers", exc)
            self._tasks.append(asyncio.create_task(self._connect_when_the_store_answers(), name="fluxauth-store"))

    async def _connect(self) -> None:
        """Open the store (its schema created or upgraded), read the cache secret and the feed's end, follow it."""
        if self.store is None:
            store = self._store
            if store is None:
                store = await asyncio.to_thread(
                    open_store,
                    self.settings.store,
                    timeout=self.settings.store_timeout,
                    pool_size=self.settings.store_pool_size,
                )
            self.store = AsyncStore(store, self.settings.store_pool_size, timeout=self.settings.store_timeout)
        store = self.store.store
        configured = self.settings.cache_secret
        self._secret = configured.reveal().encode() if configured else await self.store.call(store.cache_secret)
        self._cache_key = CacheKeys(self._secret)
        self.change_seq = self.start_seq = await self.store.call(store.last_change)
        self.connected = True
        self._tasks += [
            asyncio.create_task(self._follow_changes(), name="fluxauth-changes"),
            asyncio.create_task(self._flush_last_used_forever(), name="fluxauth-last-used"),
        ]
        # Wake-ups, each a reason to read the feed at once rather than at the
        # next poll: the database's own (PostgreSQL) and Redis's, when configured.
        self.listener = store.listener()
        if self.listener is not None:
            self._tasks.append(asyncio.create_task(self.listener.follow(self._on_notice), name="fluxauth-listen"))
        if self.shared is not None:
            self._tasks.append(
                asyncio.create_task(self.shared.follow_notices(self._on_notice), name="fluxauth-notices")
            )

    async def _connect_when_the_store_answers(self) -> None:
        delay = 0.5
        while not self.connected:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except StoreUnavailable:
                delay = min(delay * 2, 5.0)
            except ConfigError as exc:  # reached, but refused (a newer schema): only an operator can fix it
                log.error("%s; not ready", exc)
                delay = 30.0
        log.warning("store %s answers; ready", self.store.store.where if self.store else "")

    def _connected_store(self) -> AsyncStore:
        if self.store is None or not self.connected:
            raise StoreUnavailable("the store has not answered since this server started")
        return self.store

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
        assert self.verifier is not None
        self.verifier.shutdown()
        if self.store is not None:
            self.store.close()
        if self.shared is not None:
            await self.shared.close()
        self._tasks, self.store, self.connected, self.started = [], None, False, False

    async def ready(self) -> dict[str, bool | None]:
        """Whether the store answers (and has since start), and Redis (None when not configured)."""
        store_ok = False
        if self.store is not None and self.connected:
            try:
                await self.store.call(self.store.store.ping)
                store_ok = True
            except StoreUnavailable:
                pass
        return {"store": store_ok, "redis": None if self.shared is None else await self.shared.ping()}

    # -- deciding ------------------------------------------------------------

    async def check(self, head: RequestHead) -> Decision:
        """The decision for one request (framing, path, policy, CORS, credentials)."""
        target = self._target(head)
        if isinstance(target, Decision):
            return target
        try:
            policy = await self.org_policy(target.org)
        except StoreUnavailable:
            return refuse(Failure.STORE_UNAVAILABLE)
        decision = self._decide(head, target, policy, None)
        if decision.outcome is not Outcome.AUTHENTICATE:
            return decision
        auth, retry_after = await self.authenticate(head)
        decision = self._decide(head, target, policy, auth)
        if retry_after is not None:
            decision = dataclasses.replace(decision, retry_after=retry_after)
        await self._hold(auth)
        return decision

    async def principal(self, head: RequestHead) -> Principal | Decision:
        """Who sent ``head`` (an internal endpoint's request: the management API), or the refusal.

        The same cache, failure limits and bound on verifications as a data
        request's credentials; a lapsed principal (rotated out, expired) is refused.
        """
        auth, retry_after = await self.authenticate(head)
        if isinstance(auth, Principal):
            lapsed = auth.lapsed(self.clock())
            if lapsed is None:
                return auth
            auth = lapsed
        decision = refuse(auth)
        if retry_after is not None:
            decision = dataclasses.replace(decision, retry_after=retry_after)
        await self._hold(auth)
        return decision

    async def _hold(self, auth: Auth) -> None:
        if auth is Failure.RATE_LIMITED and self.settings.rate_limit_delay:
            # A flood answered at once is answered as fast as it is sent, and
            # costs the cached traffic its share of the event loop; held, it
            # costs a timer (loadtests/bench.py, "attack").
            await asyncio.sleep(self.settings.rate_limit_delay)

    def decide_now(self, head: RequestHead) -> Decision | None:
        """``check`` from memory alone, or ``None`` where it would need the store, Redis or argon2.

        The hot path's decision (``fluxauth/server/hotpath.py``): the org's policy and the
        credential must both be cached. Any other answer, refusals of
        credentials included, is left to ``check``.
        """
        target = self._target(head)
        if isinstance(target, Decision):
            return target
        try:
            policy = self._policies[target.org]  # not .get(): one clock reading, not two
        except KeyError:
            return None
        known = None if policy is _UNKNOWN_ORG else policy
        decision = self._decide(head, target, known, None)
        if decision.outcome is not Outcome.AUTHENTICATE:
            return decision
        try:
            raw = split_basic(head.authorization)
        except MalformedCredentials:
            return None
        principal = None if raw is None else self._cached(self._cache_key(*raw))
        return None if principal is None else self._decide(head, target, known, principal)

    def _target(self, head: RequestHead) -> Target | Decision:
        """The request's target once its framing, path and query pass (and its route, if any); else the refusal."""
        try:
            check_framing(head, max_url_length=self.settings.max_url_length)
            forwarded_host = head.forwarded_host
            if forwarded_host is not None and (head.peer is None or not self.proxies.is_trusted(head.peer)):
                forwarded_host = None  # the client's own: dropped, not believed
            self.hosts.check(head.host, forwarded_host, http_11=head.http_version != "1.0")
            target = parse_target(head.raw_path, self.protocols, self.routes, head.query)
            check_query(head.query)
        except Refusal as exc:
            return refuse_error(exc)
        return target

    def _decide(self, head: RequestHead, target: Target, policy: OrgPolicy | None, auth: Auth | None) -> Decision:
        preflight = self.cors.preflight(head.method, head.origin, head.request_method)
        return decide(
            target=target, policy=policy, method=head.method, preflight=preflight, auth=auth, now=self.clock()
        )

    async def org_policy(self, org: str) -> OrgPolicy | None:
        policy = self._policies.get(org)
        if policy is None:
            policy = await asyncio.shield(_single_flight(self._policy_loads, org, lambda: self._load_policy(org)))
        return None if policy is _UNKNOWN_ORG else policy

    async def _load_policy(self, org: str) -> OrgPolicy:
        store = self._connected_store()
        generation = self.cache.generation
        policy = await store.call(store.store.org_policy, org) or _UNKNOWN_ORG
        if generation == self.cache.generation:  # not overtaken by a change
            self._policies[org] = policy
        return policy

    async def authenticate(self, head: RequestHead) -> tuple[Auth, int | None]:
        """The principal behind the request's credentials, or why there is none.

        The second value is a Retry-After for rate-limited clients. The order
        is what bounds an attacker's cost to us: cached credentials first (never
        locked out, never queued), then joining a verification already running
        for the same credential, then the failure limits (attempts still running
        count as failures), then the bound on verifications waiting for the pool.
        Credentials that verified here within a day pass both.
        """
        try:
            raw = split_basic(head.authorization)
            if raw is None:
                return Failure.MISSING, None
            # Only bytes that verified are ever cached, so a hit needs no
            # further parsing: the hot path ends here.
            key = self._cache_key(*raw)
            principal = self._cached(key)
            if principal is not None:
                return principal, None
            credentials = credentials_from(*raw)
        except MalformedCredentials as exc:
            self.limiter.record(self._client(head))
            return (Failure.AMBIGUOUS if isinstance(exc, ConflictingCredentials) else Failure.MALFORMED), None
        client = self._client(head)
        generation = self.cache.generation
        if self.shared is not None:
            principal = await self._shared_principal(key)
            if principal is not None:
                self.cache.put(key, principal, generation)
                self._last_used[(principal.org, principal.name)] = self.clock()
                return principal, None
        flight = self._verifications.get(key)
        if flight is None:
            # From here to creating the flight nothing awaits: concurrent
            # requests see each other's reservations.
            subjects = [client, self._token_subject(credentials.token.token_id)]
            exempt = key in self._known_good
            wait = None if exempt else self._local_retry_after(subjects)
            if wait:
                self.stats.rate_limited += 1
                return Failure.RATE_LIMITED, math.ceil(wait)
            if not exempt and len(self._verifications) >= self.settings.max_pending_verifications:
                self.stats.overloaded += 1
                return Failure.OVERLOADED, None
            self.limiter.reserve(subjects)
            flight = _single_flight(
                self._verifications,
                key,
                lambda: self._attempt(credentials, key, generation, subjects, exempt=exempt),
            )
            self.stats.pending_peak = max(self.stats.pending_peak, len(self._verifications))
        auth, retry_after = await asyncio.shield(flight)
        if isinstance(auth, Principal):
            self._last_used[(auth.org, auth.name)] = self.clock()
        return auth, retry_after

    def _cached(self, key: bytes) -> Principal | None:
        """The principal cached in level 1 under ``key`` (and its use noted), if any."""
        principal = self.cache.get(key)
        if principal is not None:
            self.stats.l1_hits += 1
            self._last_used[(principal.org, principal.name)] = self.clock()
        return principal

    def _client(self, head: RequestHead) -> str:
        """The rate-limit subject of the request's client (the peer, or the first untrusted hop)."""
        return client_subject(self.proxies.client(head.peer, head.forwarded_for))

    def _token_subject(self, token_id: str) -> str:
        """The rate-limit subject of a token id: keyed, so that Redis never holds token ids."""
        digest = hmac.digest(self._secret, b"token-id\x00" + token_id.encode("ascii"), "sha256")
        return "token:" + digest[:16].hex()

    def _local_retry_after(self, subjects: list[str]) -> float | None:
        waits = [wait for subject in subjects if (wait := self.limiter.retry_after(subject))]
        return max(waits) if waits else None

    async def _attempt(
        self, credentials: BasicCredentials, key: bytes, generation: int, subjects: list[str], *, exempt: bool
    ) -> tuple[Auth, int | None]:
        """One uncached attempt: the shared failure limits, then the verification; failures recorded."""
        try:
            if not exempt and self.shared is not None:
                wait = await self.shared.retry_after(subjects, self.settings.rate_limit_failures)
                if wait:
                    self.stats.rate_limited += 1
                    return Failure.RATE_LIMITED, math.ceil(wait)
            auth = await self._verify(credentials, key, generation, subjects[0], returning=exempt)
        finally:
            self.limiter.release(subjects)
        if isinstance(auth, Principal):
            self._known_good[key] = True
        elif auth is not Failure.STORE_UNAVAILABLE:
            self._known_good.pop(key, None)
            await self._record_failure(subjects)
        return auth, None

    async def _shared_principal(self, key: bytes) -> Principal | None:
        """A principal from level 2, if it was verified after everything this server knows of its key."""
        assert self.shared is not None
        found = await self.shared.get(key)
        if found is None:
            return None
        principal, seq = found
        if seq < self.start_seq or seq < self._key_changed.get((principal.org, principal.name), 0):
            return None
        self.shared.l2_hits += 1
        return principal

    async def _record_failure(self, subjects: list[str]) -> None:
        for subject in subjects:
            self.limiter.record(subject)
            if self.shared is not None:
                await self.shared.record_failure(subject, self.settings.rate_limit_window)

    async def _verify(
        self, credentials: BasicCredentials, key: bytes, generation: int, client: str, *, returning: bool
    ) -> Auth:
        """The credential's verdict: a failure remembered, or one verification (a failure then remembered).

        An unknown token and a wrong secret are remembered alike and answered
        alike from memory (the same refusal, no store read, no argon2, no
        verification counted): neither the time, the answer nor the metrics
        tell them apart on a repeat any more than on a first try. The failure
        limits count a remembered failure like any other (``_attempt``).

        Nothing is remembered that a change could make wrong: every change
        the feed brings empties the memory (a new key, a rotation, a grace
        moved, an expiry extended), and a verification that a change overtook
        (``generation``) leaves nothing behind, as for successes.
        """
        remembered = self._failed.get(key)
        if remembered is not None:
            self.stats.failed_hits += 1
            return remembered
        auth = await self._verify_once(credentials, key, generation, client, returning=returning)
        if isinstance(auth, Failure) and auth in REMEMBERED_FAILURES and generation == self.cache.generation:
            self._failed[key] = auth
        return auth

    async def _verify_once(
        self, credentials: BasicCredentials, key: bytes, generation: int, client: str, *, returning: bool
    ) -> Auth:
        """One argon2 verification against the store, off the event loop, in ``client``'s turn; caches a success."""
        assert self._hasher is not None
        assert self.verifier is not None
        # Noted before the store is read: a change that lands in between has a
        # higher number, and servers that know of it refuse the shared entry.
        seq = self.change_seq
        try:
            store = self._connected_store()
            found: Credential | None = await store.call(store.store.get_credential, credentials.token.token_id)
        except StoreUnavailable:
            return Failure.STORE_UNAVAILABLE
        self.stats.verifications += 1
        secret = credentials.token.secret
        if found is None:
            # The same work, and the same trace in the metrics, as a wrong
            # secret: neither the time nor /_fluxauth/metrics tells ids apart.
            _, seconds = await self.verifier.run(client, self._hasher.verify_decoy, secret, returning=returning)
            self.stats.verify_seconds.observe(seconds)
            return Failure.UNKNOWN_TOKEN
        matched, seconds = await self.verifier.run(
            client, self._hasher.verify, found.token.hash, secret, returning=returning
        )
        self.stats.verify_seconds.observe(seconds)
        if not matched:
            return Failure.BAD_SECRET
        if credentials.username != found.key.org:
            return Failure.WRONG_ORG
        principal = Principal(
            org=found.key.org,
            name=found.key.name,
            permissions=frozenset(found.key.permissions),
            repo_grants=dict(found.key.repo_grants),
            expires_at=found.key.expires_at,
            not_after=found.token.not_after,
        )
        lapsed = principal.lapsed(self.clock())
        if lapsed is not None:
            return lapsed
        self.cache.put(key, principal, generation)
        if self.shared is not None:
            await self.shared.put(key, principal, seq)
        return principal

    # -- changes -------------------------------------------------------------

    def apply(self, change: Change) -> None:
        """Drop what ``change`` makes stale."""
        if change.kind == "key" and change.key_name is not None:
            self.cache.drop_key(change.org, change.key_name)
            self._key_changed[(change.org, change.key_name)] = change.seq
        else:
            self._policies.pop(change.org, None)
            self.cache.bump()
        self._failed.clear()  # any change may have made a failure wrong (Gate._verify)
        self.change_seq = max(self.change_seq, change.seq)
        self.stats.changes_applied += 1

    async def changed(self) -> None:
        """After a mutation made here (the management API): apply it now, and wake the other servers.

        With PostgreSQL the store has sent its ``NOTIFY`` already; Redis
        subscribers hear it from here, as after a command-line change.
        """
        try:
            await self.poll_changes()
        except StoreUnavailable as exc:
            log.warning("cannot read the change feed after a change: %s", exc)
        if self.shared is not None:
            await self.shared.notify()

    def last_used(self, org: str, name: str) -> float | None:
        """When this server last saw ``name@org`` used and has not yet written it to the store."""
        return self._last_used.get((org, name))

    async def poll_changes(self) -> int:
        """Read and apply the changes since the last one seen; returns how many."""
        store = self._connected_store()
        changes = await store.call(store.store.changes_since, self.change_seq)
        for change in changes:
            self.apply(change)
        return len(changes)

    async def _on_notice(self) -> None:
        try:
            await self.poll_changes()
        except StoreUnavailable as exc:
            log.warning("cannot read the change feed after a notice: %s", exc)

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
                if failing:
                    log.warning("reading the change feed again")
                failing = False

    async def flush_last_used(self) -> None:
        """Write ``last_used_at`` for keys used since the last flush, in one batch."""
        if not self._last_used or self.store is None or not self.connected:
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
