"""Observability: traces, logs and metrics, and where they are sent.

Every meshkit process sends its spans and log records over OTLP/HTTP to the
control plane by default, or to any OpenTelemetry collector named by the
standard ``OTEL_EXPORTER_OTLP_*`` variables (``destination``).

Services, the bus and sagas record with OpenTelemetry's SDK, which
``start_telemetry`` sets up once per process. On a proxy's hot path (the
gateway, the sidecar) spans and log records go through a ``Recorder``, much
cheaper than the SDK, and an ``Exporter`` sends them as standard OTLP/HTTP;
``meshkit.observe`` also holds the W3C Trace Context and Baggage header
rules they share. The control plane keeps what it receives in a
``TelemetryStore`` and answers queries of it.
"""

from meshkit.observe._destination import (
    Destination,
    Endpoint,
    Identity,
    destination,
    standard_variables,
)
from meshkit.observe._export import Exporter, OtlpHttpSink, Sink
from meshkit.observe._logs import (
    LIFECYCLE,
    OTLPHandler,
    StoreHandler,
    console_handler,
    install_record_fields,
)
from meshkit.observe._otlp_decode import LogRow, SpanRow
from meshkit.observe._queue import ExportQueue, QueueStatistics
from meshkit.observe._recorder import (
    CLIENT,
    CONSUMER,
    SERVER,
    LogRecord,
    Recorder,
    RecorderLimits,
    RecorderStatistics,
    Sampler,
    SpanRecord,
)
from meshkit.observe._recorder_metrics import RecorderCollector, TelemetryCollector
from meshkit.observe._retention import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE, Retention
from meshkit.observe._setup import Telemetry, TelemetryStatistics, start_telemetry
from meshkit.observe._store import Purged, StoreStatistics, TelemetryStore, keep_retention
from meshkit.observe._tracer import tracer, tracing_set_up
from meshkit.observe._units import parse_duration, parse_level, parse_size
from meshkit.observe._views import (
    LogPage,
    LogQuery,
    LogView,
    SpanView,
    TraceList,
    TraceQuery,
    TraceSummary,
    TraceView,
)
from meshkit.observe._w3c import (
    format_baggage,
    format_traceparent,
    parse_baggage,
    parse_traceparent,
    parse_traceparents,
    parse_tracestate,
)

__all__ = [
    "CLIENT",
    "CONSUMER",
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_SIZE",
    "LIFECYCLE",
    "SERVER",
    "Destination",
    "Endpoint",
    "ExportQueue",
    "Exporter",
    "Identity",
    "LogPage",
    "LogQuery",
    "LogRecord",
    "LogRow",
    "LogView",
    "OTLPHandler",
    "OtlpHttpSink",
    "Purged",
    "QueueStatistics",
    "Recorder",
    "RecorderCollector",
    "RecorderLimits",
    "RecorderStatistics",
    "Retention",
    "Sampler",
    "Sink",
    "SpanRecord",
    "SpanRow",
    "SpanView",
    "StoreHandler",
    "StoreStatistics",
    "Telemetry",
    "TelemetryCollector",
    "TelemetryStatistics",
    "TelemetryStore",
    "TraceList",
    "TraceQuery",
    "TraceSummary",
    "TraceView",
    "console_handler",
    "destination",
    "format_baggage",
    "format_traceparent",
    "install_record_fields",
    "keep_retention",
    "parse_baggage",
    "parse_duration",
    "parse_level",
    "parse_size",
    "parse_traceparent",
    "parse_traceparents",
    "parse_tracestate",
    "standard_variables",
    "start_telemetry",
    "tracer",
    "tracing_set_up",
]
