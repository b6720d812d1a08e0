"""Several replicas as separate ``fluxauth serve`` processes sharing one store (SQLite or PostgreSQL) and Redis.

This is the shape operators run behind a load balancer; everything here goes
through real processes: the servers, the command line, Redis.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis

from tests.conftest import basic, http
from tests.support.postgres import new_schema
from tests.support.servers import ServerThread, free_port, redis_url

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

REDIS_URL = redis_url()


class Replica:
    """One ``fluxauth serve`` process."""

    def __init__(self, env: dict[str, str], *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fluxauth", "serve", "--port", str(self.port), *extra],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.process.stderr.read().decode() if self.process.stderr else ""
            try:
                if http.get(self.url + "/_fluxauth/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "replica did not become ready"
            time.sleep(0.05)

    def metric(self, name: str, labels: str = "") -> float:
        text = http.get(self.url + "/_fluxauth/metrics").text
        match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
        assert match is not None, f"{name}{labels} not in metrics"
        return float(match.group(1))

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Cluster:
    """Replicas sharing ``store`` and, unless it is None, ``redis``; ``settings`` are further FLUXAUTH_* values."""

    def __init__(self, store: str, upstream: str, redis: str | None = REDIS_URL, **settings: str) -> None:
        self.env = {
            **os.environ,
            "FLUXAUTH_STORE": store,
            **({"FLUXAUTH_REDIS_URL": redis} if redis else {}),
            **{f"FLUXAUTH_{name.upper()}": value for name, value in settings.items()},
            "FLUXAUTH_ARGON2_PROFILE": "cheapest",
            "FLUXAUTH_UPSTREAM": upstream,
            "FLUXAUTH_LOG_LEVEL": "warning",
            # Every test client is 127.0.0.1 and the tests fail credentials on
            # purpose; the limiter has tests of its own.
            "FLUXAUTH_RATE_LIMIT_FAILURES": "1000000",
        }
        self.replicas: list[Replica] = []

    def cli(self, *args: str, redis_url: str | None = REDIS_URL) -> str:
        env = dict(self.env)
        if redis_url is None:
            env.pop("FLUXAUTH_REDIS_URL", None)
        done = subprocess.run(
            [sys.executable, "-m", "fluxauth", *args], env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def start(self, count: int, *extra: str) -> list[Replica]:
        started = [Replica(self.env, *extra) for _ in range(count)]
        for replica in started:
            replica.wait_ready()
        self.replicas += started
        return started


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, upstream: ServerThread
) -> Iterator[Cluster]:
    """Three replicas and Redis, on one SQLite file (one host) or one PostgreSQL database (any number of hosts)."""
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    if request.param == "sqlite":
        store = str(tmp_path_factory.mktemp("cluster") / "store.db")
    else:
        store = new_schema(request.getfixturevalue("pg_database"))
    cluster = Cluster(store, upstream.url)
    cluster.cli("orgs", "create", "seed")  # creates the store before the replicas open it
    cluster.start(3)
    yield cluster
    for replica in cluster.replicas:
        replica.stop()
    client.flushdb()
    client.close()


@pytest.fixture
def org(cluster: Cluster) -> str:
    """A fresh org with tiles enabled, so that tests sharing the cluster do not meet."""
    name = "org-" + uuid.uuid4().hex[:8]
    cluster.cli("orgs", "create", name)
    cluster.cli("compute", "enable", name, "tiles")
    return name


def tile(org: str) -> str:
    return f"/v1/services/tiles/{org}/era5/main/tiles/WebMercatorQuad/0/0/0"


def status(replica: Replica, org: str, token: str) -> int:
    return http.get(replica.url + tile(org), headers=basic(org, token), timeout=10).status_code


def test_replicas_verify_a_token_once(cluster: Cluster, org: str) -> None:
    """A token verified on one replica is taken from Redis by the others."""
    token = cluster.cli("keys", "create", org, "maps", "--permission", "read")
    replicas = cluster.replicas[:3]
    before = [r.metric("fluxauth_verifications_total") for r in replicas]
    l2_before = [r.metric("fluxauth_cache_hits_total", '{level="l2"}') for r in replicas]
    assert [status(r, org, token) for r in replicas] == [200, 200, 200]
    after = [r.metric("fluxauth_verifications_total") for r in replicas]
    l2_after = [r.metric("fluxauth_cache_hits_total", '{level="l2"}') for r in replicas]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 0]
    assert [a - b for a, b in zip(l2_after, l2_before, strict=True)] == [0, 1, 1]


@pytest.mark.parametrize("notify", [True, False], ids=["pubsub", "feed-only"])
def test_replicas_deleted_key_refused_everywhere(cluster: Cluster, org: str, notify: bool) -> None:
    """Deleting a key through the CLI: all three replicas refuse it within 1 s (pub/sub: milliseconds)."""
    token = cluster.cli("keys", "create", org, "maps", "--permission", "read")
    replicas = cluster.replicas[:3]
    assert [status(r, org, token) for r in replicas] == [200, 200, 200]
    cluster.cli("keys", "delete", org, "maps", redis_url=REDIS_URL if notify else None)
    deleted = time.monotonic()
    pending = set(range(3))
    while pending:
        pending = {i for i in pending if status(replicas[i], org, token) == 200}
        assert time.monotonic() - deleted < 1.0, f"replicas {sorted(pending)} still allow a deleted key"
    elapsed = time.monotonic() - deleted
    how = "pubsub" if notify else "feed only"
    print(f"\n[{how}] all 3 replicas refuse the deleted key {elapsed * 1000:.1f} ms after the CLI returned")


def test_replicas_rotation_under_load(cluster: Cluster, org: str) -> None:
    """Rotation with a 2 s grace while requests flow: old token until the grace ends, never after; no 5xx."""
    old = cluster.cli("keys", "create", org, "maps", "--permission", "read")
    replicas = cluster.replicas[:3]
    results: list[tuple[float, float, str, int]] = []
    tokens: dict[str, str] = {"old": old}
    stop = threading.Event()

    def hammer(replica: Replica) -> None:
        with httpx.Client(base_url=replica.url, timeout=10) as client:
            while not stop.is_set():
                for kind, token in list(tokens.items()):
                    started = time.time()
                    code = client.get(tile(org), headers=basic(org, token)).status_code
                    results.append((started, time.time(), kind, code))

    threads = [threading.Thread(target=hammer, args=(r,)) for r in replicas for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # traffic flowing before the rotation
    tokens["new"] = cluster.cli("keys", "rotate", org, "maps", "--grace", "2s")
    rotated = time.time()
    time.sleep(3.5)  # through the grace period and past its end
    stop.set()
    for thread in threads:
        thread.join()

    grace_end = rotated + 2  # the CLI set not_after = its now + 2 s, a moment before `rotated`
    assert not [r for r in results if r[3] >= 500], "5xx during rotation"
    old_results = [r for r in results if r[2] == "old"]
    new_results = [r for r in results if r[2] == "new"]
    assert new_results, "the new token was never used"
    assert {code for *_, code in new_results} == {200}
    before_end = [code for started, ended, _, code in old_results if ended < grace_end - 2.2]
    after_end = [code for started, ended, _, code in old_results if started > grace_end]
    assert before_end, "no request with the old token before the grace ended"
    assert after_end, "no request with the old token after the grace ended"
    assert set(before_end) == {200}
    assert set(after_end) == {401}
    print(f"\nrotation under load: {len(results)} requests, {len(after_end)} refusals of the old token after its grace")


def test_replicas_serve_workers(cluster: Cluster, org: str) -> None:
    """``fluxauth serve --workers 2`` runs two processes that learn of a deletion together."""
    token = cluster.cli("keys", "create", org, "maps", "--permission", "read")
    (server,) = cluster.start(1, "--workers", "2")
    children = subprocess.run(["pgrep", "-P", str(server.process.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 2, "expected a supervisor with two worker processes"
    # New connections are spread over the workers by the kernel.
    assert {http.get(server.url + tile(org), headers=basic(org, token)).status_code for _ in range(20)} == {200}
    cluster.cli("keys", "delete", org, "maps")
    deleted = time.monotonic()
    while {http.get(server.url + tile(org), headers=basic(org, token)).status_code for _ in range(20)} != {401}:
        assert time.monotonic() - deleted < 1.0
