"""The canary analysis's one interface: each source chosen by the settings, and the
instances' own counters split between the canary and the stable version."""

from __future__ import annotations

from meshkit.deploy import ServiceConfig
from meshkit.deploy._analysis_sources import InstanceMetrics, PrometheusMetrics, source_for
from meshkit.deploy._replica import Replica
from meshkit.http import HTTPClient, HTTPServer, Request, Response
from meshkit.policy import AnalysisConfig, CanaryConfig, Rollout
from meshkit.proxy import CONTENT_TYPE

ROLLOUT = Rollout(
    service="payments",
    config=CanaryConfig(),
    stable_version="1.0.0",
    candidate_version="1.1.0",
    stable_replicas=1,
    replicas=1,
    started_at=0.0,
)


def exposition(ok: int, failed: int) -> bytes:
    """A Service's request counter and duration histogram, all requests under 10 ms."""
    total, labels = ok + failed, 'route="/pay",method="POST"'
    lines = [
        f'meshkit_service_requests_total{{{labels},code="201"}} {ok}',
        f'meshkit_service_requests_total{{{labels},code="500"}} {failed}',
        f'meshkit_service_request_duration_seconds_bucket{{{labels},le="0.01"}} {total}',
        f'meshkit_service_request_duration_seconds_bucket{{{labels},le="+Inf"}} {total}',
    ]
    return ("\n".join(lines) + "\n").encode()


class Instance:
    """An HTTP server whose counters grow by ``ok`` and ``failed`` at each reading."""

    def __init__(self, ok: int, failed: int) -> None:
        self.readings = 0
        self.step = (ok, failed)
        self.server = HTTPServer(self.handle)

    def handle(self, request: Request) -> Response:
        self.readings += 1
        ok, failed = self.step
        body = exposition(ok * self.readings, failed * self.readings)
        return Response(200, [(b"content-type", CONTENT_TYPE)], body)


def replica(name: str, port: int, *, candidate: bool) -> Replica:
    config = ServiceConfig(app="pay:app", version="1.1.0" if candidate else "1.0.0")
    return Replica("payments", name, port, config, None, None, candidate, 0.0)  # type: ignore[arg-type]


async def test_the_instances_counters_split_between_canary_and_stable() -> None:
    canary, stable = Instance(ok=7, failed=3), Instance(ok=40, failed=0)
    _, canary_port = await canary.server.start()
    _, stable_port = await stable.server.start()
    fleet = [
        replica("payments-1", stable_port, candidate=False),
        replica("payments-2", canary_port, candidate=True),
    ]
    try:
        async with HTTPClient() as http:
            source = source_for(AnalysisConfig(), http)
            assert isinstance(source, InstanceMetrics)
            mark = await source.begin(fleet)
            found = await source.windows(mark, fleet, ROLLOUT, 0.0, 10.0)
    finally:
        await canary.server.aclose(grace=0)
        await stable.server.aclose(grace=0)
    (canary_window, stable_window) = found
    assert (canary_window.requests, canary_window.failures) == (10, 3)
    assert (stable_window.requests, stable_window.failures) == (40, 0)


async def test_a_prometheus_url_chooses_promql() -> None:
    async with HTTPClient() as http:
        source = source_for(AnalysisConfig(prometheus="http://127.0.0.1:9090"), http)
        assert isinstance(source, PrometheusMetrics)
        assert await source.begin([]) == {}
