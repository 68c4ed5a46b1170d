"""OTLP export requests, as the official exporters send them, turned into the store's rows.

Two encodings of the same messages (OpenTelemetry's OTLP specification,
"OTLP/HTTP"): protobuf, decoded with the ``opentelemetry-proto`` classes
(upb underneath), and JSON, decoded with msgspec structs that follow the
spec's JSON mapping (lowerCamelCase keys, ``traceId``/``spanId`` as hex,
64-bit integers as numbers or strings, enums as integers; unknown keys are
ignored, as the spec requires of receivers). msgspec rather than protobuf's
``json_format``, which builds every message first and is several times slower.

A request that cannot be decoded raises ``InvalidArgumentError`` (the
receiver answers 400). A record with a malformed id is left out and counted
(``Batch.rejected``), and the answer is a partial success: the exporter must
not send it again (it would be refused again), and the rest is kept.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from meshkit.errors import InvalidArgumentError
from meshkit.observe._units import LEVELS, parse_level

__all__ = [
    "Batch",
    "LogRow",
    "SpanRow",
    "decode_logs",
    "decode_traces",
    "export_response",
    "status_body",
]

# The store's rows, in its columns' order (``_store``): plain tuples, because
# sqlite3's executemany takes them as they are and a batch has thousands.
#   trace_id, span_id, parent_span_id, service, instance, name, kind,
#   start_ns, end_ns, status_code, status_message, attributes, events, links, resource
SpanRow = tuple[str, str, str, str, str, str, int, int, int, int, str, str, str, str, str]
#   time_ns, observed_ns, service, instance, severity_number, severity_text,
#   body, trace_id, span_id, attributes
LogRow = tuple[int, int, str, str, int, str, str, str, str, str]

# The SDKs' service.name when none is set (OpenTelemetry's resource semantic conventions).
UNKNOWN_SERVICE = "unknown_service"
_encode = msgspec.json.encode


class Batch(msgspec.Struct, frozen=True):
    """The rows of one request, and how many of its records were left out and why."""

    rows: list[Any]
    rejected: int = 0
    why: str = ""


def decode_traces(body: bytes, *, json: bool) -> Batch:
    """The spans of an ``ExportTraceServiceRequest``."""
    if json:
        return _json_spans(_decode_json(_TracesRequest, body))
    try:
        request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
    except DecodeError as error:
        raise InvalidArgumentError(
            "body", f"is not an OTLP ExportTraceServiceRequest: {error}"
        ) from None
    return _proto_spans(request)


def decode_logs(body: bytes, *, json: bool, now_ns: int) -> Batch:
    """The log records of an ``ExportLogsServiceRequest``; ``now_ns`` stands in for a record
    with neither time nor observed time."""
    if json:
        return _json_logs(_decode_json(_LogsRequest, body), now_ns)
    try:
        request = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
    except DecodeError as error:
        raise InvalidArgumentError(
            "body", f"is not an OTLP ExportLogsServiceRequest: {error}"
        ) from None
    return _proto_logs(request, now_ns)


def export_response(signal: str, batch: Batch, *, json: bool) -> bytes:
    """The body of a 200: ``Export{Trace,Logs}ServiceResponse``, with ``partial_success``
    only if some records were rejected (an empty message is a full success)."""
    rejected = "rejected_spans" if signal == "traces" else "rejected_log_records"
    if json:
        if not batch.rejected:
            return b"{}"
        partial = {_camel(rejected): str(batch.rejected), "errorMessage": batch.why}
        return _encode({"partialSuccess": partial})
    if not batch.rejected:
        return b""
    if signal == "traces":
        encoded: bytes = trace_service_pb2.ExportTraceServiceResponse(
            partial_success=trace_service_pb2.ExportTracePartialSuccess(
                rejected_spans=batch.rejected, error_message=batch.why
            )
        ).SerializeToString()
    else:
        encoded = logs_service_pb2.ExportLogsServiceResponse(
            partial_success=logs_service_pb2.ExportLogsPartialSuccess(
                rejected_log_records=batch.rejected, error_message=batch.why
            )
        ).SerializeToString()
    return encoded


def status_body(code: int, message: str, *, json: bool) -> bytes:
    """A ``google.rpc.Status``: what OTLP/HTTP answers with any 4xx or 5xx."""
    if json:
        return _encode({"code": code, "message": message})
    status: bytes = status_pb2.Status(code=code, message=message).SerializeToString()
    return status


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# -- protobuf --------------------------------------------------------------------------


def _proto_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_proto_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return _proto_attributes(value.kvlist_value.values)
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()  # as the JSON mapping writes bytes
    return getattr(value, kind)


def _proto_attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _proto_value(pair.value) for pair in pairs}


def _attributes_json(attributes: dict[str, Any]) -> str:
    return _encode(attributes).decode() if attributes else "{}"


def _identity(attributes: dict[str, Any]) -> tuple[str, str]:
    return (
        str(attributes.get("service.name") or UNKNOWN_SERVICE),
        str(attributes.get("service.instance.id") or ""),
    )


_NO_TRACE = bytes(16)
_TOO_LATE = 2**63  # protobuf's fixed64 times go further than SQLite's integers
_NO_SPAN = bytes(8)


def _proto_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> Batch:
    rows: list[SpanRow] = []
    rejected, why = 0, ""
    for resource_spans in request.resource_spans:
        resource = _proto_attributes(resource_spans.resource.attributes)
        service, instance = _identity(resource)
        resource_json = _attributes_json(resource)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id, span_id = span.trace_id, span.span_id
                if len(trace_id) != 16 or trace_id == _NO_TRACE:
                    rejected, why = rejected + 1, "a span's trace_id is not 16 bytes, not all zero"
                    continue
                if len(span_id) != 8 or span_id == _NO_SPAN:
                    rejected, why = rejected + 1, "a span's span_id is not 8 bytes, not all zero"
                    continue
                if span.start_time_unix_nano >= _TOO_LATE or span.end_time_unix_nano >= _TOO_LATE:
                    rejected, why = rejected + 1, "a span's time is past 2**63 ns (year 2262)"
                    continue
                status = span.status
                rows.append(
                    (
                        trace_id.hex(),
                        span_id.hex(),
                        span.parent_span_id.hex(),
                        service,
                        instance,
                        span.name,
                        span.kind,
                        span.start_time_unix_nano,
                        span.end_time_unix_nano,
                        status.code,
                        status.message,
                        _attributes_json(_proto_attributes(span.attributes)),
                        _proto_events(span.events) if span.events else "[]",
                        _proto_links(span.links) if span.links else "[]",
                        resource_json,
                    )
                )
    return Batch(rows, rejected, why)


def _proto_events(events: Sequence[Any]) -> str:
    return _encode(
        [
            {
                "time_ns": event.time_unix_nano,
                "name": event.name,
                "attributes": _proto_attributes(event.attributes),
            }
            for event in events
        ]
    ).decode()


def _proto_links(links: Sequence[Any]) -> str:
    return _encode(
        [
            {
                "trace_id": link.trace_id.hex(),
                "span_id": link.span_id.hex(),
                "attributes": _proto_attributes(link.attributes),
            }
            for link in links
        ]
    ).decode()


def _proto_logs(request: logs_service_pb2.ExportLogsServiceRequest, now_ns: int) -> Batch:
    rows: list[LogRow] = []
    rejected, why = 0, ""
    for resource_logs in request.resource_logs:
        service, instance = _identity(_proto_attributes(resource_logs.resource.attributes))
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                trace_id, span_id = record.trace_id, record.span_id
                if len(trace_id) not in (0, 16) or len(span_id) not in (0, 8):
                    rejected, why = rejected + 1, "a log record's trace_id or span_id is malformed"
                    continue
                if (
                    record.time_unix_nano >= _TOO_LATE
                    or record.observed_time_unix_nano >= _TOO_LATE
                ):
                    rejected, why = rejected + 1, "a log record's time is past 2**63 ns (year 2262)"
                    continue
                body = _proto_value(record.body) if record.HasField("body") else ""
                rows.append(
                    (
                        record.time_unix_nano or record.observed_time_unix_nano or now_ns,
                        record.observed_time_unix_nano or now_ns,
                        service,
                        instance,
                        _severity(record.severity_number, record.severity_text),
                        record.severity_text,
                        body if isinstance(body, str) else _encode(body).decode(),
                        "" if trace_id == _NO_TRACE else trace_id.hex(),
                        "" if span_id == _NO_SPAN else span_id.hex(),
                        _attributes_json(_proto_attributes(record.attributes)),
                    )
                )
    return Batch(rows, rejected, why)


def _severity(number: int, text: str) -> int:
    """The record's SeverityNumber; when it sent none, the one its text names (``WARNING``)."""
    if number or not text:
        return number
    try:
        return parse_level("severity_text", text)
    except InvalidArgumentError:
        return 0


