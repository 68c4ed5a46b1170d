"""What a version's instances served over an interval, read from their own Prometheus metrics.

The canary analysis on one machine needs no Prometheus server: each
instance counts what it served since it started, so a rollout step reads
(``scrape``) the canary's and the stable version's instances when it
begins and when it ends, and ``window`` turns the two readings into the
``meshkit.policy.Window`` that ``judge`` compares.

Two kinds of instance are read. A meshkit Service serves
``meshkit_service_requests_total{route,method,code}`` and
``meshkit_service_request_duration_seconds`` (by route and method) at
``/-/metrics``. An app beside ``meshkit sidecar`` is measured by the
sidecar's inbound proxy, ``meshkit_sidecar_inbound_requests_total
{route,service,code}`` and ``meshkit_sidecar_inbound_request_duration_seconds``
(by route), served at ``/.meshkit/metrics`` on the port the registry lists.

Only the application's traffic counts, not the checks the supervisor
makes every second. A Service answers its health and readiness paths
before it counts anything, and the application's own routes under ``/-/``
are left out too. On a sidecar's inbound port, the requests with no route
are the ones the sidecar answered itself (its readiness path, the
scrape), never the app's, and are left out. A failure is a 5xx answer,
or code ``0``: the sidecar got no answer to relay.

The figures follow Prometheus's own: a count that only grows while an
instance runs going down between two readings means it restarted
(``rate()``'s counter reset), and the p99 is ``histogram_quantile(0.99,
...)`` over the summed bucket deltas.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, NamedTuple, get_args

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from meshkit.errors import DeadlineExceededError, InvalidArgumentError, PeerError
from meshkit.http import HTTPClient, Timeouts
from meshkit.policy import Window

__all__ = [
    "ROUTES",
    "SERIES",
    "Counts",
    "Kind",
    "ScrapeTarget",
    "Series",
    "Totals",
    "scrape",
    "window",
]

Kind = Literal["service", "sidecar"]


class Series(NamedTuple):
    """What one kind of instance counts its traffic in, as samples and as PromQL matchers."""

    requests: str  # the request counter's samples
    buckets: str  # the duration histogram's bucket samples
    failed: str  # PromQL: the codes of a failed answer


# The application's routes, in PromQL: not "" (a sidecar's own answers) nor
# under /-/ (health, readiness): what _counted below keeps.
ROUTES = 'route!~"(/-/.*)?"'
SERIES: dict[Kind, Series] = {
    "service": Series(
        "meshkit_service_requests_total",
        "meshkit_service_request_duration_seconds_bucket",
        'code=~"5.."',
    ),
    "sidecar": Series(
        "meshkit_sidecar_inbound_requests_total",
        "meshkit_sidecar_inbound_request_duration_seconds_bucket",
        'code=~"5..|0"',
    ),
}

# Loopback scrapes answer in milliseconds: an instance silent this long is
# stopped or hung, and the reading goes on without it.
_TIMEOUTS = Timeouts(connect=1.0, read=2.0, total=3.0)
# The classic text format, the one prometheus_client's parser reads (a
# Service would answer OpenMetrics if asked for it).
_ACCEPT = [(b"accept", b"text/plain; version=0.0.4")]


class ScrapeTarget(msgspec.Struct, frozen=True):
    """One instance to read: where it serves its metrics, and which kind it is.

    ``path`` is what the instance registered as its ``metrics_path``.
    Raises ``InvalidArgumentError`` for an unknown ``kind`` or a path that
    does not begin with ``/``.
    """

    host: str
    port: int
    path: str
    kind: Kind

    def __post_init__(self) -> None:
        if self.kind not in get_args(Kind):
            raise InvalidArgumentError("kind", f"must be 'service' or 'sidecar', got {self.kind!r}")
        if not self.path.startswith("/"):
            raise InvalidArgumentError("path", f"must begin with '/', got {self.path!r}")


class Totals(msgspec.Struct, frozen=True):
    """What one instance had served since it started, when it was read.

    ``buckets`` is the duration histogram, cumulative as Prometheus keeps
    it: ``(upper bound in seconds, requests that took at most that)``,
    ascending, ``inf`` last.
    """

    requests: int
    failures: int
    buckets: tuple[tuple[float, int], ...]


Counts = Mapping[ScrapeTarget, Totals]


async def scrape(
    targets: Iterable[ScrapeTarget], http: HTTPClient, *, timeouts: Timeouts = _TIMEOUTS
) -> dict[ScrapeTarget, Totals]:
    """Read each target once, all at the same time.

    A target that cannot be read (not listening, too slow, not answering
    200, or answering something that is not the text format) is left out
    of the result: it stopped, or has not started yet.
    """
    async with asyncio.TaskGroup() as group:
        reading = {
            target: group.create_task(_read(target, http, timeouts)) for target in set(targets)
        }
    read = {target: task.result() for target, task in reading.items()}
    return {target: totals for target, totals in read.items() if totals is not None}


async def _read(target: ScrapeTarget, http: HTTPClient, timeouts: Timeouts) -> Totals | None:
    try:
        response = await http.request(
            "GET", target.host, target.port, target.path, headers=_ACCEPT, timeouts=timeouts
        )
        if response.status != 200:
            return None
        return _parse(response.text, target.kind)
    # ValueError: not the text format; OverflowError: a count that is infinite.
    except (PeerError, DeadlineExceededError, ValueError, OverflowError):
        return None


def _parse(text: str, kind: Kind) -> Totals:
    """The totals of the application's traffic in an exposition of ``kind``.

    Raises ``ValueError`` if ``text`` is not in Prometheus's text format.
    """
    requests_name, buckets_name, _ = SERIES[kind]
    requests = failures = 0
    buckets: dict[float, int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not _counted(sample.labels.get("route", "")):
                continue
            if sample.name == requests_name:
                served = round(sample.value)
                requests += served
                if _failed(sample.labels.get("code", "")):
                    failures += served
            elif sample.name == buckets_name:
                bound = float(sample.labels.get("le", ""))  # a bucket without one: ValueError
                buckets[bound] = buckets.get(bound, 0) + round(sample.value)
    return Totals(requests, failures, tuple(sorted(buckets.items())))


def _counted(route: str) -> bool:
    return route != "" and not route.startswith("/-/")


def _failed(code: str) -> bool:
    return code == "0" or code.startswith("5")


def window(before: Counts, after: Counts) -> Window:
    """What the instances served in between, summed.

    An instance read only the second time started in between (or was not
    up yet at the first reading): all it served counts, since it was all in
    between. One read only the first time stopped in between: what it
    served before it stopped is not known, and is left out. The p99 is
    ``None`` without requests, and the highest finite bucket bound when it
    lies beyond it. Buckets are summed bound by bound: the
    instances of one version run the same code, so they share the bounds.
    """
    requests = failures = 0
    buckets: dict[float, int] = {}
    for target, later in after.items():
        earlier = before.get(target)
        served = later if earlier is None else _served(earlier, later)
        requests += served.requests
        failures += served.failures
        for bound, count in served.buckets:
            buckets[bound] = buckets.get(bound, 0) + count
    p99 = _quantile(0.99, sorted(buckets.items()))
    return Window(requests, failures, None if math.isnan(p99) else p99)


def _served(before: Totals, after: Totals) -> Totals:
    """``after - before``; all of ``after`` if the instance restarted in between."""
    if _restarted(before, after):
        return after
    earlier = dict(before.buckets)
    buckets = tuple((bound, count - earlier.get(bound, 0)) for bound, count in after.buckets)
    return Totals(after.requests - before.requests, after.failures - before.failures, buckets)


def _restarted(before: Totals, after: Totals) -> bool:
    """Whether a count that only grows while an instance runs went down: its successes, its
    failures, or the requests in any one bucket (a restart that served as many requests
    again, but not the same ones, is seen too)."""
    later = _each_bucket(after)
    return (
        after.requests - after.failures < before.requests - before.failures
        or after.failures < before.failures
        or any(later.get(bound, 0) < count for bound, count in _each_bucket(before).items())
    )


def _each_bucket(totals: Totals) -> dict[float, int]:
    """The requests in each bucket alone: above the bound below, up to its own."""
    below = 0
    found = {}
    for bound, count in totals.buckets:
        found[bound] = count - below
        below = count
    return found


def _quantile(q: float, buckets: Sequence[tuple[float, int]]) -> float:
    """Prometheus's ``histogram_quantile`` (promql/quantile.go, ``bucketQuantile``) over
    cumulative ``buckets`` sorted by bound: linear within the bucket the rank falls in."""
    if len(buckets) < 2 or buckets[-1][0] != math.inf:
        return math.nan
    counts = [count for _, count in buckets]
    if counts[-1] == 0:
        return math.nan
    rank = q * counts[-1]
    at = next(i for i, count in enumerate(counts) if count >= rank)
    if at == len(buckets) - 1:  # beyond the last finite bound: all that can be said
        return buckets[-2][0]
    # Durations: the first bucket starts at zero.
    start, below = (0.0, 0) if at == 0 else (buckets[at - 1][0], counts[at - 1])
    end = buckets[at][0]
    return start + (end - start) * (rank - below) / (counts[at] - below)
