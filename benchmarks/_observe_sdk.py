"""The SDK client's cost with tracing: ``python -m benchmarks._observe_sdk MODE SECONDS``.

MODE is ``off`` (no tracer provider: the context is only carried),
``unsampled`` (the SDK set up, the calls made under a parent that is not
sampled) or ``on`` (every call recorded: a call span and a client span,
exported as OTLP/HTTP protobuf to a sink, a second backend process that
answers 200). Prints one JSON line: calls/s with 16 in flight, and the
CPU time of this process per call (the exporter's thread included).
"""

from __future__ import annotations

import contextlib
import sys
import time

import msgspec
import uvloop
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from benchmarks.client import start_backend, throughput
from meshkit._net import free_port
from meshkit.http import HTTPClient
from meshkit.observe import Destination, Endpoint, Identity, start_telemetry
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.service import Directory, ServiceClient


class Measured(msgspec.Struct, frozen=True):
    calls_per_second: float
    cpu_us_per_call: float
    spans_exported: int
    spans_dropped: int


def _unsampled_parent() -> contextlib.AbstractContextManager[object]:
    parent = SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=True,
        trace_flags=TraceFlags(0),
    )
    return trace.use_span(NonRecordingSpan(parent))


async def measure(mode: str, seconds: float) -> Measured:
    backend_port, sink_port = free_port(), free_port()
    backend, sink = start_backend(backend_port), start_backend(sink_port)
    telemetry = None
    if mode != "off":
        where = Destination(traces=Endpoint(f"http://127.0.0.1:{sink_port}/v1/traces"))
        telemetry = start_telemetry(Identity(service="bench", instance="bench-1"), where)
    registry = EmbeddedRegistry()
    registry.start()
    await registry.register(
        Instance(service="bench", id="bench-1", host="127.0.0.1", port=backend_port), ttl=3600
    )
    directory = Directory(registry)
    client = ServiceClient(directory, http=HTTPClient())
    try:
        with _unsampled_parent() if mode == "unsampled" else contextlib.nullcontext():
            token = context.attach(context.get_current())
            try:
                await throughput(lambda: client.get("bench", "/item"), 0.5)  # warm up
                cpu = time.process_time()
                rate = await throughput(lambda: client.get("bench", "/item"), seconds)
                if telemetry is not None:
                    telemetry.flush(10)
                cpu = time.process_time() - cpu
            finally:
                context.detach(token)
    finally:
        await client.aclose()
        await directory.aclose()
        await registry.aclose()
        for process in (backend, sink):
            process.terminate()
            process.wait()
    spans = telemetry.statistics().spans if telemetry is not None else None
    return Measured(
        calls_per_second=rate,
        cpu_us_per_call=cpu / (rate * seconds) * 1e6,
        spans_exported=spans.exported if spans else 0,
        spans_dropped=spans.dropped if spans else 0,
    )


if __name__ == "__main__":
    result = uvloop.run(measure(sys.argv[1], float(sys.argv[2])))
    print(msgspec.json.encode(result).decode())
