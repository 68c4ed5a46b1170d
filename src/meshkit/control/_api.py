"""The control plane's registry API over HTTP/JSON (and the router to the bus's, ``_bus_api``,
the telemetry's, ``_telemetry_api``, and the rollouts', ``_rollout_api``).

    GET    /healthz                          no token needed
    POST   /v1/registry/instances            register   -> 201 {lease_id, ttl, epoch, index}
    PUT    /v1/registry/leases/{lease_id}    renew      -> 200 {ttl}
    DELETE /v1/registry/leases/{lease_id}    deregister -> 204
    GET    /v1/registry/services             -> {services: [{name, instances}], epoch, index}
    GET    /v1/registry/services/{name}      -> {service, instances: [...], epoch, index, weights}
    PUT    /v1/registry/services/{name}/weights  {weights: {version: weight}} -> the snapshot
    DELETE /v1/registry/services/{name}/weights  no split any more -> 204
    GET    /v1/prometheus/targets            Prometheus HTTP service discovery (``_targets``)
    GET    /metrics                          Prometheus metrics, no token needed (``_metrics``)

Every other request needs ``Authorization: Bearer <token>``; without it the
answer is 401. The two GETs take ``?epoch=E&index=I&wait=S`` to long-poll
as Consul's blocking queries do: the answer comes as soon as the listing
differs from ``(E, I)``, or after ``S`` seconds (at most 300) with the same
listing. Errors are problem details (RFC 9457, ``application/problem+json``);
a 400's ``errors`` name the bad field (``[{"field": "ttl", "detail": ...}]``).
Lease ids are decimal strings: they are 63-bit numbers, which JavaScript
clients would round.
"""

from __future__ import annotations

from collections.abc import Awaitable
from urllib.parse import parse_qs

import msgspec

from meshkit.control._answers import decode_body, invalid
from meshkit.control._answers import error as error_answer
from meshkit.control._bus_api import BusAPI
from meshkit.control._metrics import METRICS_PATH, PlaneMetrics
from meshkit.control._rollout_api import PREFIX as ROLLOUTS
from meshkit.control._rollout_api import RolloutAPI
from meshkit.control._targets import TARGETS_PATH, targets
from meshkit.control._telemetry_api import TelemetryAPI
from meshkit.errors import ConfigError, InvalidArgumentError, LeaseExpiredError, LeaseNotFoundError
from meshkit.http import BEARER_CHALLENGE, Request, Response, bearer_authorized, json_response
from meshkit.registry import EmbeddedRegistry, Instance, ServiceList, Snapshot, check_name

__all__ = ["MAX_WAIT", "RegistryAPI"]

MAX_WAIT = 300.0


class RegisterBody(msgspec.Struct, forbid_unknown_fields=True):
    service: str
    id: str
    host: str
    port: int
    ttl: float
    version: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


_NO_CONTENT = Response(204, [], b"")
_TELEMETRY = ("/v1/traces", "/v1/logs", "/v1/query/")


class WeightsBody(msgspec.Struct, forbid_unknown_fields=True):
    weights: dict[str, int]


def _snapshot_json(snapshot: Snapshot) -> dict[str, object]:
    return {
        "service": snapshot.service,
        "instances": snapshot.instances,
        "epoch": str(snapshot.epoch),
        "index": snapshot.index,
        "weights": snapshot.weights,
    }


def _services_json(listing: ServiceList) -> dict[str, object]:
    return {"services": listing.services, "epoch": str(listing.epoch), "index": listing.index}


