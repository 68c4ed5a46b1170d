"""Trace context on the bus: a consumer span when tracing is set up, the context alone when not."""

import pytest

from meshkit.bus import Message, _trace

sdk_trace = pytest.importorskip("opentelemetry.sdk.trace", reason="pip install 'meshkit[otel]'")
from opentelemetry import trace  # noqa: E402 (after the skip)
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
PARENT = f"00-{TRACE_ID:032x}-b7ad6b7169203331-01"


def message(headers: dict[str, str]) -> Message:
    return Message(id="m1", topic="order.created", payload=b"{}", headers=headers, deliveries=2)


def test_without_a_provider_the_handler_runs_in_the_publishers_context_and_no_span_is_made() -> (
    None
):
    assert not _trace.recording()
    with _trace.consuming(message({"traceparent": PARENT}), "billing", recording=False):
        current = trace.get_current_span()
        assert current.get_span_context().trace_id == TRACE_ID
        assert not current.is_recording()
    assert trace.get_current_span().get_span_context().trace_id == 0  # detached again


def test_with_a_provider_each_message_gets_a_consumer_span_under_the_publishers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(_trace, "_tracer", lambda: provider.get_tracer("meshkit.bus"))
    assert _trace.recording()
    with _trace.consuming(message({"traceparent": PARENT}), "billing", recording=True):
        pass
    [span] = exporter.get_finished_spans()
    assert span.name == "process order.created"
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert span.attributes is not None
    assert span.attributes["messaging.consumer.group.name"] == "billing"
    assert span.attributes["messaging.message.delivery_count"] == 2
