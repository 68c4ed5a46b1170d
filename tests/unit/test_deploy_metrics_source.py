"""The canary analysis's figures, read from the instances' own Prometheus metrics."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

import pytest
from fastapi import FastAPI, Response
from hypothesis import given
from hypothesis import strategies as st

from meshkit import Service
from meshkit.deploy._metrics_source import ScrapeTarget, Totals, scrape, window
from meshkit.errors import InvalidArgumentError
from meshkit.http import HTTPClient, HTTPServer, Request, json_response
from meshkit.http import Response as HTTPResponse
from meshkit.policy import Window
from meshkit.proxy import CONTENT_TYPE, Exchange, ProxyMetrics
from meshkit.registry import EmbeddedRegistry
from meshkit.sidecar import METRICS_PATH as SIDECAR_METRICS
from meshkit.testing.servers import free_port

INF = math.inf
A = ScrapeTarget("127.0.0.1", 8101, "/-/metrics", "service")
B = ScrapeTarget("127.0.0.1", 8102, "/-/metrics", "service")


def counts(found: Window) -> tuple[int, int]:
    return found.requests, found.failures


def totals(requests: int, failures: int, *buckets: tuple[float, int]) -> Totals:
    return Totals(requests, failures, buckets)


# ---- the window: pure ----


def test_the_window_sums_what_each_instance_served_in_between() -> None:
    """Each instance's later reading minus its earlier one, summed over the instances."""
    before = {A: totals(10, 1, (0.1, 10), (INF, 10)), B: totals(5, 0, (0.1, 5), (INF, 5))}
    after = {A: totals(40, 3, (0.1, 40), (INF, 40)), B: totals(15, 2, (0.1, 15), (INF, 15))}
    found = window(before, after)
    assert counts(found) == (40, 4)
    assert found.p99 == pytest.approx(0.099)  # 39.6 of 40 within the first bucket, [0, 0.1]


def test_a_restarted_instance_counts_from_zero() -> None:
    """A counter that went down means a restart: all of the later reading was served since."""
    before = {A: totals(100, 5, (0.1, 100), (INF, 100)), B: totals(5, 0, (0.1, 5), (INF, 5))}
    after = {A: totals(7, 1, (0.1, 7), (INF, 7)), B: totals(8, 0, (0.1, 8), (INF, 8))}
    assert counts(window(before, after)) == (10, 1)


def test_a_histogram_that_went_down_alone_is_a_restart_too() -> None:
    """Requests up but a bucket down: the instance restarted and served more since."""
    before = {A: totals(10, 0, (0.1, 10), (INF, 10))}
    after = {A: totals(12, 0, (0.1, 2), (INF, 12))}
    found = window(before, after)
    assert found.requests == 12
    assert found.p99 == pytest.approx(0.1)  # beyond 0.1 for 10 of 12: the highest finite bound


def test_a_restart_that_served_as_many_again_is_seen_by_its_failures() -> None:
    """As many requests as before, fewer of them successes: the instance restarted."""
    before = {A: totals(10, 0, (0.1, 10), (INF, 10))}
    after = {A: totals(10, 3, (0.1, 10), (INF, 10))}
    assert counts(window(before, after)) == (10, 3)


def test_an_instance_read_only_once_counts_what_is_known_of_the_interval() -> None:
    """One that started between the two readings (or was not up at the first) served all
    it counts in between; one that stopped in between adds nothing known."""
    before = {A: totals(10, 0, (0.1, 10), (INF, 10)), B: totals(50, 50, (0.1, 50), (INF, 50))}
    started = ScrapeTarget("127.0.0.1", 8103, "/-/metrics", "service")
    after = {A: totals(30, 2, (0.1, 30), (INF, 30)), started: totals(9, 9, (0.1, 9), (INF, 9))}
    assert counts(window(before, after)) == (29, 11)


def test_the_p99_interpolates_within_its_bucket_as_prometheus_does() -> None:
    """Rank 99 of 100 falls in (0.1, 0.2] holding ranks 51 to 100: 0.1 + 0.1 * 49/50."""
    after = {A: totals(100, 0, (0.05, 20), (0.1, 50), (0.2, 100), (0.5, 100), (INF, 100))}
    assert window({A: totals(0, 0)}, after).p99 == pytest.approx(0.198)


def test_a_p99_beyond_the_last_finite_bound_is_that_bound() -> None:
    """When the rank falls in the +Inf bucket, the highest finite bound is all that is known."""
    after = {A: totals(100, 0, (0.1, 50), (0.5, 90), (INF, 100))}
    assert window({A: totals(0, 0)}, after).p99 == 0.5


def test_no_requests_make_no_p99() -> None:
    """Nothing served in between: zero requests and a NaN p99, which judge fails."""
    same = {A: totals(10, 1, (0.1, 10), (INF, 10))}
    found = window(same, same)
    assert counts(found) == (0, 0)
    assert found.p99 is None
    assert window({}, {}).p99 is None


_BOUNDS = (0.005, 0.01, 0.1, 1.0, INF)


@st.composite
def readings(draw: st.DrawFn) -> dict[ScrapeTarget, Totals]:
    """Up to two instances' readings, each a consistent cumulative histogram."""
    found = {}
    for target in draw(st.sets(st.sampled_from([A, B]))):
        per_bucket = draw(st.lists(st.integers(0, 50), min_size=5, max_size=5))
        cumulative = [sum(per_bucket[: i + 1]) for i in range(5)]
        requests = cumulative[-1]
        failures = draw(st.integers(0, requests))
        found[target] = Totals(requests, failures, tuple(zip(_BOUNDS, cumulative, strict=True)))
    return found


