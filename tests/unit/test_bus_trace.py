"""Trace context on the bus: create, publish and process spans when tracing is set up,
the context alone when not."""

from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.bus import Message, _trace, outgoing
from meshkit.observe import tracer

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


def test_with_a_provider_each_message_gets_a_consumer_span_under_its_creation(
    spans: InMemorySpanExporter,
) -> None:
    assert _trace.recording()
    with _trace.consuming(message({"traceparent": PARENT}), "billing", recording=True):
        pass
    [span] = spans.get_finished_spans()
    assert span.name == "process order.created"
    assert span.kind == trace.SpanKind.CONSUMER
    assert span.context is not None
    assert span.context.trace_id == TRACE_ID
    assert span.parent is not None
    assert span.parent.span_id == 0xB7AD6B7169203331
    assert [link.context.span_id for link in span.links] == [0xB7AD6B7169203331]
    assert span.attributes is not None
    assert span.attributes["messaging.consumer.group.name"] == "billing"
    assert span.attributes["messaging.message.delivery_count"] == 2


def test_a_message_made_in_a_span_carries_a_create_span_and_its_publish_is_a_child(
    spans: InMemorySpanExporter,
) -> None:
    with tracer("test").start_as_current_span("POST /orders") as request:
        made = outgoing("order.created", {"id": 1})
    with _trace.publishing([made]):  # later, in the outbox relay: no span is current
        pass
    create, publish = (s for s in spans.get_finished_spans() if s.name != "POST /orders")
    assert create.name == "create order.created"
    assert create.kind == trace.SpanKind.PRODUCER
    assert create.parent is not None
    assert create.parent.span_id == request.get_span_context().span_id
    assert create.context is not None
    assert made.headers["traceparent"].split("-")[2] == f"{create.context.span_id:016x}"
    assert publish.name == "publish order.created"
    assert publish.parent is not None
    assert publish.parent.span_id == create.context.span_id
    assert [link.context.span_id for link in publish.links] == [create.context.span_id]


def test_a_batch_from_several_traces_is_linked_to_each_not_parented(
    spans: InMemorySpanExporter,
) -> None:
    made = []
    for n in range(2):
        with tracer("test").start_as_current_span(f"request {n}"):
            made.append(outgoing("order.created", {"id": n}))
    with _trace.publishing(made):
        pass
    [publish] = [s for s in spans.get_finished_spans() if s.name.startswith("publish")]
    assert publish.parent is None
    assert len(publish.links) == 2
    assert publish.attributes is not None
    assert publish.attributes["messaging.batch.message_count"] == 2


def test_untraced_messages_make_no_publish_span(spans: InMemorySpanExporter) -> None:
    with _trace.publishing([outgoing("order.created", {})]):
        pass
    assert spans.get_finished_spans() == ()
