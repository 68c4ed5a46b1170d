"""Observability: traces, logs and metrics, and where they are sent.

Every meshkit process sends its spans and log records over OTLP/HTTP to the
control plane by default, or to any OpenTelemetry collector named by the
standard ``OTEL_EXPORTER_OTLP_*`` variables (``destination``). The control
plane keeps them in a ``TelemetryStore`` and answers queries of it.
"""

from meshkit.observe._destination import Destination, Endpoint, Identity, destination
from meshkit.observe._retention import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE, Retention
from meshkit.observe._store import Purged, StoreStatistics, TelemetryStore, keep_retention
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

__all__ = [
    "DEFAULT_MAX_AGE",
    "DEFAULT_MAX_SIZE",
    "Destination",
    "Endpoint",
    "Identity",
    "LogPage",
    "LogQuery",
    "LogView",
    "Purged",
    "Retention",
    "SpanView",
    "StoreStatistics",
    "TelemetryStore",
    "TraceList",
    "TraceQuery",
    "TraceSummary",
    "TraceView",
    "destination",
    "keep_retention",
    "parse_duration",
    "parse_level",
    "parse_size",
]