class RegistryAPI:
    """Turns HTTP requests into registry calls. ``handle`` is the server's handler."""

    def __init__(
        self,
        registry: EmbeddedRegistry,
        *,
        token: str,
        bus: BusAPI | None = None,
        telemetry: TelemetryAPI | None = None,
        metrics: PlaneMetrics | None = None,
        rollouts: RolloutAPI | None = None,
    ) -> None:
        if len(token) < 16:
            raise ConfigError("token", "must be at least 16 characters")
        self._registry = registry
        self._token = token.encode()
        self._bus = bus
        self._telemetry = telemetry
        self._metrics = metrics
        self._rollouts = rollouts
        # Where the control plane listens, once it does: it lists itself as a
        # Prometheus target too.
        self.address: tuple[str, int] | None = None

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """Answer at once, except a long poll, which returns an awaitable."""
        path = request.path
        if path == "/healthz":
            return json_response(200, {"status": "ok"})
        if path == METRICS_PATH and self._metrics is not None:
            return self._metrics.scrape(request)
        if not bearer_authorized(request.headers, self._token):
            return error_answer(
                401, "a valid 'Authorization: Bearer <token>' header is required", BEARER_CHALLENGE
            )
        method = request.method
        if path.startswith("/v1/bus/") and self._bus is not None:
            return self._bus.handle(request)
        if self._telemetry is not None and path.startswith(_TELEMETRY):
            return self._telemetry.handle(request)
        if self._rollouts is not None and (path == ROLLOUTS or path.startswith(ROLLOUTS + "/")):
            return self._rollouts.handle(request)
        if path == TARGETS_PATH:
            if method != "GET":
                return error_answer(405, f"{method} is not allowed here; use GET")
            return json_response(200, targets(self._registry, self.address))
        if path.startswith("/v1/registry/leases/"):
            return self._lease(method, path[len("/v1/registry/leases/") :])
        if path == "/v1/registry/instances":
            if method != "POST":
                return error_answer(405, f"{method} is not allowed here; use POST")
            return self._register(request.body)
        if path == "/v1/registry/services":
            if method != "GET":
                return error_answer(405, f"{method} is not allowed here; use GET")
            return self._services(request.query)
        if path.startswith("/v1/registry/services/") and path.endswith("/weights"):
            return self._weights(
                method, path[len("/v1/registry/services/") : -len("/weights")], request.body
            )
        if path.startswith("/v1/registry/services/"):
            if method != "GET":
                return error_answer(405, f"{method} is not allowed here; use GET")
            return self._service(path[len("/v1/registry/services/") :], request.query)
        return error_answer(404, f"no such endpoint: {path}")

    # -- leases -------------------------------------------------------------

    def _register(self, body: bytes) -> Response:
        try:
            data = decode_body(RegisterBody, body)
            instance = Instance(
                service=data.service,
                id=data.id,
                host=data.host,
                port=data.port,
                version=data.version,
                metadata=data.metadata,
            )
            registration = self._registry.register_now(instance, ttl=data.ttl)
        except InvalidArgumentError as error:
            return invalid(error)
        snapshot = self._registry.snapshot(instance.service)
        return json_response(
            201,
            {
                "lease_id": str(registration.lease_id),
                "ttl": registration.ttl,
                "epoch": str(snapshot.epoch),
                "index": snapshot.index,
            },
        )

    def _lease(self, method: str, lease: str) -> Response:
        if not lease.isdigit() or len(lease) > 19:
            return invalid(
                InvalidArgumentError("lease_id", f"must be a decimal lease id, got {lease!r}")
            )
        lease_id = int(lease)
        try:
            if method == "PUT":
                return json_response(200, {"ttl": self._registry.renew_now(lease_id)})
            if method == "DELETE":
                self._registry.deregister_now(lease_id)
                return _NO_CONTENT
        except (LeaseNotFoundError, LeaseExpiredError) as error:
            return error_answer(404, str(error))
        return error_answer(405, f"{method} is not allowed here; use PUT to renew or DELETE")

    def _weights(self, method: str, name: str, body: bytes) -> Response:
        try:
            check_name("service", name)
            if method == "DELETE":
                self._registry.set_weights_now(name, None)
                return _NO_CONTENT
            if method != "PUT":
                return error_answer(405, f"{method} is not allowed here; use PUT or DELETE")
            self._registry.set_weights_now(name, decode_body(WeightsBody, body).weights)
        except InvalidArgumentError as error:
            return invalid(error)
        return json_response(200, _snapshot_json(self._registry.snapshot(name)))

    # -- reads and watches -----------------------------------------------------

    def _service(self, name: str, query: str) -> Response | Awaitable[Response]:
        try:
            check_name("service", name)
            position = _position(query)
        except InvalidArgumentError as error:
            return invalid(error)
        if position is None:
            return json_response(200, _snapshot_json(self._registry.snapshot(name)))
        epoch, index, wait = position
        return self._watch_service(
            Snapshot(service=name, instances=(), epoch=epoch, index=index), wait
        )

    async def _watch_service(self, previous: Snapshot, wait: float) -> Response:
        snapshot = await self._registry.watch(previous, wait=wait)
        return json_response(200, _snapshot_json(snapshot))

    def _services(self, query: str) -> Response | Awaitable[Response]:
        try:
            position = _position(query)
        except InvalidArgumentError as error:
            return invalid(error)
        if position is None:
            return json_response(200, _services_json(self._registry.service_list()))
        epoch, index, wait = position
        return self._watch_services(ServiceList(services=(), epoch=epoch, index=index), wait)

    async def _watch_services(self, previous: ServiceList, wait: float) -> Response:
        listing = await self._registry.watch_services(previous, wait=wait)
        return json_response(200, _services_json(listing))


def _position(query: str) -> tuple[int, int, float] | None:
    """``(epoch, index, wait)`` from a long-poll query, or ``None`` for a plain read."""
    if not query:
        return None
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(params) - {"epoch", "index", "wait"}
    if unknown:
        raise InvalidArgumentError(
            sorted(unknown)[0], "is not a parameter here (epoch, index, wait)"
        )
    if "index" not in params:
        raise InvalidArgumentError("index", "is required to wait for a change")
    try:
        epoch = int(params.get("epoch", "0"))
    except ValueError as error:
        raise InvalidArgumentError(
            "epoch", f"must be a whole number, got {params['epoch']!r}"
        ) from error
    try:
        index = int(params["index"])
    except ValueError as error:
        raise InvalidArgumentError(
            "index", f"must be a whole number, got {params['index']!r}"
        ) from error
    try:
        wait = float(params.get("wait", "60"))
    except ValueError as error:
        raise InvalidArgumentError("wait", f"must be seconds, got {params['wait']!r}") from error
    if not 0 <= wait <= MAX_WAIT:
        raise InvalidArgumentError("wait", f"must be between 0 and {MAX_WAIT:g} seconds")
    return epoch, index, wait
