"""A Service's Prometheus metrics, served at ``/-/metrics``.

``Measured`` is the ASGI layer next to the application: it answers the
scrape and hands a ``ServedRequest`` record per request to its hooks, so
that counting can never change how a request is handled.
``ServiceMetrics`` holds the service's registry (one per Service, so two in
one process do not share counters) and observes those records and the
client's ``Call`` records; the bus's and the sagas' metric sets join the
same registry.

Requests are labelled with the route's path template as the application
routed it (Starlette and FastAPI put the matched route in
``scope["route"]``), never the raw path, whose ids would make a series per
order; a request no route matched is ``route="unmatched"``, which no
template can be (templates begin with ``/``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshkit._clock import Clock
from meshkit.observe._prometheus import DURATION_BUCKETS, exemplar, exposition, new_registry
from meshkit.service._client import Call, ServiceClient

__all__ = [
    "METRICS_PATH",
    "UNMATCHED",
    "ClientCollector",
    "Measured",
    "ServedRequest",
    "ServiceMetrics",
]

METRICS_PATH = "/-/metrics"
UNMATCHED = "unmatched"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One HTTP request the application answered.

    ``route`` is the matched route's path template (``UNMATCHED`` if none);
    ``status`` is 500 when the application failed before answering;
    ``duration`` runs from the request's arrival to the end of the
    application's call, in seconds; ``trace_id`` is the sampled span's
    current when the answer began, if any (32 hex digits).
    """

    method: str
    route: str
    status: int
    duration: float
    trace_id: str | None = None


class ServiceMetrics:
    """The metrics of one Service: ``observe_request`` and ``observe_call`` are the hooks."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        self._requests = Counter(
            "meshkit_service_requests",
            "HTTP requests the service answered, by route template, method and status code.",
            ["route", "method", "code"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "meshkit_service_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method.",
            ["route", "method"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._calls = Counter(
            "meshkit_client_calls",
            "Calls to other services, by service and outcome"
            " (the status code, or unavailable, deadline_exceeded, error).",
            ["service", "outcome"],
            registry=self.registry,
        )
        self._retries = Counter(
            "meshkit_client_retries",
            "Attempts of calls to other services beyond each call's first, by service.",
            ["service"],
            registry=self.registry,
        )
        self._call_duration = Histogram(
            "meshkit_client_call_duration_seconds",
            "Time of a call to another service, retries included, by service.",
            ["service"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )

    def observe_request(self, record: ServedRequest) -> None:
        self._requests.labels(record.route, record.method, str(record.status)).inc()
        self._duration.labels(record.route, record.method).observe(
            record.duration, _exemplar(record.trace_id)
        )

    def observe_call(self, record: Call) -> None:
        self._calls.labels(record.service, record.outcome).inc()
        if record.attempts > 1:
            self._retries.labels(record.service).inc(record.attempts - 1)
        self._call_duration.labels(record.service).observe(
            record.duration, _exemplar(record.trace_id)
        )


def _exemplar(trace_id: str | None) -> dict[str, str] | None:
    return None if trace_id is None else {"trace_id": trace_id}


class Measured:
    """ASGI: answers ``GET /-/metrics`` from ``registry``; every other HTTP request goes to
    ``app``, then to each of ``on_request`` as a ``ServedRequest``."""

    def __init__(self, app: ASGIApp, *, clock: Clock, registry: CollectorRegistry) -> None:
        self.app = app
        self._clock = clock
        self._registry = registry
        self.on_request: list[Callable[[ServedRequest], None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == METRICS_PATH:
            await self._scrape(scope, send)
            return
        started = self._clock.monotonic()
        root = scope.get("root_path", "")
        status = 500
        trace_id = None

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status, trace_id
            if message["type"] == "http.response.start":
                status = message["status"]
                # Read here, in the application's context, where its span
                # (or the server span around it) is current.
                found = exemplar()
                trace_id = None if found is None else found["trace_id"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if trace_id is None:  # no answer began, or no span was current then
                found = exemplar()
                trace_id = None if found is None else found["trace_id"]
            record = ServedRequest(
                method=scope["method"],
                route=route_template(scope, root),
                status=status,
                duration=self._clock.monotonic() - started,
                trace_id=trace_id,
            )
            for hook in self.on_request:
                hook(record)

    async def _scrape(self, scope: Scope, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _send(send, 405, [(b"allow", b"GET, HEAD")], b"")
            return
        accept = b""
        for name, value in scope["headers"]:
            if name == b"accept":
                accept = value
                break
        content_type, body = exposition(self._registry, accept.decode("latin-1"))
        await _send(send, 200, [(b"content-type", content_type)], body)


def route_template(scope: Scope, root_path: str) -> str:
    """The path template of the route the application matched, or ``UNMATCHED``.

    Under a ``Mount``, the mount's prefix (what it added to ``root_path``)
    comes first; a request the mount answered itself (static files) is
    labelled with the mount's own path.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED
    if hasattr(route, "routes"):  # the Mount itself: its path is the prefix
        return path
    mounted: str = scope.get("root_path", root_path)
    return mounted[len(root_path) :] + path


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ClientCollector(Collector):
    """Ejections by the service client, read from its ``statistics()`` at a scrape."""

    def __init__(self, client: Callable[[], ServiceClient | None]) -> None:
        self._client = client

    def collect(self) -> Iterator[Metric]:
        client = self._client()
        found = {} if client is None else client.statistics()
        ejections = CounterMetricFamily(
            "meshkit_client_ejections",
            "Instances taken out of rotation after repeated failures, by service.",
            labels=["service"],
        )
        ejected = GaugeMetricFamily(
            "meshkit_client_ejected_instances",
            "Instances out of rotation now, by service.",
            labels=["service"],
        )
        for service, counts in sorted(found.items()):
            ejections.add_metric([service], counts["ejections"])
            ejected.add_metric([service], counts["ejected"])
        yield ejections
        yield ejected
