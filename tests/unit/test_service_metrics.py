"""A Service's Prometheus metrics: requests by route template, client calls, the scrape."""

from __future__ import annotations

import random
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from meshkit.errors import ServiceUnavailableError
from meshkit.http import HTTPServer, json_response
from meshkit.observe._prometheus import exposition
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.service import Directory, ServiceClient
from meshkit.service._asgi import serving_app
from meshkit.service._metrics import ClientCollector, ServiceMetrics
from meshkit.testing import FakeClock
from meshkit.testing.servers import free_port

TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SAMPLED = SpanContext(
    trace_id=TRACE_ID, span_id=0x00F067AA0BA902B7, is_remote=False, trace_flags=TraceFlags(1)
)


def shop() -> FastAPI:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @api.get("/traced")
    async def traced() -> dict[str, bool]:
        return {"traced": True}

    @api.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    async def ping(request: Any) -> PlainTextResponse:
        return PlainTextResponse("pong")

    api.router.routes.append(Mount("/v2", routes=[Route("/ping/{n}", ping)]))
    return api


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def call(asgi: Any, path: str, method: str = "GET", **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, headers=headers)


@pytest.fixture
def served() -> tuple[Any, ServiceMetrics]:
    metrics = ServiceMetrics()
    api = shop()

    async def in_a_span(scope: Any, receive: Any, send: Any) -> None:
        """What a tracing layer does: the request's span is current while the app answers."""
        if scope.get("path") != "/traced":
            await api(scope, receive, send)
            return
        with trace.use_span(NonRecordingSpan(SAMPLED)):
            await api(scope, receive, send)

    return serving_app(in_a_span, clock=FakeClock(), metrics=metrics), metrics


async def test_requests_are_counted_by_route_template(served: tuple[Any, ServiceMetrics]) -> None:
    """Two ids of one route make one series; no route is 'unmatched'; 405 keeps its route."""
    asgi, metrics = served
    for path in ("/items/1", "/items/2", "/nowhere/3"):
        await call(asgi, path)
    assert (await call(asgi, "/items/1", "DELETE")).status_code == 405
    registry = metrics.registry
    name = "meshkit_service_requests_total"
    assert sample(registry, name, route="/items/{item_id}", method="GET", code="200") == 2
    assert sample(registry, name, route="unmatched", method="GET", code="404") == 1
    assert sample(registry, name, route="/items/{item_id}", method="DELETE", code="405") == 1
    count = "meshkit_service_request_duration_seconds_count"
    assert sample(registry, count, route="/items/{item_id}", method="GET") == 2
    assert not [s for s in registry.collect() for x in s.samples if "/items/1" in str(x.labels)]


async def test_a_mounted_route_is_labelled_with_the_mount_prefix(
    served: tuple[Any, ServiceMetrics],
) -> None:
    """A route under Mount('/v2') is '/v2/ping/{n}'."""
    asgi, metrics = served
    assert (await call(asgi, "/v2/ping/7")).status_code == 200
    name = "meshkit_service_requests_total"
    assert sample(metrics.registry, name, route="/v2/ping/{n}", method="GET", code="200") == 1


async def test_an_application_failure_counts_as_a_500(served: tuple[Any, ServiceMetrics]) -> None:
    """A handler that raises is counted with status 500 under its route."""
    asgi, metrics = served
    assert (await call(asgi, "/boom")).status_code == 500
    name = "meshkit_service_requests_total"
    assert sample(metrics.registry, name, route="/boom", method="GET", code="500") == 1


async def test_the_scrape_speaks_both_formats(served: tuple[Any, ServiceMetrics]) -> None:
    """/-/metrics is text 0.0.4 by default, OpenMetrics with exemplars when asked."""
    asgi, _ = served
    await call(asgi, "/traced")
    plain = await call(asgi, "/-/metrics")
    assert plain.status_code == 200
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# HELP meshkit_service_requests_total" in plain.text
    assert "trace_id" not in plain.text
    names = {family.name for family in text_string_to_metric_families(plain.text)}
    assert "meshkit_service_request_duration_seconds" in names
    open_metrics = await call(
        asgi, "/-/metrics", accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    )
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert f'# {{trace_id="{TRACE_ID:032x}"}}' in open_metrics.text
    assert open_metrics.text.endswith("# EOF\n")


async def test_the_scrape_is_not_counted(served: tuple[Any, ServiceMetrics]) -> None:
    """Scrapes and health checks do not appear among the application's requests."""
    asgi, metrics = served
    await call(asgi, "/-/metrics")
    await call(asgi, "/-/live")
    assert b"meshkit_service_requests_total{" not in exposition(metrics.registry, "")[1]


