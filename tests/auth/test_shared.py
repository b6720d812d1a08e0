"""Level 2 through the real Redis (database 13): sharing, revocation, races, rate limits."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator

import pytest
import redis

from fluxauth.auth.shared import CHANNEL, announce
from fluxauth.clock import system_clock
from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin
from tests.conftest import Proxy, ProxyFactory, basic, http
from tests.support.servers import redis_url

REDIS_URL = redis_url()
TILE = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/0/0/0"


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def shared_settings(settings: Settings, redis_db: redis.Redis) -> Settings:
    return dataclasses.replace(settings, redis_url=REDIS_URL)


@pytest.fixture
def token(admin: Admin) -> str:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    return admin.create_key("acme", "reader", permissions=["read"]).token


def get(proxy: Proxy, token: str) -> int:
    return http.get(proxy.url + TILE, headers=basic("acme", token), timeout=10).status_code


def test_shared_token_verified_once_across_replicas(
    proxy_factory: ProxyFactory, shared_settings: Settings, token: str
) -> None:
    """A token verified on one replica is served from Redis on another, not verified again."""
    one, two = proxy_factory(shared_settings), proxy_factory(shared_settings)
    assert get(one, token) == 200
    assert get(two, token) == 200
    assert one.app.gate.stats.verifications == 1
    assert two.app.gate.stats.verifications == 0
    assert two.app.gate.shared is not None
    assert two.app.gate.shared.l2_hits == 1


def test_shared_redis_holds_no_token_fragment(
    proxy_factory: ProxyFactory, shared_settings: Settings, token: str, redis_db: redis.Redis
) -> None:
    """Redis keys and values carry neither the token, its secret nor its id."""
    proxy = proxy_factory(shared_settings)
    assert get(proxy, token) == 200
    token_id, secret = token.removeprefix("ema_").split("_", 1)
    dump = b"".join(key + (redis_db.get(key) or b"") for key in redis_db.keys("*"))
    assert dump, "nothing was cached in Redis"
    for fragment in (token, secret, secret[:12], secret[-12:], token_id):
        assert fragment.encode() not in dump


def test_shared_notice_revokes_everywhere_at_once(
    proxy_factory: ProxyFactory, shared_settings: Settings, token: str, admin: Admin
) -> None:
    """With polling off, a pub/sub notice alone makes every replica refuse a deleted key."""
    quiet = dataclasses.replace(shared_settings, change_poll_interval=3600)
    replicas = [proxy_factory(quiet) for _ in range(2)]
    assert [get(replica, token) for replica in replicas] == [200, 200]
    admin.delete_key("acme", "reader")
    started = time.monotonic()
    assert asyncio.run(announce(REDIS_URL, clock=system_clock))
    while any(get(replica, token) == 200 for replica in replicas):
        assert time.monotonic() - started < 1.0, "a replica still allows the deleted key"
    print(f"revoked on both replicas in {1000 * (time.monotonic() - started):.1f} ms")


def test_shared_entry_verified_before_a_change_is_refused(
    proxy_factory: ProxyFactory, shared_settings: Settings, token: str, admin: Admin
) -> None:
    """A Redis entry older than a deletion grants nothing, on a running or a new replica."""
    quiet = dataclasses.replace(shared_settings, change_poll_interval=3600)
    first, second = proxy_factory(quiet), proxy_factory(quiet)
    assert get(first, token) == 200  # verified on first: the entry is in Redis
    admin.delete_key("acme", "reader")  # no notice: as if it were lost
    second.server.call(second.app.gate.poll_changes())
    assert get(second, token) == 401
    late = proxy_factory(quiet)  # started after the deletion, has never seen it
    assert get(late, token) == 401


def test_shared_rotation_reaches_redis_entries(
    proxy_factory: ProxyFactory, shared_settings: Settings, token: str, admin: Admin
) -> None:
    """After a rotation the grace end applies on every replica, including ones reading Redis."""
    one, two = proxy_factory(shared_settings), proxy_factory(shared_settings)
    assert get(one, token) == 200
    new = admin.rotate_key("acme", "reader", grace=60).token
    for replica in (one, two):
        replica.server.call(replica.app.gate.poll_changes())
    assert get(two, token) == 200
    assert get(two, new) == 200
    one.clock.advance(61)
    assert get(one, token) == 401
    assert get(two, token) == 401
    assert get(two, new) == 200


def test_shared_rate_limit_counts_across_replicas(
    proxy_factory: ProxyFactory, shared_settings: Settings, token: str
) -> None:
    """Failures counted on one replica rate-limit the same token id on another."""
    limited = dataclasses.replace(shared_settings, rate_limit_failures=3)
    one, two = proxy_factory(limited), proxy_factory(limited)
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert [get(one, wrong) for _ in range(3)] == [401, 401, 401]
    response = http.get(two.url + TILE, headers=basic("acme", wrong))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert get(two, token) == 429  # the token id is limited, whoever asks, until the window ends


def test_shared_readiness_reports_redis(proxy_factory: ProxyFactory, shared_settings: Settings) -> None:
    """readyz reports the store and Redis separately."""
    proxy = proxy_factory(shared_settings)
    assert http.get(proxy.url + "/_fluxauth/readyz").json() == {"status": "ready", "store": True, "redis": True}


def test_shared_servers_subscribe_to_notices(
    proxy_factory: ProxyFactory, shared_settings: Settings, redis_db: redis.Redis
) -> None:
    """Each server listens on the notice channel."""
    proxy_factory(shared_settings)
    proxy_factory(shared_settings)
    deadline = time.monotonic() + 5
    while dict(redis_db.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
