"""The sidecar's filters: to the app (inbound), by service name (outbound), and its metrics."""

from __future__ import annotations

from collections.abc import Callable

from meshkit.errors import ConfigError
from meshkit.proxy import CONTENT_TYPE, ProxyRequest, ProxyResponse, RequestOnly, error_response
from meshkit.registry import check_name

__all__ = ["METRICS_PATH", "READY_PATH", "ByName", "Metrics", "ToApp"]

METRICS_PATH = "/.meshkit/metrics"  # on the outbound port: no service name starts with "."
# On the inbound port: 200 once the app is registered (the app answering is
# not enough: callers find it only once it is in the registry).
READY_PATH = "/.meshkit/sidecar/ready"


class ToApp(RequestOnly):
    """Inbound: every request goes to the app."""

    def __init__(self, app: tuple[str, int]) -> None:
        self._app = app

    def on_request(self, request: ProxyRequest) -> None:
        request.upstream = self._app
        request.route = "inbound"


class ByName(RequestOnly):
    """Outbound: ``/<service>/<path>`` goes to ``<path>`` on an instance of ``<service>``."""

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        service, slash, rest = request.path[1:].partition("/")
        try:
            check_name("service", service)
        except ConfigError as error:
            return error_response(
                400,
                f"outbound requests go to /<service>/<path>; {error.problem}, got {service!r}",
                request.request_id,
            )
        request.service = service
        request.route = service
        request.path = slash + rest if slash else "/"
        return None


class Metrics(RequestOnly):
    """``GET /.meshkit/metrics``: the sidecar's Prometheus metrics."""

    def __init__(self, exposition: Callable[[], bytes]) -> None:
        self._exposition = exposition

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        if request.path != METRICS_PATH:
            return None
        return ProxyResponse(200, [(b"content-type", CONTENT_TYPE)], self._exposition())
