"""Revocation across three ``fluxauth serve`` replicas on PostgreSQL: by NOTIFY alone, and with Redis beside it.

The change feed's poll is set to a minute, so a refusal within milliseconds
can only come from a wake-up: PostgreSQL's NOTIFY (and Redis pub/sub where
configured). Each test deletes keys through the command line and measures
how long after it returned every replica refuses them; the figures are
printed (``pytest -s``) and quoted in the README.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.support.postgres import new_schema
from tests.support.servers import ServerThread
from tests.system.test_replicas import REDIS_URL, Cluster, status

pytestmark = pytest.mark.servers  # starts servers of its own (tests/conftest.py)

ROUNDS = 5


@pytest.fixture(scope="module", params=["postgresql", "postgresql+redis"])
def cluster(request: pytest.FixtureRequest, pg_database: str, upstream: ServerThread) -> Iterator[Cluster]:
    with_redis = request.param.endswith("+redis")
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    cluster = Cluster(
        new_schema(pg_database), upstream.url, redis=REDIS_URL if with_redis else None, change_poll_interval="60"
    )
    cluster.start(3)  # three at once on an empty database: one creates the schema
    yield cluster
    for replica in cluster.replicas:
        replica.stop()
    client.flushdb()
    client.close()


def test_replicas_postgres_deleted_key_refused_everywhere_at_once(cluster: Cluster) -> None:
    """A key deleted through the CLI is refused by all three replicas within 1 s; in practice milliseconds."""
    org = "org-" + uuid.uuid4().hex[:8]
    cluster.cli("orgs", "create", org)
    cluster.cli("compute", "enable", org, "tiles")
    replicas = cluster.replicas
    figures = []
    for round_ in range(ROUNDS):
        token = cluster.cli("keys", "create", org, f"maps{round_}", "--permission", "read")
        assert [status(r, org, token) for r in replicas] == [200, 200, 200]  # cached everywhere
        cluster.cli("keys", "delete", org, f"maps{round_}")
        deleted = time.monotonic()
        pending = set(range(len(replicas)))
        while pending:
            pending = {i for i in pending if status(replicas[i], org, token) == 200}
            assert time.monotonic() - deleted < 1.0, f"replicas {sorted(pending)} still allow a deleted key"
        figures.append((time.monotonic() - deleted) * 1000)
    how = "with Redis" if "FLUXAUTH_REDIS_URL" in cluster.env else "without Redis"
    print(
        f"\n[PostgreSQL {how}, poll every 60 s] all 3 replicas refuse a deleted key"
        f" {statistics.median(figures):.1f} ms (median of {ROUNDS}; max {max(figures):.1f} ms) after the CLI returned"
    )
