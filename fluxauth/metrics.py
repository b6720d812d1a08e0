"""``/_fluxauth/metrics`` in Prometheus text format.

The hot path only bumps plain integers; they are turned into metric families
here, at scrape time, by a collector of our own (prometheus-client's
``Counter.inc`` takes a lock per call).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from fluxauth.app import FluxAuthApp

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _AppCollector(Collector):
    def __init__(self, app: FluxAuthApp) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        stats = self.app.gate.stats
        decisions = CounterMetricFamily("fluxauth_decisions", "Decisions by HTTP status", labels=["status"])
        for status, count in sorted(self.app.outcomes.items()):
            decisions.add_metric([str(status)], count)
        yield decisions
        yield CounterMetricFamily("fluxauth_verifications", "argon2 verifications run", value=stats.verifications)
        hits = CounterMetricFamily("fluxauth_cache_hits", "Credential cache hits by level", labels=["level"])
        hits.add_metric(["l1"], stats.l1_hits)
        yield hits
        yield CounterMetricFamily(
            "fluxauth_rate_limited", "Requests refused for too many failures", value=stats.rate_limited
        )
        yield CounterMetricFamily("fluxauth_changes_applied", "Store changes applied", value=stats.changes_applied)
        yield GaugeMetricFamily(
            "fluxauth_cached_credentials", "Credentials in the L1 cache", value=len(self.app.gate.cache)
        )


def metrics_registry(app: FluxAuthApp) -> CollectorRegistry:
    """A registry of the app's own (not the process-global one: tests run several apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AppCollector(app))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
