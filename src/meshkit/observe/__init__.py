"""Observability: traces, logs and metrics, and where they are sent.

Every meshkit process sends its spans and log records over OTLP/HTTP to the
control plane by default, or to any OpenTelemetry collector named by the
standard ``OTEL_EXPORTER_OTLP_*`` variables (``destination``);
``start_telemetry`` sets a process up to do so, once.
"""

from meshkit.observe._destination import (
    Destination,
    Endpoint,
    Identity,
    destination,
    standard_variables,
)
from meshkit.observe._logs import LIFECYCLE, OTLPHandler, console_handler, install_record_fields
from meshkit.observe._queue import ExportQueue, QueueStatistics
from meshkit.observe._setup import Telemetry, TelemetryStatistics, start_telemetry
from meshkit.observe._tracer import tracer

__all__ = [
    "LIFECYCLE",
    "Destination",
    "Endpoint",
    "ExportQueue",
    "Identity",
    "OTLPHandler",
    "QueueStatistics",
    "Telemetry",
    "TelemetryStatistics",
    "console_handler",
    "destination",
    "install_record_fields",
    "standard_variables",
    "start_telemetry",
    "tracer",
]
