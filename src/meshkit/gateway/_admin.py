"""The gateway's admin API, on a listener of its own (127.0.0.1 unless told otherwise).

    GET  /admin/routes      the routes in force
    GET  /admin/breakers    each service's circuit breaker state
    GET  /admin/limits      tokens left per API key; the global limits and their store
    GET  /admin/upstreams   each service's instances and their ejection state
    POST /admin/reload      read meshkit.toml again and use it, connections kept
    GET  /metrics           Prometheus metrics (no token: scrapers seldom carry one)

Every ``/admin`` path needs ``Authorization: Bearer <token>``, the
project's token: the API reveals the configuration and changes it. Errors
are problem details (RFC 9457), as everywhere in meshkit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec

from meshkit.errors import MeshkitError
from meshkit.gateway._config import GatewayConfig
from meshkit.http import (
    BEARER_CHALLENGE,
    HTTPServer,
    Problem,
    Request,
    Response,
    bearer_authorized,
    json_response,
    problem_response,
)
from meshkit.proxy import CONTENT_TYPE

if TYPE_CHECKING:
    from meshkit.gateway._gateway import Gateway

__all__ = ["AdminApi"]


class AdminApi:
    """Serves the admin API of ``gateway``; ``reloader`` reads its configuration again."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        token: str,
        reloader: Callable[[], GatewayConfig] | None = None,
    ) -> None:
        self._gateway = gateway
        self._token = token.encode()
        self._reloader = reloader
        self._endpoints: dict[tuple[str, str], Callable[[], Response]] = {
            ("GET", "/admin/routes"): self._routes,
            ("GET", "/admin/breakers"): self._breakers,
            ("GET", "/admin/limits"): self._limits,
            ("GET", "/admin/upstreams"): self._upstreams,
            ("POST", "/admin/reload"): self._reload,
        }
        self._server = HTTPServer(self.handle)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        return await self._server.start(host, port)

    async def aclose(self) -> None:
        await self._server.aclose(grace=1.0)

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        if request.path == "/metrics" and request.method == "GET":
            return Response(
                200, [(b"content-type", CONTENT_TYPE)], self._gateway.metrics.exposition()
            )
        # Authenticated before anything else: not even which paths exist is told.
        if not bearer_authorized(request.headers, self._token):
            return _error(
                401,
                "the admin API needs Authorization: Bearer <the project's token>",
                BEARER_CHALLENGE,
            )
        methods = sorted(method for method, path in self._endpoints if path == request.path)
        if not methods:
            return _error(404, f"no admin endpoint at {request.path}")
        endpoint = self._endpoints.get((request.method, request.path))
        if endpoint is None:
            allow = (b"allow", ", ".join(methods).encode())
            return _error(405, f"{request.method} is not allowed here", allow)
        return endpoint()

    def _routes(self) -> Response:
        return json_response(200, msgspec.to_builtins(self._gateway.config.routes))

    def _breakers(self) -> Response:
        return json_response(200, self._gateway.upstreams.breakers())

    def _upstreams(self) -> Response:
        return json_response(200, self._gateway.upstreams.health())

    def _limits(self) -> Response:
        gateway = self._gateway
        config = gateway.config
        limits = gateway.client_limits
        store = "none"
        if config.global_limits:
            store = "memory" if config.redis is None else config.redis.url
        global_limits = gateway.global_limits
        return json_response(
            200,
            {
                "api_keys": {} if limits is None else limits.statistics(),
                "global": msgspec.to_builtins(config.global_limits),
                "store": store,
                "store_reachable": global_limits is None or global_limits.reachable,
            },
        )

    def _reload(self) -> Response:
        if self._reloader is None:
            return _error(409, "this gateway was not started from a file it could read again")
        try:
            config = self._reloader()
            self._gateway.reload(config)
        except MeshkitError as error:  # a bad file, a secret or key file that cannot be used
            return _error(400, f"not reloaded: {error}")
        return json_response(200, {"reloaded": True, "routes": len(config.routes)})


def _error(status: int, message: str, *headers: tuple[bytes, bytes]) -> Response:
    return problem_response(Problem(status, message), headers)
