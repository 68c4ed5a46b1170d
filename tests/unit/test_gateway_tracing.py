"""The gateway's spans, trace headers and access log records, sent to a fake sink."""

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import msgspec
import pytest
from tests.unit.test_gateway import Fleet, config, running_gateway

from meshkit.errors import ConfigError
from meshkit.gateway import Gateway, GatewayConfig, TracingConfig
from meshkit.http import Request, Response, json_response
from meshkit.observe import Recorder, parse_traceparent
from meshkit.proxy import ProxyRequest, Tracing
from meshkit.testing import FakeClock

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Sink:
    def __init__(self) -> None:
        self.spans: list[dict[str, object]] = []
        self.logs: list[dict[str, object]] = []
        self.resources: list[object] = []

    async def send(self, signal: str, body: bytes) -> None:
        data = json.loads(body)
        if signal == "spans":
            (resource,) = data["resourceSpans"]
            self.spans.extend(resource["scopeSpans"][0]["spans"])
        else:
            (resource,) = data["resourceLogs"]
            self.logs.extend(resource["scopeLogs"][0]["logRecords"])
        self.resources.append(resource["resource"])


@asynccontextmanager
async def traced(
    gateway_config: GatewayConfig | None = None,
) -> AsyncIterator[tuple[Fleet, Callable[..., Awaitable[Response]], Gateway, Sink]]:
    sink = Sink()
    async with running_gateway(gateway_config, telemetry=sink, instance="gateway-1") as (
        fleet,
        call,
        gateway,
    ):
        yield fleet, call, gateway, sink


def attributes(span: dict[str, object]) -> dict[str, object]:
    values: dict[str, object] = {}
    for item in span["attributes"]:  # type: ignore[attr-defined]
        (value,) = item["value"].values()
        values[item["key"]] = value
    return values


async def flush(gateway: Gateway) -> None:
    assert gateway.exporter is not None
    await gateway.exporter.flush()


def seen_traceparents(fleet_requests: list[Request]) -> list[tuple[bytes, bytes, bool]]:
    found = []
    for request in fleet_requests:
        value = request.header("traceparent")
        assert value is not None
        parsed = parse_traceparent(value.encode())
        assert parsed is not None
        found.append(parsed)
    return found


async def test_the_upstream_s_parent_is_the_client_span_whose_parent_is_the_server_span() -> None:
    """A new trace: SERVER span at the root, a CLIENT span under it, the upstream under that."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {})

    async with traced() as (fleet, call, gateway, sink):
        await fleet.add("orders", handler)
        assert (await call("GET", "/api/orders/7")).status == 200
        await flush(gateway)
    server, client = sorted(sink.spans, key=lambda span: span["kind"])  # type: ignore[arg-type,return-value]
    assert (server["kind"], client["kind"]) == (2, 3)
    assert "parentSpanId" not in server
    assert client["parentSpanId"] == server["spanId"]
    assert server["traceId"] == client["traceId"]
    ((trace_id, parent_id, sampled),) = seen_traceparents(seen)
    assert (trace_id.decode(), parent_id.decode(), sampled) == (
        server["traceId"],
        client["spanId"],
        True,
    )
    assert server["name"] == "GET /api/orders"
    assert attributes(server) == {
        "http.request.method": "GET",
        "url.path": "/api/orders/7",
        "url.scheme": "http",
        "client.address": "127.0.0.1",
        "server.address": "127.0.0.1",
        "http.route": "/api/orders",
        "http.response.status_code": "200",
    }
    assert server["status"] == {}
    assert attributes(client)["http.response.status_code"] == "200"
    assert {"key": "service.name", "value": {"stringValue": "gateway"}} in sink.resources[0][
        "attributes"
    ]  # type: ignore[index]


async def test_an_incoming_sampled_context_is_continued_with_its_tracestate() -> None:
    """The server span is the incoming parent's child, in its trace; tracestate passes on."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {})

    async with traced() as (fleet, call, gateway, sink):
        await fleet.add("orders", handler)
        headers = [
            (b"traceparent", f"00-{TRACE}-{PARENT}-01".encode()),
            (b"tracestate", b"rojo=1"),
            (b"baggage", b"user=alice"),
        ]
        assert (await call("GET", "/api/orders", headers=headers)).status == 200
        await flush(gateway)
    server = next(span for span in sink.spans if span["kind"] == 2)
    assert (server["traceId"], server["parentSpanId"]) == (TRACE, PARENT)
    assert seen_traceparents(seen)[0][0] == TRACE.encode()
    assert seen[0].header("tracestate") == "rojo=1"
    assert seen[0].header("baggage") == "user=alice"
    assert len([h for h in seen[0].headers if h[0] == b"traceparent"]) == 1


@pytest.mark.parametrize(
    "incoming",
    [
        [f"ff-{TRACE}-{PARENT}-01".encode()],
        [f"00-{TRACE.upper()}-{PARENT}-01".encode()],
        [f"00-{'0' * 32}-{PARENT}-01".encode()],
        [f"00-{TRACE}-{PARENT}-01".encode(), f"00-{TRACE}-{'1' * 16}-01".encode()],
    ],
)
async def test_an_invalid_context_restarts_the_trace_and_the_request_succeeds(
    incoming: list[bytes],
) -> None:
    """A new trace id, no parent, no tracestate; the answer is the upstream's."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {})

    async with traced() as (fleet, call, gateway, sink):
        await fleet.add("orders", handler)
        headers = [(b"traceparent", value) for value in incoming]
        headers.append((b"tracestate", b"rojo=1"))
        assert (await call("GET", "/api/orders", headers=headers)).status == 200
        await flush(gateway)
    server = next(span for span in sink.spans if span["kind"] == 2)
    assert server["traceId"] != TRACE
    assert "parentSpanId" not in server
    assert seen[0].header("tracestate") is None
    assert seen_traceparents(seen)[0][0].decode() == server["traceId"]


async def test_an_unsampled_context_is_passed_on_and_nothing_is_recorded() -> None:
    """The sampled flag off: the upstream gets the trace, unsampled; no span, one log record."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {})

    async with traced() as (fleet, call, gateway, sink):
        await fleet.add("orders", handler)
        headers = [(b"traceparent", f"00-{TRACE}-{PARENT}-00".encode())]
        assert (await call("GET", "/api/orders", headers=headers)).status == 200
        await flush(gateway)
    assert sink.spans == []
    ((trace_id, _, sampled),) = seen_traceparents(seen)
    assert (trace_id.decode(), sampled) == (TRACE, False)
    (record,) = sink.logs
    assert record["traceId"] == TRACE


