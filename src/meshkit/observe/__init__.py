"""Observability: traces, logs and metrics, and where they are sent.

Every meshkit process sends its spans and log records over OTLP/HTTP to the
control plane by default, or to any OpenTelemetry collector named by the
standard ``OTEL_EXPORTER_OTLP_*`` variables (``destination``).

On a proxy's hot path (the gateway, the sidecar) spans and log records go
through a ``Recorder``, much cheaper than OpenTelemetry's SDK, and an
``Exporter`` sends them as standard OTLP/HTTP; ``meshkit.observe`` also
holds the W3C Trace Context and Baggage header rules they share.
"""

from meshkit.observe._destination import Destination, Endpoint, Identity, destination
from meshkit.observe._export import Exporter, OtlpHttpSink, Sink
from meshkit.observe._recorder import (
    CLIENT,
    SERVER,
    LogRecord,
    Recorder,
    RecorderLimits,
    RecorderStatistics,
    Sampler,
    SpanRecord,
)
from meshkit.observe._recorder_metrics import RecorderCollector
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
    "SERVER",
    "Destination",
    "Endpoint",
    "Exporter",
    "Identity",
    "LogRecord",
    "OtlpHttpSink",
    "Recorder",
    "RecorderCollector",
    "RecorderLimits",
    "RecorderStatistics",
    "Sampler",
    "Sink",
    "SpanRecord",
    "destination",
    "format_baggage",
    "format_traceparent",
    "parse_baggage",
    "parse_traceparent",
    "parse_traceparents",
    "parse_tracestate",
]
