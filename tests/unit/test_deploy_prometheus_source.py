"""The canary analysis's PromQL: the queries asked of Prometheus, and its answers read."""

from __future__ import annotations

from urllib.parse import parse_qs

import pytest

from meshkit.deploy._prometheus_source import PrometheusSource
from meshkit.errors import ConfigError, EnvironmentFaultError
from meshkit.http import HTTPClient, HTTPServer, Request, Response, json_response
from meshkit.policy import AnalysisConfig
from meshkit.testing.servers import free_port


def vector(value: str | None) -> dict[str, object]:
    result = [] if value is None else [{"metric": {}, "value": [1000.0, value]}]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


async def test_a_version_s_window_is_three_queries_on_its_labels() -> None:
    asked: list[tuple[str, str]] = []
    answers = iter(["41.7", "12.2", "0.35"])

    def handler(request: Request) -> Response:
        params = parse_qs(request.query)
        asked.append((params["query"][0], params["time"][0]))
        return json_response(200, vector(next(answers)))

    server = HTTPServer(handler)
    _, port = await server.start()
    try:
        async with HTTPClient() as http:
            source = PrometheusSource(f"http://127.0.0.1:{port}", http)
            found = await source.window("payments", '1."1"', "service", 970.0, 1000.0)
    finally:
        await server.aclose(grace=0)
    assert (found.requests, found.failures, found.p99) == (42, 12, 0.35)
    labels = 'service="payments",version="1.\\"1\\"",route!~"(/-/.*)?"'
    assert asked == [
        (f"sum(increase(meshkit_service_requests_total{{{labels}}}[30s]))", "1000.0"),
        (
            f'sum(increase(meshkit_service_requests_total{{{labels},code=~"5.."}}[30s]))',
            "1000.0",
        ),
        (
            "histogram_quantile(0.99, sum by (le) (increase("
            f"meshkit_service_request_duration_seconds_bucket{{{labels}}}[30s])))",
            "1000.0",
        ),
    ]


async def test_no_series_is_no_requests_and_a_broken_prometheus_an_environment_fault() -> None:
    def empty(request: Request) -> Response:
        return json_response(200, vector(None))

    server = HTTPServer(empty)
    _, port = await server.start()
    try:
        async with HTTPClient() as http:
            nothing = await PrometheusSource(f"http://127.0.0.1:{port}", http).window(
                "echo", "2", "sidecar", 0.0, 10.0
            )
            assert (nothing.requests, nothing.failures) == (0, 0)
            assert nothing.p99 is None
            with pytest.raises(EnvironmentFaultError, match=r"Prometheus at http://127\.0\.0\.1"):
                await PrometheusSource(f"http://127.0.0.1:{free_port()}", http).window(
                    "echo", "2", "service", 0.0, 10.0
                )
    finally:
        await server.aclose(grace=0)


def test_the_prometheus_url_is_checked_where_it_is_written() -> None:
    with pytest.raises(ConfigError, match="must be an http:// URL") as caught:
        AnalysisConfig(prometheus="prometheus:9090")
    assert caught.value.key == "deploy.analysis.prometheus"
    assert AnalysisConfig(prometheus="http://127.0.0.1:9090").prometheus is not None
