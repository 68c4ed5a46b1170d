"""``Ready``: a proxy's own readiness check, answered before any other filter."""

from __future__ import annotations

from collections.abc import Callable

from meshkit.proxy._chain import RequestOnly
from meshkit.proxy._message import ProxyRequest, ProxyResponse, error_response

__all__ = ["Ready"]


class Ready(RequestOnly):
    """``path`` answers 200 while ``ready()`` says so, else 503 with ``why_not``.

    What ``meshkit up`` waits on: the gateway's is ready as soon as it
    listens; the sidecar's once its app is registered.
    """

    def __init__(
        self, path: str, ready: Callable[[], bool] | None = None, why_not: str = "not ready"
    ) -> None:
        self._path = path
        self._ready = ready
        self._why_not = why_not

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        if request.path != self._path:
            return None
        if self._ready is None or self._ready():
            return ProxyResponse(200, [(b"content-type", b"text/plain")], b"ready\n")
        return error_response(503, self._why_not, request.request_id)
