"""What every meshkit process's Prometheus metrics share: buckets, exemplars, the exposition.

Each component instance keeps its metrics in a ``CollectorRegistry`` of its
own (never prometheus_client's global one), so two of them in one process
(tests, a sidecar beside a service) do not share counters. A scrape gets
the OpenMetrics format when it asks for it in ``Accept`` (Prometheus does),
else the classic text format 0.0.4: exemplars, the trace ids on the
duration histograms, exist only in OpenMetrics.
"""

from __future__ import annotations

from opentelemetry import trace
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

__all__ = [
    "DURATION_BUCKETS",
    "OPENMETRICS",
    "TEXT",
    "exemplar",
    "exposition",
    "new_registry",
]

TEXT = CONTENT_TYPE_PLAIN_0_0_4.encode()
OPENMETRICS = openmetrics.CONTENT_TYPE_LATEST.encode()

# Seconds, from a millisecond (a cached answer) to 30 s (the SDK's default
# call timeout): prometheus_client's defaults stop at 10 s.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def new_registry() -> CollectorRegistry:
    """A registry for one component instance. ``auto_describe`` off: collectors are only
    asked for their metrics at a scrape."""
    return CollectorRegistry(auto_describe=False)


def exemplar() -> dict[str, str] | None:
    """``{"trace_id": ...}`` of the current OpenTelemetry span if it is valid and sampled.

    An unsampled trace is never stored, so an exemplar pointing at it
    would lead nowhere.
    """
    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": f"{context.trace_id:032x}"}


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, bytes]:
    """``(content type, body)`` of a scrape: OpenMetrics 1.0 when ``accept`` names it."""
    for part in accept.split(","):
        if part.split(";", 1)[0].strip().lower() == "application/openmetrics-text":
            # The OpenMetrics writer is unannotated in prometheus_client.
            return OPENMETRICS, openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    return TEXT, generate_latest(registry)
