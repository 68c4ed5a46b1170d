"""A recorder's counts as Prometheus metrics, read at each scrape.

``<prefix>_telemetry_records_total{signal, outcome}``: spans and log
records exported, dropped because the queue was full, or failed (sent and
not taken); ``<prefix>_telemetry_queued{signal}``: waiting now. Dropped
telemetry is thereby visible where the process's other metrics are.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from meshkit.observe._recorder import Recorder

__all__ = ["RecorderCollector"]


class RecorderCollector(Collector):
    """Register it on a ``CollectorRegistry`` beside the process's own metrics."""

    def __init__(self, recorder: Recorder, prefix: str) -> None:
        self._recorder = recorder
        self._prefix = prefix

    def collect(self) -> Iterator[Metric]:
        statistics = self._recorder.statistics()
        records = CounterMetricFamily(
            f"{self._prefix}_telemetry_records",
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
            f"{self._prefix}_telemetry_queued",
            "Spans and log records waiting to be exported.",
            labels=["signal"],
        )
        for signal, count in sorted(statistics.queued.items()):
            queued.add_metric([signal], float(count))
        yield queued
