"""Where a canary step's figures come from: one small interface, two sources.

A ``MetricsSource`` is asked twice per step: ``begin`` when the step's
interval starts (its candidates serving), and ``windows`` at its end, for
what the canary and the stable version served in between.

- ``InstanceMetrics``, on one machine: the instances' own counters
  (``_metrics_source``), read at both ends; what they hold at the start is
  the mark.
- ``PrometheusMetrics``, at scale: PromQL over the interval against a
  Prometheus that scrapes the instances (``_prometheus_source``); it keeps
  the history itself, so the start needs no reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from meshkit.deploy._metrics_source import Counts, Kind, ScrapeTarget, scrape, window
from meshkit.deploy._prometheus_source import PrometheusSource
from meshkit.deploy._replica import Replica
from meshkit.http import HTTPClient
from meshkit.policy import AnalysisConfig, Rollout, Window
from meshkit.service import METRICS_PATH as SERVICE_METRICS
from meshkit.sidecar import METRICS_PATH as SIDECAR_METRICS

__all__ = ["InstanceMetrics", "MetricsSource", "PrometheusMetrics", "source_for"]


class MetricsSource(Protocol):
    async def begin(self, replicas: Sequence[Replica]) -> Counts:
        """What to remember at the interval's start (nothing, for a source with history)."""
        ...

    async def windows(
        self,
        mark: Counts,
        replicas: Sequence[Replica],
        rollout: Rollout,
        since: float,
        until: float,
    ) -> tuple[Window, Window]:
        """What the canary and the stable version served from ``since`` to ``until``."""
        ...


class InstanceMetrics:
    """The instances' own counters, read at the interval's start and end."""

    def __init__(self, http: HTTPClient) -> None:
        self._http = http

    async def begin(self, replicas: Sequence[Replica]) -> Counts:
        return await scrape([_target(replica) for replica in replicas], self._http)

    async def windows(
        self,
        mark: Counts,
        replicas: Sequence[Replica],
        rollout: Rollout,  # noqa: ARG002 (the interface's: the instances say which is which)
        since: float,  # noqa: ARG002 (the readings are the interval's ends)
        until: float,  # noqa: ARG002
    ) -> tuple[Window, Window]:
        after = await scrape([_target(replica) for replica in replicas], self._http)
        candidates = {_target(replica) for replica in replicas if replica.candidate}
        canary = window(_of(mark, candidates, keep=True), _of(after, candidates, keep=True))
        stable = window(_of(mark, candidates, keep=False), _of(after, candidates, keep=False))
        return canary, stable


class PrometheusMetrics:
    """PromQL over the interval, by the service and version labels discovery gives."""

    def __init__(self, url: str, http: HTTPClient) -> None:
        self._source = PrometheusSource(url, http)

    async def begin(self, replicas: Sequence[Replica]) -> Counts:  # noqa: ARG002 (unread)
        return {}  # Prometheus keeps the history

    async def windows(
        self,
        mark: Counts,  # noqa: ARG002 (nothing was read at the start)
        replicas: Sequence[Replica],
        rollout: Rollout,
        since: float,
        until: float,
    ) -> tuple[Window, Window]:
        kind: Kind = "sidecar" if any(r.config.sidecar for r in replicas) else "service"
        service = rollout.service
        canary = await self._source.window(service, rollout.candidate_version, kind, since, until)
        stable = await self._source.window(service, rollout.stable_version, kind, since, until)
        return canary, stable


def source_for(config: AnalysisConfig, http: HTTPClient) -> MetricsSource:
    """The source ``config`` names: its Prometheus, else the instances themselves."""
    if config.prometheus:
        return PrometheusMetrics(config.prometheus, http)
    return InstanceMetrics(http)


def _target(replica: Replica) -> ScrapeTarget:
    """Where a replica's metrics are: a Service's own, or its sidecar's inbound ones."""
    if replica.config.sidecar:
        return ScrapeTarget("127.0.0.1", replica.port, SIDECAR_METRICS, "sidecar")
    return ScrapeTarget("127.0.0.1", replica.port, SERVICE_METRICS, "service")


def _of(counts: Counts, targets: set[ScrapeTarget], *, keep: bool) -> Counts:
    """The counts of ``targets`` (``keep``), or of every other instance."""
    return {target: totals for target, totals in counts.items() if (target in targets) == keep}
