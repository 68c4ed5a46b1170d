"""Saga runs in Prometheus: fed the runners' ``RunChange`` records (``SagaRunner.on_run``).

A run begun in one process may come to rest in another (its runner died
and another took it over): each process counts what happened in it, and
the sums over processes are the mesh's.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from meshkit.observe._prometheus import new_registry
from meshkit.saga._model import RunChange

__all__ = ["SagaMetrics"]

# Seconds, from a run of fast local steps to one waiting out minutes of retries.
_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class SagaMetrics:
    """``observe(change)`` per run begun or come to rest."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or new_registry()
        self._started = Counter(
            "meshkit_saga_runs_started",
            "Saga runs begun, by saga.",
            ["saga"],
            registry=self.registry,
        )
        self._ended = Counter(
            "meshkit_saga_runs_ended",
            "Saga runs that came to rest, by saga and status (completed, compensated, stuck).",
            ["saga", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "meshkit_saga_run_duration_seconds",
            "From a saga run's creation to its rest, by saga and status.",
            ["saga", "status"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def observe(self, change: RunChange) -> None:
        if change.status == "running":
            self._started.labels(change.saga).inc()
            return
        self._ended.labels(change.saga, change.status).inc()
        exemplar = None if change.trace_id is None else {"trace_id": change.trace_id}
        self._duration.labels(change.saga, change.status).observe(change.duration, exemplar)
