"""Faults: a Redis of our own killed and restarted, upstreams that refuse or hang."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from fluxauth.auth.shared import CHANNEL, announce
from fluxauth.clock import FakeClock, system_clock
from fluxauth.config.settings import Settings
from fluxauth.manage.admin import Admin
from fluxauth.proxy.app import FluxAuthApp
from fluxauth.store.sqlite import SQLiteStore
from tests.conftest import Proxy, ProxyFactory, basic, http
from tests.support.load import burst
from tests.support.servers import ServerThread, free_port

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

TILE = "/v1/services/tiles/acme/era5/main/tiles/WebMercatorQuad/0/0/0"


class RedisProcess:
    """A redis-server of the test's own, to kill and restart on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=self.port).ping():
                    return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def subscribers(self) -> int:
        return int(dict(redis.Redis(port=self.port).pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


@pytest.fixture
def keys(admin: Admin) -> dict[str, str]:
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    return {name: admin.create_key("acme", name, permissions=["read"]).token for name in ("one", "two", "three")}


def status(proxy: Proxy, token: str, path: str = TILE) -> int:
    return http.get(proxy.url + path, headers=basic("acme", token), timeout=10).status_code


def test_faults_redis_killed_and_restarted(
    proxy_factory: ProxyFactory, settings: Settings, keys: dict[str, str], own_redis: RedisProcess, admin: Admin
) -> None:
    """Without Redis: cached keys work, new ones are verified, nothing 5xx; it reconnects by itself."""
    proxy = proxy_factory(dataclasses.replace(settings, redis_url=own_redis.url, change_poll_interval=3600))
    assert status(proxy, keys["one"]) == 200
    own_redis.kill()
    assert status(proxy, keys["one"]) == 200  # level 1
    assert status(proxy, keys["two"]) == 200  # verified against the store
    assert status(proxy, keys["two"][:-3] + "xyz") == 401
    assert http.get(proxy.url + "/_fluxauth/readyz").json() == {"status": "ready", "store": True, "redis": False}
    assert 500 not in proxy.app.outcomes
    assert 503 not in proxy.app.outcomes
    assert proxy.app.gate.shared is not None
    assert proxy.app.gate.shared.errors > 0

    own_redis.start()
    deadline = time.monotonic() + 10
    while own_redis.subscribers() < 1:  # resubscribed on its own
        assert time.monotonic() < deadline, "did not reconnect to Redis"
        time.sleep(0.02)
    admin.delete_key("acme", "one")
    started = time.monotonic()
    assert asyncio.run(announce(own_redis.url, clock=system_clock))
    while status(proxy, keys["one"]) == 200:
        assert time.monotonic() - started < 1.0, "the notice did not arrive after reconnection"
    assert status(proxy, keys["three"]) == 200


def test_faults_redis_paused_never_grants_what_the_store_refuses(
    proxy_factory: ProxyFactory, settings: Settings, keys: dict[str, str], own_redis: RedisProcess, admin: Admin
) -> None:
    """A Redis that misses a deletion while frozen, then thaws with its old entry, grants nothing."""
    shared = dataclasses.replace(settings, redis_url=own_redis.url, change_poll_interval=3600)
    first, second = proxy_factory(shared), proxy_factory(shared)
    assert status(first, keys["one"]) == 200  # the entry is now in Redis
    assert own_redis.process is not None
    own_redis.process.send_signal(19)  # SIGSTOP: Redis hangs, keeps its data
    try:
        admin.delete_key("acme", "one")
        for replica in (first, second):
            replica.server.call(replica.app.gate.poll_changes())
    finally:
        own_redis.process.send_signal(18)  # SIGCONT
    for replica in (first, second):
        replica.clock.advance(2)  # past the circuit breaker: Redis is asked again
        assert status(replica, keys["one"]) == 401
    assert status(proxy_factory(shared), keys["one"]) == 401


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _settled_fds(baseline: int) -> int:
    """Open descriptors once the server has closed the connections the client just dropped.

    Closing is asynchronous on the server's loop; a leak never settles, so a
    bounded wait (no TTL involved) tells the two apart.
    """
    deadline = time.monotonic() + 5
    count = _open_fds()
    while count > baseline + 20 and time.monotonic() < deadline:
        time.sleep(0.05)
        count = _open_fds()
    return count


def test_faults_refusing_upstream_leaks_nothing(
    proxy_factory: ProxyFactory, settings: Settings, keys: dict[str, str]
) -> None:
    """Two thousand requests to an upstream that refuses: all 502, quickly, no descriptors left behind."""
    proxy = proxy_factory(dataclasses.replace(settings, upstream=f"http://127.0.0.1:{free_port()}"))

    def flood() -> list[int]:
        return asyncio.run(burst(proxy.url + TILE, headers=basic("acme", keys["one"]), count=2000))

    flood()  # warm: pools and caches at their working size
    before = _open_fds()
    started = time.monotonic()
    statuses = flood()
    elapsed = time.monotonic() - started
    assert set(statuses) == {502}
    after = _settled_fds(before)
    print(f"2000 refused upstream requests in {elapsed:.2f} s; open fds {before} -> {after}")
    # Other servers share this process, so a few descriptors come and go; a
    # leak per request would show in the thousands.
    assert after <= before + 20


def test_faults_hanging_upstream_is_504_and_leaks_nothing(
    proxy_factory: ProxyFactory, settings: Settings, keys: dict[str, str]
) -> None:
    """An upstream that accepts and never answers: 504 after the read timeout, connections released."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept_forever() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept_forever, daemon=True).start()
    port = listener.getsockname()[1]
    proxy = proxy_factory(dataclasses.replace(settings, upstream=f"http://127.0.0.1:{port}", upstream_read_timeout=0.1))

    def flood() -> list[int]:
        return asyncio.run(burst(proxy.url + TILE, headers=basic("acme", keys["one"]), count=200, concurrency=200))

    try:
        assert set(flood()) == {504}
        before = _open_fds()
        assert set(flood()) == {504}
        for conn in held:
            conn.close()
        held.clear()
        after = _settled_fds(before)
        print(f"hanging upstream: open fds {before} -> {after}")
        assert after <= before + 20
        assert proxy.app.forwarder.errors["timeout"] == 400
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_faults_store_gone_cached_keep_working_uncached_get_503(
    tmp_path: Path, clock: FakeClock, upstream: ServerThread
) -> None:
    """With the store's volume gone: cached keys work until their entries expire, others get 503, never 401."""
    volume = tmp_path / "volume"
    volume.mkdir()
    path = str(volume / "store.db")
    store = SQLiteStore(path)
    settings = Settings(store=path, upstream="http://127.0.0.1:1", argon2_profile="cheapest", cache_ttl=300)
    admin = Admin(store, settings, clock)
    admin.create_org("acme")
    admin.enable_service("acme", "tiles")
    warm, cold = (admin.create_key("acme", name, permissions=["read"]).token for name in ("warm", "cold"))
    store.close()
    echo = "/v1/services/tiles/acme/era5/main/_echo/x"
    app = FluxAuthApp(dataclasses.replace(settings, upstream=upstream.url), SQLiteStore(path), clock=clock)
    with ServerThread(app) as server:

        def get(token: str) -> httpx.Response:
            return http.get(server.url + echo, headers=basic("acme", token))

        assert get(warm).status_code == 200
        volume.rename(tmp_path / "unmounted")  # the volume goes away under the running server

        assert get(warm).status_code == 200  # level 1
        refused = get(cold)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "2"
        assert refused.json()["error"] == "unavailable"
        assert http.get(server.url + "/_fluxauth/readyz").status_code == 503

        clock.advance(301)  # the cached entries (and org policy) expire
        assert get(warm).status_code == 503  # not 401: the store did not say no

        (tmp_path / "unmounted").rename(volume)  # it comes back
        assert get(cold).status_code == 200
        assert get(warm).status_code == 200
        assert http.get(server.url + "/_fluxauth/readyz").status_code == 200
