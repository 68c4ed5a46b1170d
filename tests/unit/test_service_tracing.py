"""Spans of the SDK: a server span per request, a call span and a client span per attempt."""

from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshkit.http import HTTPServer, Request, Response, json_response
from meshkit.observe import tracer
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.service import Directory, ServiceClient
from meshkit.service._asgi import serving_app
from meshkit.service._tracing import wanted_headers
from meshkit.testing import FakeClock

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT_ID = 0xB7AD6B7169203331
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01".encode()


def shop() -> FastAPI:
    app = FastAPI()

    @app.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("the database is gone")

    return app


async def call(path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """Send one GET through the Service's ASGI layer; the answer's status."""
    served = serving_app(shop(), clock=FakeClock())  # type: ignore[arg-type]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await served(scope, receive, send)
    return statuses[0]


async def test_a_request_continues_the_callers_trace_named_by_its_route(
    spans: InMemorySpanExporter,
) -> None:
    assert await call("/orders/42", [(b"traceparent", TRACEPARENT)]) == 200
    [span] = spans.get_finished_spans()
    assert span.name == "GET /orders/{order_id}"
    assert span.kind == SpanKind.SERVER
    assert span.context is not None
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None
    assert span.parent.span_id == PARENT_ID
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/orders/{order_id}"
    assert span.attributes["url.path"] == "/orders/42"
    assert span.attributes["http.response.status_code"] == 200


@pytest.mark.parametrize(
    "headers",
    [
        [(b"traceparent", TRACEPARENT.upper())],
        [(b"traceparent", b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01")],
        [(b"traceparent", TRACEPARENT), (b"traceparent", TRACEPARENT.replace(b"b7", b"c7"))],
    ],
    ids=["upper-case", "zero-trace-id", "two-that-disagree"],
)
async def test_an_invalid_context_starts_a_new_trace_and_the_request_succeeds(
    spans: InMemorySpanExporter, headers: list[tuple[bytes, bytes]]
) -> None:
    assert await call("/orders/1", headers) == 200
    [span] = spans.get_finished_spans()
    assert span.parent is None
    assert span.context is not None
    assert span.context.trace_id != TRACE_ID


async def test_a_failing_handler_makes_an_error_span(spans: InMemorySpanExporter) -> None:
    with pytest.raises(RuntimeError):  # Starlette answers 500, then raises to the server
        await call("/broken", [])
    [span] = spans.get_finished_spans()
    assert span.name == "GET /broken"
    assert span.status.status_code == StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 500


async def test_health_checks_make_no_span(spans: InMemorySpanExporter) -> None:
    assert await call("/-/live", []) == 200
    assert spans.get_finished_spans() == ()


def test_the_same_traceparent_twice_is_one_context() -> None:
    assert wanted_headers([(b"traceparent", TRACEPARENT), (b"traceparent", TRACEPARENT)]) == {
        "traceparent": TRACEPARENT.decode()
    }


async def test_each_attempt_is_a_client_span_whose_context_goes_out(
    spans: InMemorySpanExporter,
) -> None:
    """A 503 then a 200: two client spans under the caller's, each sent as the callee's parent."""
    seen: list[str] = []

    async def flaky(request: Request) -> Response:
        seen.append(request.header("traceparent") or "")
        return json_response(503 if len(seen) == 1 else 200, {})

    servers = [HTTPServer(flaky), HTTPServer(flaky)]  # a retry goes to another instance
    registry = EmbeddedRegistry()
    registry.start()
    directory = Directory(registry)
    client = ServiceClient(directory)
    try:
        for n, server in enumerate(servers):
            _, port = await server.start()
            await registry.register(
                Instance(service="stock", id=f"s{n}", host="127.0.0.1", port=port), ttl=30
            )
        with tracer("test").start_as_current_span("GET /orders/{id}") as caller:
            response = await client.get("stock", "/items/1")
    finally:
        await client.aclose()
        await directory.aclose()
        await registry.aclose()
        for server in servers:
            await server.aclose(grace=0)
    assert response.status == 200
    *attempts, _ = spans.get_finished_spans()
    assert [a.name for a in attempts] == ["GET stock", "GET stock"]
    assert [a.kind for a in attempts] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert [a.attributes.get("http.request.resend_count") for a in attempts if a.attributes] == [
        None,
        1,
    ]
    assert attempts[0].status.status_code == StatusCode.ERROR
    for attempt, sent in zip(attempts, seen, strict=True):
        assert attempt.parent is not None
        assert attempt.parent.span_id == caller.get_span_context().span_id
        assert attempt.context is not None
        ids = f"{attempt.context.trace_id:032x}-{attempt.context.span_id:016x}"
        assert sent.startswith(f"00-{ids}-")


async def test_an_absolute_url_is_called_outside_the_mesh_with_the_trace(
    spans: InMemorySpanExporter,
) -> None:
    seen: list[Request] = []

    async def outside(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {"rate": 1.1})

    server = HTTPServer(outside)
    _, port = await server.start()
    registry = EmbeddedRegistry()
    directory = Directory(registry)
    client = ServiceClient(directory)
    try:
        response = await client.get(f"http://127.0.0.1:{port}/rates?to=EUR", timeout=2)
    finally:
        await client.aclose()
        await directory.aclose()
        await server.aclose(grace=0)
    assert response.status == 200
    [request] = seen
    assert (request.path, request.query) == ("/rates", "to=EUR")
    assert request.header("traceparent") is not None
    assert request.header("x-meshkit-timeout-ms") is None  # meshkit's own field stays inside
    [attempt] = spans.get_finished_spans()
    assert attempt.name == "GET 127.0.0.1"
    assert attempt.attributes is not None
    assert attempt.attributes["url.full"] == f"http://127.0.0.1:{port}/rates?to=EUR"


async def test_a_path_beside_an_absolute_url_is_refused() -> None:
    from meshkit.errors import InvalidArgumentError

    client = ServiceClient(Directory(EmbeddedRegistry()))
    with pytest.raises(InvalidArgumentError, match="path"):
        await client.get("http://127.0.0.1:1/a", "/b")
    await client.aclose()


UNSAMPLED = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-00".encode()


async def test_an_unsampled_request_records_nothing_and_its_calls_carry_the_context_on(
    spans: InMemorySpanExporter,
) -> None:
    """The caller's choice not to record holds across the service: no span, the same
    traceparent on every call the handler makes."""
    seen: list[str] = []

    async def callee(request: Request) -> Response:
        seen.append(request.header("traceparent") or "")
        return json_response(200, {})

    server = HTTPServer(callee)
    _, port = await server.start()
    client = ServiceClient(Directory(EmbeddedRegistry()))
    app = FastAPI()

    @app.get("/relay")
    async def relay() -> dict[str, int]:
        response = await client.get(f"http://127.0.0.1:{port}/x", timeout=2)
        return {"status": response.status}

    try:
        served = serving_app(app, clock=FakeClock())  # type: ignore[arg-type]
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/relay",
            "raw_path": b"/relay",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"traceparent", UNSAMPLED)],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
        }
        await served(scope, receive, send)
    finally:
        await client.aclose()
        await server.aclose(grace=0)
    assert statuses == [200]
    assert seen == [UNSAMPLED.decode()]
    assert spans.get_finished_spans() == ()
