"""The export queue: batches, counts what it drops and what fails, never blocks a put."""

import threading
from collections.abc import Sequence

from meshkit.observe import ExportQueue, QueueStatistics


def test_items_go_out_in_batches_on_flush() -> None:
    batches: list[list[int]] = []
    queue: ExportQueue[int] = ExportQueue(
        lambda batch: batches.append(list(batch)) is None, what="numbers", batch=4, delay=60
    )
    for n in range(10):
        queue.put(n)
    assert queue.flush(5)
    queue.close()
    assert [n for batch in batches for n in batch] == list(range(10))
    assert max(len(batch) for batch in batches) <= 4
    assert queue.statistics() == QueueStatistics(queued=0, exported=10, dropped=0, failed=0)


def test_a_full_queue_drops_and_counts_instead_of_blocking() -> None:
    entered, release = threading.Event(), threading.Event()

    def stalled(batch: Sequence[int]) -> bool:
        entered.set()
        release.wait(5)
        return True

    queue: ExportQueue[int] = ExportQueue(stalled, what="numbers", size=3, batch=1, delay=0.01)
    queue.put(0)
    assert entered.wait(5)  # the first batch is stuck in the exporter
    assert not queue.flush(0.01)
    for n in range(1, 10):
        queue.put(n)
    release.set()
    queue.close()
    stats = queue.statistics()
    assert stats.dropped == 6
    assert stats.exported == 4


def test_a_destination_that_fails_or_raises_is_counted_and_survived() -> None:
    outcomes = iter([False, RuntimeError("boom"), True])

    def export(batch: Sequence[int]) -> bool:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    queue: ExportQueue[int] = ExportQueue(export, what="numbers", batch=1, delay=60)
    for n in range(3):
        queue.put(n)
        assert queue.flush(5)
    queue.close()
    assert queue.statistics() == QueueStatistics(queued=0, exported=1, dropped=0, failed=2)


def test_a_closed_queue_drops() -> None:
    queue: ExportQueue[int] = ExportQueue(lambda batch: True, what="numbers")
    queue.close()
    queue.put(1)
    assert queue.statistics().dropped == 1


def test_the_sdk_queues_counts_are_prometheus_metrics() -> None:
    """What a process's export queues dropped or failed is in its /metrics."""
    from prometheus_client import CollectorRegistry, generate_latest

    from meshkit.observe import Telemetry, TelemetryCollector

    spans: ExportQueue[int] = ExportQueue(lambda batch: False, what="spans", size=1, batch=1)
    spans.put(1)
    assert spans.flush(5)
    spans.put(2)
    spans.put(3)  # the queue holds one: dropped, unless the worker took the first already
    spans.close()
    registry = CollectorRegistry()
    registry.register(TelemetryCollector(lambda: Telemetry(spans, None, None), "meshkit"))
    text = generate_latest(registry).decode()
    stats = spans.statistics()
    assert (
        f'meshkit_telemetry_records_total{{outcome="failed",signal="spans"}} {stats.failed}.0'
        in text
    )
    assert (
        f'meshkit_telemetry_records_total{{outcome="dropped",signal="spans"}} {stats.dropped}.0'
        in text
    )
    assert stats.failed >= 1
    assert 'meshkit_telemetry_queued{signal="spans"} 0.0' in text
