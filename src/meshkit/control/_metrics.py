"""The control plane's Prometheus metrics, served at ``GET /metrics`` without a token.

What it reads at a scrape: the registry's instances per service, its
leases and lease events; the broker's appends, dead letters, and each
consumer group's lag (``meshkit.bus``'s ``BrokerCollector``). What it
counts as it goes: API requests by endpoint (a path template, so lease ids
and topics do not make a series each), method and status.

Like the gateway's, the endpoint asks for no token: scrapers seldom carry
one, and counts reveal less than the registry listing, which stays behind
the token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshkit.bus._broker import EmbeddedBroker
from meshkit.bus._metrics import BrokerCollector
from meshkit.http import Request, Response
from meshkit.observe import TelemetryStore
from meshkit.observe._prometheus import exposition, new_registry
from meshkit.registry import EmbeddedRegistry

__all__ = ["METRICS_PATH", "PlaneMetrics", "endpoint"]

METRICS_PATH = "/metrics"

Handler = Callable[[Request], Response | Awaitable[Response]]

# Paths served as they are; the others are named by the templates below.
_FIXED = frozenset(
    {
        "/healthz",
        METRICS_PATH,
        "/v1/registry/instances",
        "/v1/registry/services",
        "/v1/prometheus/targets",
        "/v1/bus/publish",
        "/v1/bus/groups",
        "/v1/bus/dead-letters",
        "/v1/traces",
        "/v1/logs",
    }
)
_GROUP_ACTIONS = frozenset({"fetch", "ack", "fail"})


def endpoint(path: str) -> str:
    """The endpoint template of ``path`` (``other`` for a path no endpoint serves)."""
    if path in _FIXED:
        return path
    parts = path.split("/")
    if path.startswith("/v1/registry/leases/"):
        return "/v1/registry/leases/{lease_id}"
    if path.startswith("/v1/registry/services/"):
        return "/v1/registry/services/{service}"
    if path.startswith("/v1/bus/groups/") and len(parts) in (6, 7):
        action = f"/{parts[6]}" if len(parts) == 7 and parts[6] in _GROUP_ACTIONS else ""
        return "/v1/bus/groups/{topic}/{group}" + action
    if path.startswith("/v1/bus/dead-letters/"):
        return "/v1/bus/dead-letters/{id}" + ("/replay" if path.endswith("/replay") else "")
    return "other"


class PlaneMetrics:
    """The control plane's registry of metrics; ``measured(handler)`` counts its requests."""

    def __init__(
        self,
        registry: EmbeddedRegistry,
        broker: Callable[[], EmbeddedBroker | None],
        telemetry: Callable[[], TelemetryStore | None] = lambda: None,
    ) -> None:
        self.registry = new_registry()
        self.registry.register(_RegistryCollector(registry))
        self.registry.register(BrokerCollector(broker))
        self.registry.register(_StoreCollector(telemetry))
        self._requests = Counter(
            "meshkit_control_requests",
            "Requests to the control plane's API, by endpoint template, method and status.",
            ["endpoint", "method", "code"],
            registry=self.registry,
        )
        # labels() takes a lock and builds a key each time: a renewal costs
        # one dict lookup here instead.
        self._children: dict[tuple[str, str, int], Counter] = {}

    def scrape(self, request: Request) -> Response:
        """The answer to ``GET /metrics``: OpenMetrics when the scraper asks for it."""
        accept = next((value for name, value in request.headers if name == b"accept"), b"")
        content_type, body = exposition(self.registry, accept.decode("latin-1"))
        return Response(200, [(b"content-type", content_type)], body)

    def measured(self, handler: Handler) -> Handler:
        """``handler``, with each answer counted (a long poll's once it is answered)."""

        def handle(request: Request) -> Response | Awaitable[Response]:
            answer = handler(request)
            if isinstance(answer, Response):
                self._count(request, answer.status)
                return answer
            return self._later(request, answer)

        return handle

    async def _later(self, request: Request, answer: Awaitable[Response]) -> Response:
        status = 500  # what the server answers for a handler that raised
        try:
            response = await answer
            status = response.status
            return response
        finally:
            self._count(request, status)

    def _count(self, request: Request, status: int) -> None:
        key = (endpoint(request.path), request.method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._requests.labels(key[0], key[1], str(status))
        child.inc()


class _RegistryCollector(Collector):
    """Instances per service, leases held, and lease events, from the embedded registry."""

    def __init__(self, registry: EmbeddedRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        instances = GaugeMetricFamily(
            "meshkit_registry_instances",
            "Live instances in the registry, by service.",
            labels=["service"],
        )
        for listed in self._registry.service_list().services:
            instances.add_metric([listed.name], listed.instances)
        yield instances
        yield GaugeMetricFamily(
            "meshkit_registry_leases",
            "Leases the registry holds (live, or expired and not yet swept).",
            value=self._registry.leases(),
        )
        events = CounterMetricFamily(
            "meshkit_registry_lease_events",
            "Lease events: registered, renewed, expired (the TTL passed unrenewed), removed.",
            labels=["event"],
        )
        for kind, count in sorted(self._registry.lease_events.items()):
            events.add_metric([kind], count)
        yield events


class _StoreCollector(Collector):
    """What the telemetry store took: records written, refused (its queue was full), queued."""

    def __init__(self, store: Callable[[], TelemetryStore | None]) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        store = self._store()
        if store is None:
            return
        found = store.statistics()
        for name, help_text, spans, logs in (
            ("stored", "written to its store", found.spans_written, found.logs_written),
            (
                "refused",
                "refused with 503, its queue full",
                found.spans_refused,
                found.logs_refused,
            ),
            (
                "lost",
                "taken, then not written (disk full, file broken)",
                found.spans_lost,
                found.logs_lost,
            ),
        ):
            family = CounterMetricFamily(
                f"meshkit_telemetry_{name}_records",
                f"Spans and log records the control plane has {help_text}.",
                labels=["signal"],
            )
            family.add_metric(["spans"], float(spans))
            family.add_metric(["logs"], float(logs))
            yield family
        yield GaugeMetricFamily(
            "meshkit_telemetry_pending_records",
            "Records received and not yet written to the store.",
            value=float(found.pending),
        )
