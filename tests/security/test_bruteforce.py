"""Brute force and cost: failures are limited per client and per token id, argon2 work per replica is bounded.

Each test says which defence it exercises; all run against fluxauth as
``fluxauth serve`` runs it, with an injected clock (no test waits for a window).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import secrets
import statistics
import time
from collections.abc import Callable

import aiohttp
import pytest
import redis

from fluxauth.auth.ratelimit import FailureLimiter, client_subject
from fluxauth.clock import FakeClock
from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin, IssuedToken
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import ProxyFactory, basic
from tests.support.readers import get_raw
from tests.support.servers import Proxy, redis_url, start_proxy

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

TILE = "/v1/services/tiles/acme/era5/main/_echo"
REDIS_URL = redis_url()
LOOPBACK = (ipaddress.ip_network("127.0.0.1/32"),)


def guess() -> str:
    """A well-formed token that does not exist."""
    return f"ema_{secrets.token_hex(8)}_{secrets.token_urlsafe(30)}"


def wrong_secret(token: IssuedToken) -> str:
    return f"ema_{token.token_id}_{secrets.token_urlsafe(30)}"


@pytest.fixture
def reader(admin: Admin) -> IssuedToken:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    return admin.create_key("acme", "reader", permissions=["read"])


Start = Callable[..., Proxy]


@pytest.fixture
def start(proxy_factory: ProxyFactory, reader: IssuedToken) -> Start:
    """fluxauth with the fixture's settings and ``changes``, the reader key made first."""
    return proxy_factory


def status(front: Proxy, password: str, *, client: str | None = None, username: str = "acme") -> tuple[int, str | None]:
    headers = [(b"Authorization", basic(username, password)["Authorization"].encode())]
    if client:
        headers.append((b"X-Forwarded-For", client.encode()))
    response = get_raw(front.port, TILE.encode(), headers)
    return response.status, response.header("retry-after")


async def flood(url: str, requests: list[dict[str, str]], concurrency: int) -> list[tuple[int, str | None]]:
    """Send every request (its headers) at once, ``concurrency`` at a time; statuses and Retry-After."""
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(headers: dict[str, str]) -> tuple[int, str | None]:
            async with limit, session.get(url + TILE, headers=headers) as response:
                await response.read()
                return response.status, response.headers.get("Retry-After")

        return list(await asyncio.gather(*(one(headers) for headers in requests)))


def test_bruteforce_a_burst_of_guesses_costs_at_most_the_limit(start: Start) -> None:
    """300 concurrent guesses from one client cause at most ``rate_limit_failures`` argon2 verifications.

    Defence: attempts still being verified count as failures
    (``FailureLimiter.reserve``); without it every guess that arrives before
    the first failure is recorded passes the check and costs a verification.
    """
    front = start(rate_limit_failures=5)
    results = asyncio.run(flood(front.url, [basic("acme", guess()) for _ in range(300)], concurrency=300))
    verifications = front.app.gate.stats.verifications
    print(f"300 concurrent guesses from one client: {verifications} argon2 verifications")
    assert verifications <= 5
    assert sorted({code for code, _ in results}) == [401, 429]
    assert all(retry and int(retry) >= 1 for code, retry in results if code == 429)


