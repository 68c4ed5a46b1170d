"""The ASGI layer a Service puts around an application.

It answers the health endpoints itself, counts requests in flight, makes
an incoming ``x-meshkit-timeout-ms`` the deadline of the request's task, so
calls the application makes to other services inherit it, and runs each
request in a server span that continues the caller's trace (``_tracing``). Everything else
(lifespan, websockets, the application's own routes) passes through
unchanged.

``/-/live`` answers 200 while the event loop runs: a supervisor restarts a
process whose liveness check fails. ``/-/ready`` answers 200 only while the
instance is registered and not draining; traffic should go elsewhere
otherwise. ``/-/sagas`` lists and retries the service's saga runs
(``_saga_api``); ``/-/metrics`` is the Prometheus scrape (``_metrics``).
The ``/-/`` prefix is Prometheus's convention for such endpoints and
unlikely to collide with an application's routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from meshkit._clock import Clock
from meshkit.service._deadline import TIMEOUT_HEADER, deadline_from_header, use_deadline
from meshkit.service._metrics import METRICS_PATH, Measured, ServiceMetrics
from meshkit.service._problems import install_if_starlette
from meshkit.service._saga_api import PREFIX as SAGAS
from meshkit.service._saga_api import SagaAPI
from meshkit.service._tracing import failed, name_by_route, recording_send, server_span

__all__ = ["ASGIApp", "MeshASGI", "serving_app"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]


class MeshASGI:
    """Wraps ``app`` with health endpoints, an in-flight count and deadline propagation;
    with ``sagas``, it answers ``/-/sagas`` too."""

    def __init__(self, app: ASGIApp, *, clock: Clock, sagas: SagaAPI | None = None) -> None:
        self.app = app
        self.clock = clock
        self.sagas = sagas
        # Asked on every readiness check: registration can come late (the
        # registry was down at startup) and draining can begin at any time.
        self.is_ready: Callable[[], bool] = lambda: False
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/-/live":
            await _answer(send, 200, b'{"live":true}')
            return
        if path == "/-/ready":
            ready = self.is_ready()
            await _answer(
                send, 200 if ready else 503, b'{"ready":%s}' % (b"true" if ready else b"false")
            )
            return
        if self.sagas is not None and (path == SAGAS or path.startswith(SAGAS + "/")):
            await self._sagas(self.sagas, scope, send)
            return
        if path == METRICS_PATH:
            # A scrape is no request of the application's: traced, each one would
            # be a trace of its own in `meshkit traces`, every scrape interval.
            await self.app(scope, receive, send)
            return
        deadline = None
        for name, value in scope["headers"]:
            if name == TIMEOUT_HEADER:
                deadline = deadline_from_header(value, self.clock.monotonic())
                break
        self.in_flight += 1
        try:
            with use_deadline(deadline), server_span(scope) as span:
                recording = span.is_recording()
                try:
                    await self.app(
                        scope, receive, recording_send(send, span) if recording else send
                    )
                except BaseException as error:
                    if recording:
                        failed(span, error)
                    raise
                finally:
                    if recording:
                        name_by_route(span, scope)
        finally:
            self.in_flight -= 1

    async def _sagas(self, api: SagaAPI, scope: Scope, send: Send) -> None:
        self.in_flight += 1  # a retry under way finishes before the service stops
        try:
            query = scope.get("query_string", b"").decode("latin-1")
            answer = await api.answer(scope["method"], scope["path"], query, scope["headers"])
            await send(
                {"type": "http.response.start", "status": answer.status, "headers": answer.headers}
            )
            await send({"type": "http.response.body", "body": answer.body})
        finally:
            self.in_flight -= 1


def serving_app(
    app: ASGIApp,
    *,
    clock: Clock,
    problem_details: bool = True,
    sagas: SagaAPI | None = None,
    metrics: ServiceMetrics | None = None,
) -> MeshASGI:
    """``app`` as a Service serves it: the one place where an application is prepared.

    What every Service application gets, around it or configured on it,
    is applied here, when the Service is built: a Starlette or FastAPI
    app's errors become problem details unless ``problem_details`` is false;
    ``sagas`` answers ``/-/sagas``; with ``metrics``, ``/-/metrics`` answers
    a Prometheus scrape and every request the application answers is counted.
    """
    if problem_details:
        install_if_starlette(app)
    if metrics is not None:
        # Next to the application, inside whatever else wraps it, so that a
        # request's span is current when its answer starts (the exemplar).
        measured = Measured(app, clock=clock, registry=metrics.registry)
        measured.on_request.append(metrics.observe_request)
        app = measured
    return MeshASGI(app, clock=clock, sagas=sagas)


async def _answer(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": body})
