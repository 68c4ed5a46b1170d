"""A recorder's counts (or the SDK export queues') as Prometheus metrics, read at each scrape.

``<prefix>_telemetry_records_total{signal, outcome}``: spans and log
records exported, dropped because the queue was full, or failed (sent and
not taken); ``<prefix>_telemetry_queued{signal}``: waiting now. Dropped
telemetry is thereby visible where the process's other metrics are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshkit.observe._recorder import Recorder, RecorderStatistics
from meshkit.observe._setup import Telemetry

__all__ = ["RecorderCollector", "TelemetryCollector"]


class RecorderCollector(Collector):
    """Register it on a ``CollectorRegistry`` beside the process's own metrics."""

    def __init__(self, recorder: Recorder, prefix: str) -> None:
        self._recorder = recorder
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        yield from _families(self._recorder.statistics(), self._prefix)


class TelemetryCollector(Collector):
    """The same metrics for the SDK's export queues of ``telemetry()`` (``None``: not set up)."""

    def __init__(self, telemetry: Callable[[], Telemetry | None], prefix: str) -> None:
        self._telemetry = telemetry
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        telemetry = self._telemetry()
        if telemetry is None:
            return
        found = telemetry.statistics()
        queues = {
            signal: queue
            for signal, queue in (("spans", found.spans), ("logs", found.logs))
            if queue is not None
        }
        yield from _families(
            RecorderStatistics(
                exported={signal: q.exported for signal, q in queues.items()},
                dropped={signal: q.dropped for signal, q in queues.items()},
                failed={signal: q.failed for signal, q in queues.items()},
                queued={signal: q.queued for signal, q in queues.items()},
            ),
            self._prefix,
        )


def _families(statistics: RecorderStatistics, prefix: str) -> Iterator[Metric]:
    records = CounterMetricFamily(
        f"{prefix}_telemetry_records",
        "Spans and log records by outcome: exported, dropped (queue full), failed (refused).",
        labels=["signal", "outcome"],
    )
    for outcome, counts in (
        ("exported", statistics.exported),
        ("dropped", statistics.dropped),
        ("failed", statistics.failed),
    ):
        for signal, count in sorted(counts.items()):
            records.add_metric([signal, outcome], float(count))
    yield records
    queued = GaugeMetricFamily(
        f"{prefix}_telemetry_queued",
        "Spans and log records waiting to be exported.",
        labels=["signal"],
    )
    for signal, count in sorted(statistics.queued.items()):
        queued.add_metric([signal], float(count))
    yield queued