# -- JSON ------------------------------------------------------------------------------


class _AnyValue(msgspec.Struct, rename="camel"):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    array_value: _ArrayValue | None = None
    kvlist_value: _KeyValueList | None = None
    bytes_value: str | None = None


class _ArrayValue(msgspec.Struct):
    values: list[_AnyValue] = []


class _KeyValue(msgspec.Struct):
    key: str = ""
    value: _AnyValue | None = None


class _KeyValueList(msgspec.Struct):
    values: list[_KeyValue] = []


class _Resource(msgspec.Struct):
    attributes: list[_KeyValue] = []


class _Status(msgspec.Struct):
    code: int | str = 0
    message: str = ""


class _Event(msgspec.Struct, rename="camel"):
    time_unix_nano: int | str = 0
    name: str = ""
    attributes: list[_KeyValue] = []


class _Link(msgspec.Struct, rename="camel"):
    trace_id: str = ""
    span_id: str = ""
    attributes: list[_KeyValue] = []


class _Span(msgspec.Struct, rename="camel"):
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str = ""
    name: str = ""
    kind: int | str = 0
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    attributes: list[_KeyValue] = []
    events: list[_Event] = []
    links: list[_Link] = []
    status: _Status | None = None


class _ScopeSpans(msgspec.Struct):
    spans: list[_Span] = []


