"""The OTLP decoders: what the official SDK encodes, the spec's JSON mapping, and bad input."""

from __future__ import annotations

import json

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from meshkit.errors import InvalidArgumentError
from meshkit.observe._otlp_decode import decode_logs, decode_traces, export_response

NOW_NS = 1_750_000_000_000_000_000
TRACE = "5B8EFFF798038103D269B633813FC60C"
SPAN = "EEE19B7EC3C1B174"


def sdk_spans() -> list[ReadableSpan]:
    """A server span with a child that failed, made by OpenTelemetry's own SDK."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create(
            {"service.name": "orders", "service.instance.id": "orders-2", "service.version": "1.0"}
        )
    )
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as root:
        root.set_attribute("http.route", "/orders")
        root.set_attribute("tags", ["a", "b"])
        with tracer.start_as_current_span(
            "charge", links=[Link(root.get_span_context(), {"why": "retry"})]
        ) as child:
            child.add_event("declined", {"amount": 12.5, "attempt": 2})
            child.set_status(Status(StatusCode.ERROR, "card declined"))
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_spans_from_the_sdk_protobuf() -> None:
    """Every field the store keeps comes out of the SDK's own protobuf encoding."""
    spans = sdk_spans()
    batch = decode_traces(encode_spans(spans).SerializeToString(), json=False)
    assert batch.rejected == 0
    by_name = {row[5]: row for row in batch.rows}
    root, child = by_name["POST /orders"], by_name["charge"]
    context = spans[1].get_span_context()  # the root ends last
    assert root[0] == f"{context.trace_id:032x}"
    assert root[1] == f"{context.span_id:016x}"
    assert (root[2], root[3], root[4], root[6]) == ("", "orders", "orders-2", 2)
    assert child[2] == root[1]
    assert json.loads(root[11]) == {"http.route": "/orders", "tags": ["a", "b"]}
    assert (child[9], child[10]) == (2, "card declined")
    (event,) = json.loads(child[12])
    assert (event["name"], event["attributes"]) == ("declined", {"amount": 12.5, "attempt": 2})
    (link,) = json.loads(child[13])
    assert (link["span_id"], link["attributes"]) == (root[1], {"why": "retry"})
    assert json.loads(root[14])["service.version"] == "1.0"
    assert root[7] <= child[7] <= child[8] <= root[8]


def traces_json(*spans: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "service.name", "value": {"stringValue": "payments"}},
                            {"key": "service.instance.id", "value": {"stringValue": "p-1"}},
                        ]
                    },
                    "scopeSpans": [{"scope": {"name": "x"}, "spans": list(spans)}],
                    "schemaUrl": "ignored",
                }
            ]
        }
    ).encode()


def test_spans_from_the_json_mapping() -> None:
    """Hex ids in any case, 64-bit integers as strings, enums as integers, unknown keys ignored."""
    body = traces_json(
        {
            "traceId": TRACE,
            "spanId": SPAN,
            "parentSpanId": "",
            "name": "charge",
            "kind": 3,
            "startTimeUnixNano": "1750000000000000000",
            "endTimeUnixNano": 1750000000250000000,
            "attributes": [
                {"key": "n", "value": {"intValue": "42"}},
                {"key": "ok", "value": {"boolValue": True}},
                {"key": "ratio", "value": {"doubleValue": 0.5}},
                {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
                {"key": "map", "value": {"kvlistValue": {"values": [{"key": "k", "value": {}}]}}},
            ],
            "status": {"code": 2, "message": "declined"},
            "droppedAttributesCount": 0,
            "flags": 1,
        }
    )
    (row,) = decode_traces(body, json=True).rows
    assert row[:9] == (
        TRACE.lower(),
        SPAN.lower(),
        "",
        "payments",
        "p-1",
        "charge",
        3,
        1_750_000_000_000_000_000,
        1_750_000_000_250_000_000,
    )
    assert (row[9], row[10]) == (2, "declined")
    assert json.loads(row[11]) == {
        "n": 42,
        "ok": True,
        "ratio": 0.5,
        "list": ["a"],
        "map": {"k": None},
    }


def test_malformed_ids_are_a_partial_success() -> None:
    """A span with a bad id is left out and counted; the rest are kept."""
    body = traces_json(
        {"traceId": TRACE, "spanId": SPAN, "name": "kept"},
        {"traceId": "00" * 16, "spanId": SPAN, "name": "zero trace"},
        {"traceId": TRACE, "spanId": "xyz", "name": "bad span"},
    )
    batch = decode_traces(body, json=True)
    assert [row[5] for row in batch.rows] == ["kept"]
    assert batch.rejected == 2
    answer = json.loads(export_response("traces", batch, json=True))
    assert answer["partialSuccess"]["rejectedSpans"] == "2"
    decoded = ExportTraceServiceResponse.FromString(export_response("traces", batch, json=False))
    assert decoded.partial_success.rejected_spans == 2
    assert export_response("traces", decode_traces(b"{}", json=True), json=False) == b""


def test_protobuf_that_does_not_decode_is_refused() -> None:
    """Bytes that are not an export request raise InvalidArgumentError on the body."""
    with pytest.raises(InvalidArgumentError) as raised:
        decode_traces(b"\xff\xff not protobuf", json=False)
    assert raised.value.key == "body"
    assert decode_traces(b"", json=False).rows == []  # an empty export is a valid one


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b"{not json", "body"),
        (b"[]", "body"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"name": 5}]}]}]}', "body"),
        (traces_json({"traceId": TRACE, "spanId": SPAN, "startTimeUnixNano": "soon"}), None),
    ],
)
def test_json_that_does_not_decode_is_refused(body: bytes, key: str | None) -> None:
    """Invalid JSON, a wrong shape or a non-integer time raise InvalidArgumentError."""
    with pytest.raises(InvalidArgumentError) as raised:
        decode_traces(body, json=True)
    assert raised.value.key == (key or "startTimeUnixNano")


