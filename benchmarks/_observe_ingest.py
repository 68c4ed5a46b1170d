"""Spans a second the control plane ingests over OTLP/HTTP protobuf, on one core, and its CPU.

``measure_ingest`` is called by ``benchmarks.observe``; alone:

    python -m benchmarks._observe_ingest [--json FILE] [--quick]

A ``meshkit control-plane`` process runs on core 1; this process, on core
0, sends it exports prepared beforehand, as an OpenTelemetry SDK's batch
processor would (512 spans a request, its default batch size; one resource
a request; traces of four spans, each a typical HTTP server span of eight
attributes), over ``CONNECTIONS`` connections at once, each sending its
next export when the last is answered. A 503 (the store's queue full) is
sent again after the Retry-After the plane asked for, as the exporters do.
The time runs from the first request until the last trace sent is stored
(the writer takes batches in order), so the rate is what is written to
SQLite, not only what is decoded; the CPU is the plane's (from /proc) over
the same time. Rows: ``otlp ingest`` (spans/s), ``otlp ingest cpu per
span`` (µs) and ``otlp ingest refused and retried`` (exports).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import time
from pathlib import Path

import uvloop
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from benchmarks._load import start_control_plane, stop
from benchmarks._report import Row, arguments, report
from benchmarks.registry import cpu_seconds, until_up
from meshkit._net import free_port
from meshkit.http import HTTPClient, Timeouts

SPANS_PER_EXPORT = 512  # the SDK's BatchSpanProcessor default max_export_batch_size
SPANS_PER_TRACE = 4
CONNECTIONS = 4  # services exporting at once
EXPORTS = 400  # about 200,000 spans: tens of seconds of the plane at its rate
QUICK_EXPORTS = 24


def _attribute(key: str, value: str | int) -> KeyValue:
    pair = KeyValue(key=key)
    if isinstance(value, int):
        pair.value.int_value = value
    else:
        pair.value.string_value = value
    return pair


def export(number: int, start_ns: int) -> tuple[bytes, str]:
    """The protobuf of export ``number``, and the id of its last trace."""
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    for key, value in (
        ("service.name", f"service-{number % CONNECTIONS}"),
        ("service.instance.id", f"instance-{number % CONNECTIONS}"),
        ("service.version", "1.0.0"),
        ("telemetry.sdk.language", "python"),
    ):
        resource_spans.resource.attributes.append(_attribute(key, value))
    spans = resource_spans.scope_spans.add().spans
    trace_id = b""
    parent = b""
    for index in range(SPANS_PER_EXPORT):
        if index % SPANS_PER_TRACE == 0:
            trace_id, parent = secrets.token_bytes(16), b""
        span_id = secrets.token_bytes(8)
        begin = start_ns + index * 1000
        span = Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=parent,
            name="GET /products/{id}",
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=begin,
            end_time_unix_nano=begin + 2_500_000,
        )
        span.attributes.extend(
            _attribute(key, value)
            for key, value in (
                ("http.request.method", "GET"),
                ("url.path", f"/products/{index}"),
                ("http.route", "/products/{id}"),
                ("http.response.status_code", 200),
                ("server.address", "127.0.0.1"),
                ("server.port", 8102),
                ("network.protocol.version", "1.1"),
                ("user_agent.original", "python-httpx/0.28"),
            )
        )
        spans.append(span)
        parent = span_id
    return request.SerializeToString(), trace_id.hex()


async def _send_all(port: int, token: str, bodies: list[bytes]) -> int:
    """Send every body, ``CONNECTIONS`` at a time; the number of 503s retried."""
    headers = [
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/x-protobuf"),
    ]
    queue = list(reversed(bodies))
    retried = 0

    async def connection(http: HTTPClient) -> None:
        nonlocal retried
        while queue:
            body = queue.pop()
            while True:
                answer = await http.request(
                    "POST", "127.0.0.1", port, "/v1/traces", headers=headers, body=body
                )
                if answer.status == 200:
                    break
                if answer.status != 503:
                    raise RuntimeError(f"the plane answered {answer.status}: {answer.body!r}")
                retried += 1
                await asyncio.sleep(float(answer.header("retry-after") or 1))

    async with HTTPClient(timeouts=Timeouts(connect=5, read=60)) as http:
        await asyncio.gather(*(connection(http) for _ in range(CONNECTIONS)))
    return retried


async def _until_stored(port: int, token: str, trace_id: str) -> None:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    async with HTTPClient() as http:
        while True:
            answer = await http.request(
                "GET", "127.0.0.1", port, f"/v1/query/traces/{trace_id}", headers=headers
            )
            if answer.status == 200:
                return
            await asyncio.sleep(0.01)


async def measure_ingest(*, quick: bool) -> list[Row]:
    """The ``otlp ingest`` rows: spans/s stored, the plane's CPU per span, exports retried."""
    count = QUICK_EXPORTS if quick else EXPORTS
    start_ns = time.time_ns()
    prepared = [export(number, start_ns) for number in range(count)]
    bodies = [body for body, _ in prepared]
    last_trace = prepared[-1][1]
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as data:
        plane = start_control_plane(Path(data), token, port)
        try:
            await until_up(port)
            await _send_all(port, token, bodies[:2])  # warm up: connections, the first pages
            cpu_before, wall_before = cpu_seconds(plane.pid), time.perf_counter()
            retried = await _send_all(port, token, bodies[2:])
            await _until_stored(port, token, last_trace)
            cpu_after, wall_after = cpu_seconds(plane.pid), time.perf_counter()
        finally:
            stop(plane)
    spans = (count - 2) * SPANS_PER_EXPORT
    return [
        Row("otlp ingest", spans / (wall_after - wall_before), "spans/s"),
        Row("otlp ingest cpu per span", (cpu_after - cpu_before) / spans * 1e6, "µs"),
        Row("otlp ingest refused and retried", retried, "exports"),
    ]


def main() -> None:
    parser = arguments("Spans a second the control plane ingests over OTLP/HTTP")
    parser.add_argument("--quick", action="store_true", help="a few exports, to check it runs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    rows = uvloop.run(measure_ingest(quick=args.quick))
    report("OTLP ingest by the control plane", rows, args.json)


if __name__ == "__main__":
    main()