def test_bruteforce_pending_verifications_are_bounded_and_known_clients_get_through(
    start: Start, reader: IssuedToken, admin: Admin, clock: FakeClock
) -> None:
    """A flood of guesses from many addresses never queues more than ``max_pending_verifications``; the rest get 503.

    Real argon2 (RFC 9106 low-memory, the default) and one verify thread; the
    flood comes through a trusted proxy with a new client address each time,
    so per-client limits do not stop it. Defence: the bound in
    ``Gate.authenticate``; without it all 200 guesses queue (about 0.1 s each).
    Meanwhile a cached token is served at once, and a token that verified
    earlier but whose cache entry has expired is verified again despite the
    bound (``Gate._known_good``).
    """
    front = start(
        argon2_profile="rfc9106-low-memory",
        verify_threads=1,
        max_pending_verifications=4,
        trusted_proxies=LOOPBACK,
        rate_limit_failures=1000,
        cache_ttl=300,
    )
    returning = admin.create_key("acme", "returning", permissions=["read"])
    assert status(front, returning.token)[0] == 200
    clock.advance(301)  # its cache entry has expired; it is still known good
    assert status(front, reader.token)[0] == 200  # cached from now on
    legit, back = basic("acme", reader.token), basic("acme", returning.token)
    floods = [{**basic("acme", guess()), "X-Forwarded-For": f"198.51.{i // 250}.{i % 250}"} for i in range(200)]

    async def scenario() -> tuple[list[tuple[int, str | None]], list[float], int]:
        latencies: list[float] = []
        async with aiohttp.ClientSession() as session:
            attack = asyncio.ensure_future(flood(front.url, floods, concurrency=200))
            await asyncio.sleep(0.05)  # let the flood fill the queue
            async with session.get(front.url + TILE, headers=back) as response:
                returning_status = response.status
            for _ in range(20):
                started = time.perf_counter()
                async with session.get(front.url + TILE, headers=legit) as response:
                    assert response.status == 200
                latencies.append(time.perf_counter() - started)
            return await attack, latencies, returning_status

    started = time.perf_counter()
    results, latencies, returning_status = asyncio.run(scenario())
    elapsed = time.perf_counter() - started
    stats = front.app.gate.stats
    codes = [code for code, _ in results]
    print(
        f"200 concurrent guesses from 200 addresses, max_pending_verifications=4: "
        f"{stats.verifications - 3} verifications for them, peak {stats.pending_peak} pending, "
        f"{codes.count(503)} x 503, {codes.count(401)} x 401 in {elapsed:.2f} s; "
        f"cached token median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms; "
        f"returning token {returning_status}"
    )
    assert returning_status == 200
    assert stats.pending_peak <= 5  # the bound, and the returning token above it
    assert stats.overloaded == codes.count(503) > 0
    assert set(codes) <= {401, 503}
    assert all(retry == "1" for code, retry in results if code == 503)
    assert stats.verifications <= 200 - codes.count(503) + 3


def test_bruteforce_cached_and_known_tokens_are_never_locked_out(
    start: Start, reader: IssuedToken, clock: FakeClock
) -> None:
    """An attacker who locks a token id and a shared address out does not lock out a client that already used the token.

    Defences: the limiter is consulted only after the caches (a cached token
    is served); a credential that verified within a day is exempt from the
    limits after its cache entry expires (``Gate._known_good``). A token never
    used on this replica is refused while its id is under attack (the trade-off
    SECURITY.md describes).
    """
    front = start(rate_limit_failures=3, cache_ttl=300)
    assert status(front, reader.token) == (200, None)
    for _ in range(3):
        assert status(front, wrong_secret(reader))[0] == 401
    attacker = status(front, wrong_secret(reader))
    assert attacker[0] == 429
    assert attacker[1] is not None
    assert status(front, reader.token) == (200, None)  # cached
    clock.advance(301)  # the cache entry is gone; the lock (60 s window, renewed below) is not
    for _ in range(3):
        status(front, wrong_secret(reader))
    assert front.app.gate.limiter.retry_after(front.app.gate._token_subject(reader.token_id))
    assert status(front, reader.token) == (200, None)  # known good: verified again, not refused
    fresh = start(rate_limit_failures=3, cache_ttl=300)
    for _ in range(3):
        status(fresh, wrong_secret(reader))
    assert status(fresh, reader.token)[0] == 429  # never used here: locked with its id


