"""Observability: traces, logs and metrics, and where they are sent.

Every meshkit process sends its spans and log records over OTLP/HTTP to the
control plane by default, or to any OpenTelemetry collector named by the
standard ``OTEL_EXPORTER_OTLP_*`` variables (``destination``).
"""

from meshkit.observe._destination import Destination, Endpoint, Identity, destination

__all__ = ["Destination", "Endpoint", "Identity", "destination"]