class _ResourceSpans(msgspec.Struct, rename="camel"):
    resource: _Resource | None = None
    scope_spans: list[_ScopeSpans] = []


class _TracesRequest(msgspec.Struct, rename="camel"):
    resource_spans: list[_ResourceSpans] = []


class _LogRecord(msgspec.Struct, rename="camel"):
    time_unix_nano: int | str = 0
    observed_time_unix_nano: int | str = 0
    severity_number: int | str = 0
    severity_text: str = ""
    body: _AnyValue | None = None
    attributes: list[_KeyValue] = []
    trace_id: str = ""
    span_id: str = ""


class _ScopeLogs(msgspec.Struct, rename="camel"):
    log_records: list[_LogRecord] = []


class _ResourceLogs(msgspec.Struct, rename="camel"):
    resource: _Resource | None = None
    scope_logs: list[_ScopeLogs] = []


class _LogsRequest(msgspec.Struct, rename="camel"):
    resource_logs: list[_ResourceLogs] = []


_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}


def _decode_json(kind: type[Any], body: bytes) -> Any:
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as error:
        raise InvalidArgumentError("body", f"is not OTLP JSON: {error}") from None
    except msgspec.DecodeError as error:
        raise InvalidArgumentError("body", f"is not valid JSON: {error}") from None


_INT64 = range(-(2**63), 2**63)  # what SQLite stores; OTLP's times are below 2**63 until 2262


def _whole(key: str, value: int | str) -> int:
    """A 64-bit integer of the JSON mapping: a number, or a decimal string."""
    if isinstance(value, str):
        if not (value.isdigit() or (value[:1] == "-" and value[1:].isdigit())):
            raise InvalidArgumentError(key, f"must be an integer, got {value!r}")
        value = int(value)
    if value not in _INT64:
        raise InvalidArgumentError(key, f"is out of the range of a signed 64-bit integer: {value}")
    return value


# The proto3 JSON mapping writes enums as names; OTLP's as integers. Both are read.
_SPAN_KINDS = {
    f"SPAN_KIND_{name}": number
    for number, name in enumerate(
        ("UNSPECIFIED", "INTERNAL", "SERVER", "CLIENT", "PRODUCER", "CONSUMER")
    )
}
_STATUS_CODES = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}
_SEVERITIES = {
    f"SEVERITY_NUMBER_{name.upper()}{suffix}": lowest + offset
    for name, lowest in LEVELS.items()
    for offset, suffix in enumerate(("", "2", "3", "4"))
}


def _enum(key: str, value: int | str, names: dict[str, int]) -> int:
    if isinstance(value, str) and value in names:
        return names[value]
    return _whole(key, value)