def test_bruteforce_client_is_the_first_untrusted_hop(start: Start) -> None:
    """Failures count against the first address that is not a trusted proxy; forged hops and IPv6 /64s do not help.

    Defences: ``ProxyTrust.client`` (only trusted proxies speak for the
    client) and ``ratelimit.client_subject`` (an IPv6 client is its /64).
    """
    untrusted = start(rate_limit_failures=2)
    for index in range(2):
        assert status(untrusted, guess(), client=f"203.0.113.{index}")[0] == 401
    assert status(untrusted, guess(), client="203.0.113.99")[0] == 429  # forged X-Forwarded-For: still the peer

    behind = start(rate_limit_failures=2, trusted_proxies=LOOPBACK)
    for _ in range(2):
        status(behind, guess(), client="6.6.6.6, 198.51.100.1")
    assert status(behind, guess(), client="7.7.7.7, 198.51.100.1")[0] == 429  # the left hops are the client's own
    assert status(behind, guess(), client="198.51.100.2")[0] == 401  # another client is not held back
    for index in range(2):
        status(behind, guess(), client=f"2001:db8:1:2::{index + 1}")
    assert status(behind, guess(), client="2001:db8:1:2:ffff::99")[0] == 429  # same /64
    assert status(behind, guess(), client="2001:db8:1:3::1")[0] == 401  # next /64


def test_bruteforce_retry_after_follows_the_configured_window(
    start: Start, reader: IssuedToken, clock: FakeClock
) -> None:
    """429 says how long the window still runs (``rate_limit_window``), and the client may try again after it."""
    front = start(rate_limit_failures=2, rate_limit_window=120)
    for _ in range(2):
        assert status(front, guess())[0] == 401
    assert status(front, guess()) == (429, "120")
    clock.advance(30)
    assert status(front, guess()) == (429, "90")
    clock.advance(90)
    assert status(front, guess())[0] == 401
    assert status(front, reader.token)[0] == 200


def test_bruteforce_429_is_held_while_cached_traffic_is_not(start: Start, reader: IssuedToken) -> None:
    """A flood that ignores Retry-After gets each 429 only after ``rate_limit_delay``; cached requests pass meanwhile.

    Defence: the delay in ``Gate.check``. Without it an attacker's connection
    gets its 429s as fast as it sends, and takes the cached traffic's share of
    the event loop (``loadtests/bench.py``, "attack").
    """
    # A delay long against scheduling noise on a loaded machine: a cached
    # request held behind the 429s would take all of it, one served beside
    # them a few milliseconds (half the delay separates the two).
    delay = 2.0
    front = start(rate_limit_failures=2, rate_limit_delay=delay)
    assert status(front, reader.token)[0] == 200  # cached from now on
    for _ in range(2):
        assert status(front, guess())[0] == 401

    async def scenario() -> tuple[float, list[float]]:
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            guesses = [basic("acme", guess()) for _ in range(4)]
            held = asyncio.create_task(flood(front.url, guesses, concurrency=4))
            cached = []
            while not held.done():
                began = time.perf_counter()
                async with session.get(front.url + TILE, headers=basic("acme", reader.token)) as response:
                    assert response.status == 200
                cached.append(time.perf_counter() - began)
            assert [code for code, _ in await held] == [429] * 4
            return time.perf_counter() - started, cached

    elapsed, cached = asyncio.run(scenario())
    assert elapsed >= delay
    assert len(cached) >= 2  # served while the 429s were held
    assert max(cached) < delay / 2