async def test_a_scrape_makes_no_span(
    served: tuple[Any, ServiceMetrics], spans: InMemorySpanExporter
) -> None:
    """A Prometheus scrape is not a trace: only the application's requests make spans."""
    asgi, _ = served
    await call(asgi, "/-/metrics")
    await call(asgi, "/items/1")
    assert [span.name for span in spans.get_finished_spans()] == ["GET /items/{item_id}"]


def test_an_unsampled_span_gives_no_exemplar() -> None:
    """Only a valid, sampled span's trace id becomes an exemplar."""
    from meshkit.observe._prometheus import exemplar

    unsampled = SpanContext(
        trace_id=TRACE_ID, span_id=1, is_remote=False, trace_flags=TraceFlags(0)
    )
    with trace.use_span(NonRecordingSpan(unsampled)):
        assert exemplar() is None
    with trace.use_span(NonRecordingSpan(SAMPLED)):
        assert exemplar() == {"trace_id": f"{TRACE_ID:032x}"}
    assert exemplar() is None


async def test_calls_outside_the_mesh_are_counted_by_host() -> None:
    """A call to an absolute URL is labelled by its host, not by the URL: one series per
    host, however many paths and queries are called."""
    metrics = ServiceMetrics()
    server = HTTPServer(lambda request: json_response(200, {}))
    _, port = await server.start()
    registry = EmbeddedRegistry()
    directory = Directory(registry)
    client = ServiceClient(directory)
    client.on_call.append(metrics.observe_call)
    try:
        for item in range(3):
            await client.get(f"http://127.0.0.1:{port}/rates/{item}?to=EUR", timeout=2)
    finally:
        await client.aclose()
        await directory.aclose()
        await server.aclose(grace=0)
    calls = "meshkit_client_calls_total"
    assert sample(metrics.registry, calls, service="127.0.0.1", outcome="200") == 3
    assert b"/rates" not in exposition(metrics.registry, "")[1]


def test_client_calls_retries_and_ejections_are_counted() -> None:
    """Calls by service and outcome; a refused attempt is retried and counted; of two
    instances that keep failing, one is ejected, after its third failure in a row."""
    clock = FakeClock(autojump_threshold=1.0)
    metrics = ServiceMetrics()

    async def main() -> None:
        registry = EmbeddedRegistry(clock=clock)
        registry.start()
        directory = Directory(registry, clock=clock)
        client = ServiceClient(directory, clock=clock, rng=random.Random(7))
        client.on_call.append(metrics.observe_call)
        metrics.registry.register(ClientCollector(lambda: client))
        healthy = HTTPServer(lambda request: json_response(200, {}))
        broken = HTTPServer(lambda request: json_response(502, {}))
        healthy_port, broken_port = (await healthy.start())[1], (await broken.start())[1]
        try:
            # products: one answers, one refuses connections (retried on the other);
            # payments: two instances (one server) that answer 502.
            for number, (service, port) in enumerate(
                [
                    ("products", healthy_port),
                    ("products", free_port()),
                    ("payments", broken_port),
                    ("payments", broken_port),
                ]
            ):
                instance = Instance(service=service, id=f"i{number}", host="127.0.0.1", port=port)
                await registry.register(instance, ttl=30)
            for _ in range(12):
                assert (await client.get("products", "/p")).status == 200
            for _ in range(12):  # not idempotent: a 502 is not retried
                assert (await client.post("payments", "/p", json={})).status == 502
            with pytest.raises(ServiceUnavailableError):
                await client.get("nobody", "/p")
        finally:
            await healthy.aclose(grace=0)
            await broken.aclose(grace=0)
            await client.aclose()
            await directory.aclose()
            await registry.aclose()

    clock.run(main())
    registry = metrics.registry
    calls = "meshkit_client_calls_total"
    assert sample(registry, calls, service="products", outcome="200") == 12
    assert sample(registry, calls, service="payments", outcome="502") == 12
    assert sample(registry, calls, service="nobody", outcome="unavailable") == 1
    assert sample(registry, "meshkit_client_retries_total", service="products") >= 1
    assert sample(registry, "meshkit_client_retries_total", service="payments") == 0
    assert sample(registry, "meshkit_client_ejections_total", service="payments") == 1
    assert sample(registry, "meshkit_client_ejected_instances", service="payments") == 1
    assert sample(registry, "meshkit_client_call_duration_seconds_count", service="products") == 12