@given(readings(), readings())
def test_any_two_readings_make_a_sane_window(
    before: dict[ScrapeTarget, Totals], after: dict[ScrapeTarget, Totals]
) -> None:
    """Never a negative count, more failures than requests, or a p99 outside the bounds."""
    found = window(before, after)
    assert 0 <= found.failures <= found.requests
    if found.requests == 0:
        assert found.p99 is None
    else:
        assert 0 <= found.p99 <= 1.0


def test_a_target_names_a_kind_and_a_path() -> None:
    """An unknown kind or a relative path is refused, naming the field."""
    with pytest.raises(InvalidArgumentError, match="kind: must be 'service' or 'sidecar'"):
        ScrapeTarget("127.0.0.1", 8101, "/-/metrics", "gateway")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="path: must begin with '/'"):
        ScrapeTarget("127.0.0.1", 8101, "metrics", "service")


# ---- reading real instances ----


def orders() -> FastAPI:
    api = FastAPI()

    @api.get("/orders/{n}")
    async def order(n: int) -> Response:
        return Response(status_code=500 if n == 0 else 200)

    @api.get("/-/version")  # the app's own, under the prefix of the health checks
    async def version() -> dict[str, str]:
        return {"version": "2"}

    return api


async def until(condition: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (the heartbeat's thread sets it: no event)
            await asyncio.sleep(0.01)  # noqa: TID251 (polling, bounded by the timeout)


@pytest.fixture
async def services() -> AsyncIterator[list[Service]]:
    """Two instances of one Service, serving on free ports and registered."""
    registry = EmbeddedRegistry()
    registry.start()
    running = [
        Service(orders(), name="orders", registry=registry, telemetry=False, drain_timeout=1)
        for _ in range(2)
    ]
    loop = asyncio.get_running_loop()
    serving = [loop.create_task(service.serve()) for service in running]
    try:
        await until(lambda: all(service.ready for service in running), 10)
        yield running
    finally:
        for service in running:
            service.stop()
        async with asyncio.timeout(10):
            await asyncio.gather(*serving)
        await registry.aclose()


async def test_services_read_over_http_count_their_traffic(services: list[Service]) -> None:
    """Answers, 500s among them, are counted; health checks and /-/ routes are not."""
    targets = [ScrapeTarget(s.host, s.port, "/-/metrics", "service") for s in services]
    stopped = ScrapeTarget("127.0.0.1", free_port(), "/-/metrics", "service")
    async with HTTPClient() as http:
        before = await scrape([*targets, stopped], http)
        assert set(before) == set(targets)  # the stopped one is left out, not an error
        for service, (ok, failed) in zip(services, [(6, 2), (3, 1)], strict=True):
            paths = ["/orders/1"] * ok + ["/orders/0"] * failed
            paths += ["/-/ready", "/-/live", "/-/version"] * 3
            for path in paths:
                await http.request("GET", service.host, service.port, path)
        after = await scrape([*targets, stopped], http)
    found = window(before, after)
    assert counts(found) == (12, 3)
    assert 0 < found.p99 <= 30


def exchange(route: str | None, status: int, duration: float = 0.02) -> Exchange:
    return Exchange(
        request_id="r",
        method="GET",
        path="/",
        client="127.0.0.1:50000",
        status=status,
        duration=duration,
        received=0,
        sent=0,
        upstream="127.0.0.1:9000" if route else None,
        route=route,
        service=None,
        error=None if status else "the app did not answer",
    )


async def test_a_sidecars_inbound_metrics_count_the_apps_traffic() -> None:
    """Inbound answers count, 5xx and no answer (0) as failures; its own answers and
    outbound calls do not; a path with no metrics, or no text format, is left out."""
    inbound = ProxyMetrics(None, prefix="meshkit_sidecar_inbound")
    outbound = ProxyMetrics(None, prefix="meshkit_sidecar_outbound", registry=inbound.registry)

    def handler(request: Request) -> HTTPResponse:
        if request.path == SIDECAR_METRICS:
            return HTTPResponse(200, [(b"content-type", CONTENT_TYPE)], inbound.exposition())
        return json_response(200 if request.path == "/json" else 404, {})

    for status in (200, 200, 0):
        inbound.observe(exchange("inbound", status))
    server = HTTPServer(handler)
    host, port = await server.start()
    try:
        sidecar = ScrapeTarget(host, port, SIDECAR_METRICS, "sidecar")
        elsewhere = [ScrapeTarget(host, port, path, "sidecar") for path in ("/metrics", "/json")]
        async with HTTPClient() as http:
            before = await scrape([sidecar, *elsewhere], http)
            assert list(before) == [sidecar]
            for status in [200] * 10 + [502, 0]:
                inbound.observe(exchange("inbound", status))
            for _ in range(5):  # its readiness path and scrapes: the sidecar's own answers
                inbound.observe(exchange(None, 200))
            outbound.observe(exchange("payments", 503))
            after = await scrape([sidecar], http)
    finally:
        await server.aclose(grace=0)
    found = window(before, after)
    assert counts(found) == (12, 2)
    # All 12 took 20 ms, in (0.01, 0.025]: rank 11.88 of 12 is 0.99 of the way through.
    assert found.p99 == pytest.approx(0.01 + 0.015 * 0.99)
