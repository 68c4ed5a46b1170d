"""Spans and log records as OTLP/HTTP JSON request bodies.

The OTLP JSON mapping (opentelemetry-proto, "JSON Protobuf Encoding"):
field names in lowerCamelCase, trace and span ids as hex strings (not
base64, unlike protobuf's own JSON), 64-bit integers as decimal strings,
enums as numbers. Bodies are ``ExportTraceServiceRequest`` and
``ExportLogsServiceRequest``, one resource and one scope each.

Each record is written through a byte template, its strings escaped by
msgspec: building a dict per span and attribute for a generic encoder
costs several times more, and this runs in the proxy's own process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from meshkit.observe._recorder import Attributes, LogRecord, SpanRecord

__all__ = ["CONTENT_TYPE", "SCOPE", "encode_logs", "encode_spans"]

CONTENT_TYPE = b"application/json"
SCOPE = "meshkit"

_string = msgspec.json.encode
_STATUS_ERROR = b'"status":{"code":2}'
_STATUS_UNSET = b'"status":{}'


# Encoded attributes by (key, value): a proxy's spans repeat the same few
# (method, route, address, status), and encoding them afresh was the
# largest part of a recorded request's cost (cProfile). Emptied when full,
# so values that never repeat (a path with an id) cannot grow it.
_ENCODED: dict[tuple[str, str | int], bytes] = {}
_ENCODED_LIMIT = 4096


def _attribute(key: str, value: str | int) -> bytes:
    found = _ENCODED.get((key, value))
    if found is None:
        if isinstance(value, int):
            found = b'{"key":%s,"value":{"intValue":"%d"}}' % (_string(key), value)
        else:
            found = b'{"key":%s,"value":{"stringValue":%s}}' % (_string(key), _string(value))
        if len(_ENCODED) >= _ENCODED_LIMIT:
            _ENCODED.clear()
        _ENCODED[(key, value)] = found
    return found


# Whole attribute lists too: a client span's (method, address, port, status)
# repeats exactly from request to request.
_BLOCKS: dict[Attributes, bytes] = {}


def _attributes(attributes: Attributes) -> bytes:
    found = _BLOCKS.get(attributes)
    if found is None:
        found = b",".join([_attribute(key, value) for key, value in attributes])
        if len(_BLOCKS) >= _ENCODED_LIMIT:
            _BLOCKS.clear()
        _BLOCKS[attributes] = found
    return found


def _resource(resource: Mapping[str, str]) -> bytes:
    return b'{"attributes":[%s]}' % _attributes(tuple(resource.items()))


def _span(span: SpanRecord, offset: int) -> bytes:
    attributes = span.attributes
    if span.error is not None:
        attributes = (*attributes, ("error.type", span.error))
    return (
        b'{"traceId":"%s","spanId":"%s",%s"name":%s,"kind":%d,'
        b'"startTimeUnixNano":"%d","endTimeUnixNano":"%d","attributes":[%s],%s}'
        % (
            span.trace_id,
            span.span_id,
            b'"parentSpanId":"%s",' % span.parent_id if span.parent_id else b"",
            _string(span.name),
            span.kind,
            int(span.start * 1e9) + offset,
            int(span.end * 1e9) + offset,
            _attributes(attributes),
            _STATUS_UNSET if span.error is None else _STATUS_ERROR,
        )
    )


def encode_spans(spans: Sequence[SpanRecord], resource: Mapping[str, str], offset: int) -> bytes:
    """An ``ExportTraceServiceRequest``; ``offset`` turns monotonic nanoseconds into Unix ones."""
    return (
        b'{"resourceSpans":[{"resource":%s,"scopeSpans":[{"scope":{"name":"%s"},"spans":[%s]}]}]}'
        % (
            _resource(resource),
            SCOPE.encode(),
            b",".join([_span(span, offset) for span in spans]),
        )
    )


_SEVERITY_TEXT = {1: "TRACE", 5: "DEBUG", 9: "INFO", 13: "WARN", 17: "ERROR", 21: "FATAL"}


def _log(record: LogRecord, offset: int) -> bytes:
    ids = b""
    if record.trace_id:
        ids = b'"traceId":"%s","spanId":"%s",' % (
            record.trace_id.encode("ascii"),
            record.span_id.encode("ascii"),
        )
    nanos = int(record.time * 1e9) + offset
    return (
        b'{"timeUnixNano":"%d","observedTimeUnixNano":"%d","severityNumber":%d,"severityText":"%s",%s"body":{"stringValue":%s},"attributes":[%s]}'
        % (
            nanos,
            nanos,
            record.severity,
            _SEVERITY_TEXT.get(record.severity, "INFO").encode(),
            ids,
            _string(record.body),
            _attributes(record.attributes),
        )
    )


def encode_logs(logs: Sequence[LogRecord], resource: Mapping[str, str], offset: int) -> bytes:
    """An ``ExportLogsServiceRequest``; ``offset`` as for ``encode_spans``."""
    return (
        b'{"resourceLogs":[{"resource":%s,"scopeLogs":[{"scope":{"name":"%s"},"logRecords":[%s]}]}]}'
        % (
            _resource(resource),
            SCOPE.encode(),
            b",".join([_log(record, offset) for record in logs]),
        )
    )