def test_bruteforce_token_ids_cannot_be_told_apart(start: Start, reader: IssuedToken) -> None:
    """An unknown token id and a known id with a wrong secret read the same: status, body, headers and metrics.

    Also on a repeat, which is answered from memory for both (``Gate._failed``):
    no verification, the same refusal, the same counters moved.
    Defences: one refusal for both (``policy._REFUSALS``); the decoy
    verification for unknown ids, which also records its time in
    ``fluxauth_verification_seconds`` (without that, the public metrics would
    count only known ids); failures remembered alike.
    """
    front = start(rate_limit_failures=1000)

    def answer(password: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        response = get_raw(
            front.port, TILE.encode(), [(b"Authorization", basic("acme", password)["Authorization"].encode())]
        )
        headers = sorted((name.lower(), value) for name, value in response.headers if name.lower() != "date")
        return response.status, response.body, headers

    def observed() -> tuple[int, float, float]:
        metrics = get_raw(front.port, b"/_fluxauth/metrics").body.decode()

        def sample(name: str) -> float:
            return float(next(line for line in metrics.splitlines() if line.startswith(name)).split()[-1])

        return (
            front.app.gate.stats.verifications,
            sample("fluxauth_verification_seconds_count"),
            sample("fluxauth_failed_credential_hits_total"),
        )

    unknown_token, wrong_token = guess(), wrong_secret(reader)
    before = observed()
    unknown = answer(unknown_token)
    after_unknown = observed()
    known = answer(wrong_token)
    after_known = observed()
    assert unknown == known
    moved = [tuple(b - a for a, b in zip(first, then, strict=True)) for first, then in
             ((before, after_unknown), (after_unknown, after_known))]  # fmt: skip
    assert moved == [(1, 1, 0), (1, 1, 0)]  # the decoy is counted in the histogram too
    assert answer(unknown_token) == answer(wrong_token) == known
    assert tuple(b - a for a, b in zip(after_known, observed(), strict=True)) == (0, 0, 2)


def test_bruteforce_unknown_and_known_ids_take_the_same_time(
    settings: Settings, store_path: str, clock: FakeClock, store: SQLiteStore
) -> None:
    """With the default argon2 profile, a wrong secret for a real id and an unknown id cost the same time.

    Defence: ``TokenHasher.verify_decoy``; without it an unknown id answers in
    about a millisecond and a known one in about a hundred. Repeated, both are
    answered from memory (``Gate._failed``), both far faster than argon2.
    """
    real = Admin(store, dataclasses.replace(settings, argon2_profile="rfc9106-low-memory"), clock)
    real.create_org("acme")
    real.enable_service("acme", "tiles")
    token = real.create_key("acme", "reader", permissions=["read"])
    front = start_proxy(
        dataclasses.replace(settings, argon2_profile="rfc9106-low-memory", rate_limit_failures=1000), store_path, clock
    )
    try:
        timings: dict[str, list[float]] = {"unknown id": [], "known id, wrong secret": []}
        repeats: dict[str, list[float]] = {"unknown id": [], "known id, wrong secret": []}
        for _ in range(5):
            for name, password in (("unknown id", guess()), ("known id, wrong secret", wrong_secret(token))):
                for times in (timings, repeats):
                    started = time.perf_counter()
                    assert status(front, password)[0] == 401
                    times[name].append(time.perf_counter() - started)
    finally:
        front.server.stop()
    medians = {name: statistics.median(values) for name, values in timings.items()}
    again = {name: statistics.median(values) for name, values in repeats.items()}
    print("median time to 401:", {name: f"{value * 1000:.1f} ms" for name, value in medians.items()})
    print("repeated:", {name: f"{value * 1000:.1f} ms" for name, value in again.items()})
    assert min(medians.values()) > 0.02
    assert 0.6 < medians["unknown id"] / medians["known id, wrong secret"] < 1.6
    assert max(again.values()) < min(medians.values()) / 4


def test_bruteforce_unknown_org_costs_no_verification(start: Start, reader: IssuedToken) -> None:
    """A path naming an org that does not exist is 404 before any credential is verified (the status says as much)."""
    front = start()
    response = get_raw(
        front.port,
        b"/v1/services/tiles/nobody/era5/main/x",
        [(b"Authorization", basic("nobody", guess())["Authorization"].encode())],
    )
    assert response.status == 404
    assert front.app.gate.stats.verifications == 0


def test_bruteforce_failures_are_shared_by_replicas_without_token_ids_in_redis(
    start: Start, reader: IssuedToken
) -> None:
    """With Redis, a token id locked on one replica is locked on the others; Redis holds no token id.

    Defences: the shared failure counts (``SharedCache.record_failure``) and
    the keyed token subject (``Gate._token_subject``).
    """
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        one = start(redis_url=REDIS_URL, rate_limit_failures=3, trusted_proxies=LOOPBACK)
        two = start(redis_url=REDIS_URL, rate_limit_failures=3, trusted_proxies=LOOPBACK)
        for _ in range(3):
            assert status(one, wrong_secret(reader), client="203.0.113.1")[0] == 401
        # Another client, on the other replica, where the token was never used: its id is under attack.
        assert status(two, reader.token, client="198.51.100.1")[0] == 429
        keys = [key.decode() for key in client.keys("*")]
        assert any(key.startswith("fluxauth:fail:token:") for key in keys)
        assert not any(reader.token_id in key for key in keys)
    finally:
        client.flushdb()
        client.close()


@pytest.mark.parametrize(
    ("address", "subject"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
        ("unknown", "unknown"),
    ],
)
def test_client_subject_groups_ipv6_by_64(address: str, subject: str) -> None:
    """An IPv6 client is counted by its /64 (it can pick any address in it); IPv4 by itself."""
    assert client_subject(address) == subject


def test_failure_limiter_counts_attempts_in_flight(clock: FakeClock) -> None:
    """Reserved attempts count toward the limit (Retry-After 1 s) until released; then only failures count."""
    limiter = FailureLimiter(limit=3, window=60, clock=clock)
    limiter.record("a")
    limiter.reserve(["a", "b"])
    limiter.reserve(["a"])
    assert limiter.retry_after("a") == 1.0
    assert limiter.retry_after("b") is None
    limiter.release(["a", "b"])
    limiter.release(["a"])
    assert limiter.retry_after("a") is None
    limiter.record("a")
    limiter.record("a")
    assert limiter.retry_after("a") == 60


def test_bruteforce_a_new_credential_is_not_queued_behind_one_clients_flood(start: Start, admin: Admin) -> None:
    """While one address has all its allowed guesses queued, a new credential from another waits for one, not all.

    The attack (issue 10): wrong secrets from one address, as many as the
    failure limit lets through (20 by default), queued for the one
    verification thread of a 2-core machine; a key never used on this server,
    sent from another address, waited behind all of them: 9 s, 10-19 s here.
    Real argon2 for the guesses (the decoy of the default profile), real
    loopback addresses for the two clients. Defence: ``auth.verifier.Verifier``
    ranks a verification by how many its client already has queued; without
    it the new key's verification is the ninth to run here, with it the second.
    """
    front = start(argon2_profile="rfc9106-low-memory", verify_threads=1, rate_limit_failures=8)
    fresh = admin.create_key("acme", "fresh", permissions=["read"])
    gate = front.app.gate

    async def scenario() -> tuple[int, int, list[int]]:
        attacker = aiohttp.TCPConnector(local_addr=("127.0.0.10", 0))
        client = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with (
            aiohttp.ClientSession(connector=attacker) as flooding,
            aiohttp.ClientSession(connector=client) as own,
        ):

            async def guessing() -> int:
                async with flooding.get(front.url + TILE, headers=basic("acme", guess())) as response:
                    return response.status

            flood = [asyncio.ensure_future(guessing()) for _ in range(8)]
            for _ in range(500):  # until all eight wait for the thread or hold it: state, not a timer
                if gate.verifier is not None and gate.verifier.waiting == 7:
                    break
                await asyncio.sleep(0.01)
            assert gate.verifier is not None
            assert gate.verifier.waiting == 7
            async with own.get(front.url + TILE, headers=basic("acme", fresh.token)) as response:
                done_before = sum(gate.stats.verify_seconds.counts)
                status = response.status
            return status, done_before, list(await asyncio.gather(*flood))

    status, done_before, flooded = asyncio.run(scenario())
    print(f"a new credential behind 8 queued guesses of one address: verified after {done_before - 1} of them")
    assert status == 200
    assert flooded == [401] * 8
    assert done_before <= 3  # the guess that held the thread, perhaps the next, then its own