def test_log_records_in_both_encodings() -> None:
    """Body, severity (from its text when no number is sent), trace context and times."""
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name").value.string_value = "orders"
    records = resource_logs.scope_logs.add().log_records
    first = records.add(time_unix_nano=5, severity_number=17, severity_text="ERROR")
    first.body.string_value = "payment declined"
    first.trace_id = bytes.fromhex(TRACE)
    first.span_id = bytes.fromhex(SPAN)
    second = records.add(severity_text="warning")  # no times, no number
    second.body.kvlist_value.values.add(key="order").value.int_value = 7
    batch = decode_logs(request.SerializeToString(), json=False, now_ns=NOW_NS)
    assert batch.rows[0][:9] == (
        5,
        NOW_NS,
        "orders",
        "",
        17,
        "ERROR",
        "payment declined",
        TRACE.lower(),
        SPAN.lower(),
    )
    assert batch.rows[1][0] == NOW_NS
    assert batch.rows[1][4] == 13
    assert json.loads(batch.rows[1][6]) == {"order": 7}

    body = {
        "resourceLogs": [
            {
                "resource": {"attributes": []},
                "scopeLogs": [
                    {
                        "logRecords": [
                            {
                                "observedTimeUnixNano": "9",
                                "severityNumber": 9,
                                "body": {"stringValue": "hello"},
                                "traceId": TRACE,
                                "spanId": SPAN,
                                "attributes": [{"key": "k", "value": {"stringValue": "v"}}],
                            },
                            {"traceId": "abc", "body": {"stringValue": "bad"}},
                        ]
                    }
                ],
            }
        ]
    }
    batch = decode_logs(json.dumps(body).encode(), json=True, now_ns=NOW_NS)
    (row,) = batch.rows
    assert row == (
        9,
        9,
        "unknown_service",
        "",
        9,
        "",
        "hello",
        TRACE.lower(),
        SPAN.lower(),
        '{"k":"v"}',
    )
    assert batch.rejected == 1
    answer = ExportLogsServiceResponse.FromString(export_response("logs", batch, json=False))
    assert answer.partial_success.rejected_log_records == 1


def test_times_beyond_what_sqlite_stores_are_refused() -> None:
    """A time past 2**63 ns is a rejected span in protobuf and a bad field in JSON."""
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add().spans
    spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN), end_time_unix_nano=2**63)
    spans.add(trace_id=bytes.fromhex(TRACE), span_id=bytes.fromhex(SPAN), name="kept")
    batch = decode_traces(request.SerializeToString(), json=False)
    assert [row[5] for row in batch.rows] == ["kept"]
    assert batch.rejected == 1
    body = traces_json({"traceId": TRACE, "spanId": SPAN, "endTimeUnixNano": str(2**64 - 1)})
    with pytest.raises(InvalidArgumentError) as raised:
        decode_traces(body, json=True)
    assert raised.value.key == "endTimeUnixNano"