async def test_a_ratio_of_zero_records_no_new_trace_but_still_propagates() -> None:
    """[gateway.tracing] ratio = 0: new traces are unsampled, and sent on as such; each
    request's access log record names the trace and span its upstream was told of."""
    seen: list[Request] = []

    async def handler(request: Request) -> Response:
        seen.append(request)
        return json_response(200, {})

    async with traced(config(tracing=TracingConfig(ratio=0.0))) as (fleet, call, gateway, sink):
        await fleet.add("orders", handler)
        for _ in range(5):
            assert (await call("GET", "/api/orders")).status == 200
        await flush(gateway)
    assert sink.spans == []
    sent = seen_traceparents(seen)
    assert [sampled for _, _, sampled in sent] == [False] * 5
    assert len({trace_id for trace_id, _, _ in sent}) == 5
    assert [(record["traceId"], record["spanId"]) for record in sink.logs] == [
        (trace_id.decode(), span_id.decode()) for trace_id, span_id, _ in sent
    ]


async def test_each_attempt_is_a_client_span_and_a_5xx_marks_the_server_span_failed() -> None:
    """Instances answering 503: a failed CLIENT span per attempt, and the server span ERROR."""

    async def unavailable(request: Request) -> Response:
        return json_response(503, {})

    async with traced() as (fleet, call, gateway, sink):
        await fleet.add("orders", unavailable)
        await fleet.add("orders", unavailable)
        assert (await call("GET", "/api/orders")).status == 503
        await flush(gateway)
    server = next(span for span in sink.spans if span["kind"] == 2)
    clients = [span for span in sink.spans if span["kind"] == 3]
    assert len(clients) >= 2
    assert all(span["parentSpanId"] == server["spanId"] for span in clients)
    assert all(attributes(span)["error.type"] == "503" for span in clients)
    assert attributes(clients[1])["http.request.resend_count"] == "1"
    assert server["status"] == {"code": 2}
    assert attributes(server)["error.type"] == "503"


async def test_the_access_log_is_a_log_record_per_request_with_its_trace() -> None:
    """Answered and refused requests each give a record carrying the request's trace id,
    and the path the client asked for (the route strips /api on the way up)."""
    async with traced() as (fleet, call, gateway, sink):
        await fleet.add("orders")
        assert (await call("GET", "/api/orders/1")).status == 200
        assert (await call("GET", "/api/orders/1", key=None)).status == 401
        await flush(gateway)
    servers = {span["spanId"]: span for span in sink.spans if span["kind"] == 2}
    assert [record["body"]["stringValue"] for record in sink.logs] == [  # type: ignore[index]
        "GET /api/orders/1 200",
        "GET /api/orders/1 401",
    ]
    for record in sink.logs:
        assert servers[record["spanId"]]["traceId"] == record["traceId"]
    assert [record["severityNumber"] for record in sink.logs] == [9, 13]


async def test_dropped_telemetry_shows_in_the_gateway_s_metrics() -> None:
    """The recorder's counts are exposed with the gateway's other metrics."""
    async with traced() as (fleet, call, gateway, _):
        await fleet.add("orders")
        assert (await call("GET", "/api/orders")).status == 200
        await flush(gateway)
        text = gateway.metrics.exposition().decode()
    assert 'meshkit_gateway_telemetry_records_total{outcome="exported",signal="spans"} 2.0' in text
    assert 'meshkit_gateway_telemetry_records_total{outcome="dropped",signal="spans"} 0.0' in text


@pytest.mark.parametrize("ratio", [-0.5, 1.01])
def test_a_ratio_outside_0_to_1_is_a_config_error(ratio: float) -> None:
    """[gateway.tracing] ratio is checked when the section is read."""
    with pytest.raises(ConfigError, match=r"gateway\.tracing\.ratio"):
        msgspec.structs.replace(config(), tracing=TracingConfig(ratio=ratio))


def test_an_outbound_call_that_starts_a_trace_is_its_root() -> None:
    """Client spans alone (a sidecar's outbound port), no context coming in: the attempt's
    span is the trace's root, not the child of a span that is never recorded."""
    recorder = Recorder(ratio=1.0)
    tracing = Tracing(recorder, FakeClock(), server=False, client=True)
    request = ProxyRequest(
        method="GET", path="/users/1", query="", headers=[], client="127.0.0.1", request_id="r"
    )
    tracing.on_request(request)
    assert request.trace is not None
    request.upstream = ("127.0.0.1", 9)
    request.trace.attempt_started(request)
    sent = parse_traceparent(request.trace.headers().split(b"\r\n")[0].split(b": ")[1])
    request.trace.finished(request, 200, None)
    [attempt] = recorder.spans
    assert attempt.parent_id == b""
    assert sent is not None
    assert sent[1] == attempt.span_id  # the upstream's parent is the attempt