def _json_value(value: _AnyValue | None) -> Any:
    if value is None:
        return None
    if value.string_value is not None:
        return value.string_value
    if value.bool_value is not None:
        return value.bool_value
    if value.int_value is not None:
        return _whole("intValue", value.int_value)
    if value.double_value is not None:
        return _double(value.double_value)
    if value.array_value is not None:
        return [_json_value(item) for item in value.array_value.values]
    if value.kvlist_value is not None:
        return _json_attributes(value.kvlist_value.values)
    return value.bytes_value


def _double(value: float | str) -> float | str:
    if isinstance(value, float | int):
        return value
    try:
        return float(value)  # "NaN", "Infinity", or a number written as a string
    except ValueError:
        raise InvalidArgumentError("doubleValue", f"must be a number, got {value!r}") from None


def _json_attributes(pairs: list[_KeyValue]) -> dict[str, Any]:
    return {pair.key: _json_value(pair.value) for pair in pairs}


def _hex_id(text: str, size: int) -> str | None:
    """The id, lower-case, if ``text`` is ``size`` bytes of hex and not all zero."""
    if len(text) != size * 2:
        return None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    return None if raw == bytes(size) else text.lower()


def _json_spans(request: _TracesRequest) -> Batch:
    rows: list[SpanRow] = []
    rejected, why = 0, ""
    for resource_spans in request.resource_spans:
        given = resource_spans.resource
        resource = _json_attributes(given.attributes if given else [])
        service, instance = _identity(resource)
        resource_json = _attributes_json(resource)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                trace_id, span_id = _hex_id(span.trace_id, 16), _hex_id(span.span_id, 8)
                if trace_id is None or span_id is None:
                    rejected += 1
                    why = "a span's traceId is not 32 hex digits or its spanId not 16 (or all zero)"
                    continue
                status = span.status or _Status()
                rows.append(
                    (
                        trace_id,
                        span_id,
                        _hex_id(span.parent_span_id, 8) or "",
                        service,
                        instance,
                        span.name,
                        _enum("kind", span.kind, _SPAN_KINDS),
                        _whole("startTimeUnixNano", span.start_time_unix_nano),
                        _whole("endTimeUnixNano", span.end_time_unix_nano),
                        _enum("status.code", status.code, _STATUS_CODES),
                        status.message,
                        _attributes_json(_json_attributes(span.attributes)),
                        _json_events(span.events),
                        _json_links(span.links),
                        resource_json,
                    )
                )
    return Batch(rows, rejected, why)


def _json_events(events: list[_Event]) -> str:
    if not events:
        return "[]"
    return _encode(
        [
            {
                "time_ns": _whole("timeUnixNano", event.time_unix_nano),
                "name": event.name,
                "attributes": _json_attributes(event.attributes),
            }
            for event in events
        ]
    ).decode()


def _json_links(links: list[_Link]) -> str:
    if not links:
        return "[]"
    return _encode(
        [
            {
                "trace_id": link.trace_id.lower(),
                "span_id": link.span_id.lower(),
                "attributes": _json_attributes(link.attributes),
            }
            for link in links
        ]
    ).decode()


def _json_logs(request: _LogsRequest, now_ns: int) -> Batch:
    rows: list[LogRow] = []
    rejected, why = 0, ""
    for resource_logs in request.resource_logs:
        resource = resource_logs.resource
        service, instance = _identity(_json_attributes(resource.attributes if resource else []))
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                trace_id = _hex_id(record.trace_id, 16) if record.trace_id else ""
                span_id = _hex_id(record.span_id, 8) if record.span_id else ""
                if trace_id is None or span_id is None:
                    rejected, why = rejected + 1, "a log record's traceId or spanId is malformed"
                    continue
                observed = _whole("observedTimeUnixNano", record.observed_time_unix_nano)
                body = _json_value(record.body) if record.body is not None else ""
                rows.append(
                    (
                        _whole("timeUnixNano", record.time_unix_nano) or observed or now_ns,
                        observed or now_ns,
                        service,
                        instance,
                        _severity(
                            _enum("severityNumber", record.severity_number, _SEVERITIES),
                            record.severity_text,
                        ),
                        record.severity_text,
                        body if isinstance(body, str) else _encode(body).decode(),
                        trace_id,
                        span_id,
                        _attributes_json(_json_attributes(record.attributes)),
                    )
                )
    return Batch(rows, rejected, why)
