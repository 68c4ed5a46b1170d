"""The canary analysis at scale: the same figures, as PromQL against a Prometheus server.

The Prometheus scrapes the instances through the control plane's HTTP
service discovery, which labels each target with its ``service`` and
``version``: a version's requests, failures and p99 over an interval are
then three instant queries at the interval's end, over its length, on the
same series ``_metrics_source`` reads from the instances themselves (the
same routes left out, the same failures counted). ``increase()``
extrapolates to the interval's edges, so counts are rounded.
"""

from __future__ import annotations

import math
from urllib.parse import urlencode, urlsplit

import msgspec

from meshkit.deploy._metrics_source import ROUTES, SERIES, Kind
from meshkit.errors import ConfigError, DeadlineExceededError, EnvironmentFaultError, PeerError
from meshkit.http import HTTPClient, Timeouts
from meshkit.policy import Window

__all__ = ["PrometheusSource"]


class _Sample(msgspec.Struct):
    value: tuple[float, str]


class _Data(msgspec.Struct):
    resultType: str  # noqa: N815 (Prometheus's field)
    result: list[_Sample]


class _Answer(msgspec.Struct):
    status: str
    data: _Data | None = None
    error: str = ""


class PrometheusSource:
    """Windows of one version of a service, read from the Prometheus at ``url``."""

    def __init__(self, url: str, http: HTTPClient) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError("deploy.analysis.prometheus", f"must be an http:// URL, got {url!r}")
        self.url = url.rstrip("/")
        self._host, self._port = parts.hostname, parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._http = http

    async def window(
        self, service: str, version: str, kind: Kind, since: float, until: float
    ) -> Window:
        """What ``version`` of ``service`` served from ``since`` to ``until`` (Unix seconds)."""
        counter, buckets, failing = SERIES[kind]
        labels = f'service="{_quoted(service)}",version="{_quoted(version)}",{ROUTES}'
        span = f"[{max(1, round(until - since))}s]"
        requests = await self._value(f"sum(increase({counter}{{{labels}}}{span}))", until)
        failed = f"{labels},{failing}"
        failures = await self._value(f"sum(increase({counter}{{{failed}}}{span}))", until)
        p99 = await self._value(
            f"histogram_quantile(0.99, sum by (le) (increase({buckets}{{{labels}}}{span})))",
            until,
        )
        counted = round(0.0 if math.isnan(requests) else requests)
        return Window(
            requests=counted,
            failures=min(counted, round(0.0 if math.isnan(failures) else failures)),
            p99=p99 if counted and not math.isnan(p99) else None,
        )

    async def _value(self, promql: str, at: float) -> float:
        """An instant query's one value (NaN when it has none)."""
        target = f"{self._prefix}/api/v1/query?" + urlencode({"query": promql, "time": f"{at}"})
        try:
            response = await self._http.request(
                "GET",
                self._host,
                self._port,
                target,
                timeouts=Timeouts(connect=2.0, read=10.0),
            )
            answer = msgspec.json.decode(response.body, type=_Answer)
        except (PeerError, DeadlineExceededError) as error:
            raise EnvironmentFaultError(f"Prometheus at {self.url}: {error}") from error
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise EnvironmentFaultError(
                f"Prometheus at {self.url} answered {response.status} with something else"
                f" than a query's result: {error}"
            ) from error
        if answer.status != "success" or answer.data is None:
            raise EnvironmentFaultError(f"Prometheus at {self.url}: {answer.error or 'failed'}")
        if not answer.data.result:
            return math.nan
        return float(answer.data.result[0].value[1])


def _quoted(value: str) -> str:
    """``value`` inside a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
