"""A proxy's Prometheus metrics (gateway, sidecar), fed by the engine's exchange records.

Counting happens in an observer of ``Exchange`` records (the engine's
instrumentation hook), not in a filter, so a metric can never change how a
request is handled. Each gateway has a registry of its own, so two gateways
in one process (tests, a sidecar beside one) do not share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshkit.policy import BreakerState
from meshkit.proxy._server import Exchange

__all__ = ["CONTENT_TYPE", "ProxyMetrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format 0.0.4

# From half a millisecond (the proxy's own overhead) to the default overall
# timeout of 30 s.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ProxyMetrics:
    """``observe(record)`` per request; ``exposition()`` for a scrape."""

    def __init__(
        self,
        breakers: Callable[[], dict[str, str]] | None,
        *,
        prefix: str,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """``prefix`` names the metrics; several sets may share one ``registry``."""
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self._requests = Counter(
            f"{prefix}_requests",
            "Requests answered, by route, service and status (0: no answer).",
            ["route", "service", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            f"{prefix}_request_duration_seconds",
            "From the request's arrival to the end of its answer, by route.",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        if breakers is not None:
            self.registry.register(_Breakers(breakers, f"{prefix}_breaker_state"))
        # labels() looks the child up under a lock each time; a request
        # costs one dict lookup here instead.
        self._children: dict[tuple[str | None, str | None, int], tuple[Counter, Histogram]] = {}

    def observe(self, record: Exchange) -> None:
        key = (record.route, record.service, record.status)
        children = self._children.get(key)
        if children is None:
            route = record.route or ""
            children = self._children[key] = (
                self._requests.labels(route, record.service or "", str(record.status)),
                self._duration.labels(route),
            )
        children[0].inc()
        children[1].observe(record.duration)

    def exposition(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class _Breakers(Collector):
    """``<prefix>_breaker_state``: 1 for each route's current state, read at scrape."""

    def __init__(self, breakers: Callable[[], dict[str, str]], name: str) -> None:
        self._breakers = breakers
        self._name = name

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            self._name,
            "1 for the state each route's circuit breaker is in, 0 for the others.",
            labels=["route", "state"],
        )
        for route, current in sorted(self._breakers().items()):
            for state in BreakerState:
                family.add_metric([route, state.value], 1.0 if state.value == current else 0.0)
        yield family
