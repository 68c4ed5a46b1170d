"""What queries of the telemetry store ask and answer: the query API's JSON shapes.

Times are Unix nanoseconds as integers (a JavaScript client rounds them to
a quarter of a microsecond, which no display shows). ``attributes``,
``events``, ``links`` and ``resource`` are JSON objects and lists as the
store keeps them (the OTLP attributes as ``{key: value}``).
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "KINDS",
    "STATUSES",
    "LogPage",
    "LogQuery",
    "LogView",
    "SpanView",
    "TraceList",
    "TraceQuery",
    "TraceSummary",
    "TraceView",
]

# OTLP's Span.SpanKind and Status.StatusCode, by number, as the views name them.
KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUSES = ("unset", "ok", "error")


class TraceQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Traces that began in the last ``since`` seconds (all kept if ``None``), newest first."""

    service: str | None = None  # one of its spans is this service's
    errors: bool = False  # only traces with a span whose status is error
    min_duration: float = 0.0  # seconds, from the first span's start to the last's end
    since: float | None = None
    limit: int = 50


class LogQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Log records: the newest ``limit`` in time order, or with ``after`` (a page's ``cursor``)
    those stored since, in the order they came."""

    services: tuple[str, ...] = ()
    min_level: int = 0  # SeverityNumber
    trace_id: str | None = None
    since: float | None = None
    grep: str | None = None  # a substring of the body, ASCII letters in either case
    after: int | None = None
    limit: int = 100


class TraceSummary(msgspec.Struct, frozen=True, kw_only=True):
    trace_id: str
    service: str  # the root span's, or the earliest span's until the root arrives
    name: str
    start_ns: int
    duration_ns: int
    spans: int
    services: list[str]
    error: bool


class TraceList(msgspec.Struct, frozen=True):
    traces: list[TraceSummary]


class SpanView(msgspec.Struct, frozen=True, kw_only=True):
    trace_id: str
    span_id: str
    parent_span_id: str  # "" for a root
    service: str
    instance: str
    name: str
    kind: str  # one of KINDS
    start_ns: int
    end_ns: int
    duration_ns: int
    status: str  # one of STATUSES
    status_message: str
    attributes: Any
    events: Any
    links: Any
    resource: Any


class TraceView(msgspec.Struct, frozen=True):
    trace_id: str
    spans: list[SpanView]  # by start time


class LogView(msgspec.Struct, frozen=True, kw_only=True):
    id: int
    time_ns: int
    observed_ns: int
    service: str
    instance: str
    severity_number: int
    severity: str  # as sent, else the level of severity_number
    body: str
    trace_id: str
    span_id: str
    attributes: Any


class LogPage(msgspec.Struct, frozen=True):
    logs: list[LogView]
    cursor: int  # pass as ?after= for the records stored after these
