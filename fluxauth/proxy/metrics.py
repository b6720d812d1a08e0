"""``/_fluxauth/metrics`` in Prometheus text format.

The hot path only bumps plain integers; they are turned into metric families
here, at scrape time, by a collector of our own (prometheus-client's
``Counter.inc`` takes a lock per call).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from fluxauth.auth.gate import Gate
from fluxauth.histogram import Histogram
from fluxauth.proxy.forward import Forwarder


class Observed(Protocol):
    """What the metrics are read from: the app's decider, forwarder and counters."""

    gate: Gate
    forwarder: Forwarder
    outcomes: Counter[int]  # decisions by status
    hot_path: Counter[str]  # requests answered without the ASGI app, by kind


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, buckets=histogram.cumulative(), sum_value=histogram.total)


CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class _AppCollector(Collector):
    def __init__(self, app: Observed) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        stats = self.app.gate.stats
        decisions = CounterMetricFamily("fluxauth_decisions", "Decisions by HTTP status", labels=["status"])
        for status, count in sorted(self.app.outcomes.items()):
            decisions.add_metric([str(status)], count)
        yield decisions
        yield CounterMetricFamily("fluxauth_verifications", "argon2 verifications run", value=stats.verifications)
        yield CounterMetricFamily(
            "fluxauth_failed_credential_hits",
            "Failed credentials answered from memory instead of argon2 (unknown and wrong alike)",
            value=stats.failed_hits,
        )
        shared = self.app.gate.shared
        hits = CounterMetricFamily("fluxauth_cache_hits", "Credential cache hits by level", labels=["level"])
        hits.add_metric(["l1"], stats.l1_hits)
        hits.add_metric(["l2"], shared.l2_hits if shared else 0)
        yield hits
        yield CounterMetricFamily(
            "fluxauth_redis_errors", "Redis calls that failed", value=shared.errors if shared else 0
        )
        forwarder = self.app.forwarder
        upstream_errors = CounterMetricFamily("fluxauth_upstream_errors", "Upstream failures by kind", labels=["kind"])
        for kind in ("connection", "timeout", "protocol", "unmappable", "busy"):
            upstream_errors.add_metric([kind], forwarder.errors[kind])
        yield upstream_errors
        client_errors = CounterMetricFamily(
            "fluxauth_client_errors", "Requests the client broke off while forwarded, by kind", labels=["kind"]
        )
        for kind in ("client_gone", "client_stalled", "client_timeout", "body_too_large"):
            client_errors.add_metric([kind], forwarder.errors[kind])
        yield client_errors
        hot = CounterMetricFamily(
            "fluxauth_hot_path", "Requests answered without the ASGI app (the hot path), by kind", labels=["kind"]
        )
        for kind in ("forward", "auth", "handed_back", "fault"):
            hot.add_metric([kind], self.app.hot_path[kind])
        yield hot
        connections = GaugeMetricFamily(
            "fluxauth_upstream_connections", "Upstream connections open, by state", labels=["state"]
        )
        connections.add_metric(["open"], forwarder.pool.open_connections)
        connections.add_metric(["idle"], forwarder.pool.idle_connections)
        yield connections
        yield CounterMetricFamily(
            "fluxauth_overloaded",
            "New credentials refused because max_pending_verifications were waiting",
            value=stats.overloaded,
        )
        yield _histogram("fluxauth_verification_seconds", "argon2 verification time", stats.verify_seconds)
        yield _histogram(
            "fluxauth_upstream_seconds", "Time to the upstream's response headers", self.app.forwarder.latency
        )
        yield CounterMetricFamily(
            "fluxauth_rate_limited", "Requests refused for too many failures", value=stats.rate_limited
        )
        yield CounterMetricFamily("fluxauth_changes_applied", "Store changes applied", value=stats.changes_applied)
        yield GaugeMetricFamily(
            "fluxauth_cached_credentials", "Credentials in the L1 cache", value=len(self.app.gate.cache)
        )


def metrics_registry(app: Observed) -> CollectorRegistry:
    """A registry of the app's own (not the process-global one: tests run several apps)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_AppCollector(app))
    return registry


def render_metrics(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
