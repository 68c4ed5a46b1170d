"""The gateway's filters, in the order a request meets them.

``Ready`` answers the gateway's own health check. ``Routes`` finds the
route (404, 405, or 400 for an ambiguous path) and rewrites the path.
``ApiKeys`` authenticates routes that need it (401 without a valid key,
403 for a key not allowed that service). ``ClientLimits`` gives each
client (API key, or address on public routes) a token bucket (429 with
``Retry-After``). ``Upstreams`` picks an instance of the route's service
from the registry's watched cache, balancing and ejecting as the service
client does, and records how the answer went.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Awaitable, Collection, Iterable, Sequence

from meshkit._clock import Clock
from meshkit.errors import ConnectError, ConnectTimeoutError, ServiceUnavailableError
from meshkit.gateway._config import ApiKey, GatewayConfig, RouteConfig
from meshkit.http import IDEMPOTENT_METHODS
from meshkit.policy import (
    BadPath,
    BreakerConfig,
    CircuitBreaker,
    NoRoute,
    RateLimit,
    RetryPolicy,
    RetryRun,
    Route,
    RouteTable,
    TokenBucket,
    WeightedSplit,
    sticky_points,
)
from meshkit.proxy import ProxyRequest, ProxyResponse, error_response
from meshkit.registry import Instance
from meshkit.service._client import CallPolicy
from meshkit.service._directory import Directory
from meshkit.service._instances import InstanceSet

__all__ = ["READY_PATH", "ApiKeys", "ClientLimits", "Ready", "Routes", "Upstreams"]

READY_PATH = "/.meshkit/gateway/ready"

# A route's split, and where its sticky key comes from.
Split = tuple[WeightedSplit, tuple[str, bytes] | None]
_FAILED = frozenset({502, 503, 504})


class Ready:
    """``GET /.meshkit/gateway/ready`` answers 200: how ``meshkit up`` knows the gateway is up."""

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        if request.path == READY_PATH:
            return ProxyResponse(200, [(b"content-type", b"text/plain")], b"ready\n")
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


class Routes:
    """The route table: which service, and the path it gets."""

    def __init__(self, config: GatewayConfig) -> None:
        routes = config.route_list()
        self.table = RouteTable(routes)
        # A matched Route leads back to its configuration (auth and the rest).
        self._configs: dict[Route, RouteConfig] = dict(zip(routes, config.routes, strict=True))
        self._splits: dict[Route, Split] = {
            route: (WeightedSplit(found.split), found.sticky_source())
            for route, found in self._configs.items()
            if found.split is not None
        }

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        host = request.header(b"host") or b""
        found = self.table.match(request.method, host.decode("latin-1"), request.path)
        if isinstance(found, BadPath):
            return error_response(400, f"refused path: {found.reason}", request.request_id)
        if isinstance(found, NoRoute):
            if found.allowed:
                allow = ", ".join(sorted(found.allowed)).encode("ascii")
                return error_response(
                    405,
                    f"{request.method} is not allowed here",
                    request.request_id,
                    headers=[(b"allow", allow)],
                )
            return error_response(404, f"no route for {request.path}", request.request_id)
        route = self._configs[found.route]
        request.attributes["route"] = route.path
        request.attributes["route_config"] = route
        request.attributes["service"] = route.service
        split = self._splits.get(found.route)
        if split is not None:
            request.attributes["split"] = split
        request.path = found.path
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


def _digest(key: str | bytes) -> bytes:
    # Keys are looked up by their hash, so a lookup's timing says nothing
    # about how much of a guessed key was right.
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeys:
    """``X-API-Key`` on every route that does not say ``auth = "none"``."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self._keys = {_digest(key.key): key for key in keys}

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        route: RouteConfig = request.attributes["route_config"]
        if route.auth != "api_key":
            return None
        presented = request.header(b"x-api-key")
        key = None if presented is None else self._keys.get(_digest(presented))
        if key is None:
            problem = "an API key is required" if presented is None else "unknown API key"
            return error_response(
                401,
                f"{problem} (send it in the X-API-Key header)",
                request.request_id,
                headers=[(b"www-authenticate", b'ApiKey header="X-API-Key"')],
            )
        if key.services is not None and route.service not in key.services:
            return error_response(
                403, f"the key {key.name!r} may not call {route.service}", request.request_id
            )
        request.attributes["client"] = key.name
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


class ClientLimits:
    """A token bucket per client: the API key's name, the JWT subject, or the address.

    Answers 429 with ``Retry-After`` (whole seconds, rounded up) and the
    ``RateLimit-Policy`` and ``RateLimit`` fields of the IETF draft
    (draft-ietf-httpapi-ratelimit-headers-09) on every answer.
    """

    # Buckets of addresses and JWT subjects kept at most; the oldest go first
    # (they refill to full meanwhile, so dropping one forgets nothing that matters).
    MAX_DYNAMIC = 10_000

    def __init__(
        self, config: GatewayConfig, clock: Clock, *, previous: ClientLimits | None = None
    ) -> None:
        """With ``previous`` (a reload), buckets whose limit is unchanged carry on as they were,
        so a reload hands no client a fresh burst."""
        self._clock = clock
        kept = {} if previous is None else previous._keyed
        self._keyed: dict[str, TokenBucket] = {
            key.name: _carried(kept.get(key.name), key.name, key.rate, key.burst)
            for key in config.api_keys
        }
        self._anonymous_limit = RateLimit(
            capacity=config.anonymous_burst, per_second=config.anonymous_rate
        )
        jwt = config.jwt
        self._subject_limit = (
            None if jwt is None else RateLimit(capacity=jwt.burst, per_second=jwt.rate)
        )
        limits = {self._anonymous_limit, self._subject_limit}
        self._dynamic: dict[str, TokenBucket] = (  # addresses and JWT subjects
            {}
            if previous is None
            else {n: b for n, b in previous._dynamic.items() if b.limit in limits}
        )

    def statistics(self) -> dict[str, float]:
        """Tokens each API key's bucket holds now (for the admin API)."""
        now = self._clock.monotonic()
        return {name: bucket.tokens(now) for name, bucket in self._keyed.items()}

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        name: str | None = request.attributes.get("client")
        if name is None:
            bucket = self._bucket(request.client, self._anonymous_limit)
        elif name.startswith("jwt:") and self._subject_limit is not None:
            bucket = self._bucket(name, self._subject_limit)
        else:
            bucket = self._keyed[name]
        decision = bucket.acquire(self._clock.monotonic())
        limit = bucket.limit
        fields = ratelimit_fields("client", limit, decision.remaining, decision.reset_after)
        if decision.allowed:
            request.attributes["ratelimit"] = fields
            return None
        retry = str(max(1, math.ceil(decision.retry_after))).encode("ascii")
        return error_response(
            429,
            f"rate limit of {limit.per_second:g}/s (burst {limit.capacity}) reached",
            request.request_id,
            headers=[(b"retry-after", retry), *fields],
        )

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        fields = request.attributes.get("ratelimit")
        if fields is not None:
            response.headers.extend(fields)

    def _bucket(self, client: str, limit: RateLimit) -> TokenBucket:
        bucket = self._dynamic.get(client)
        if bucket is None:
            if len(self._dynamic) >= self.MAX_DYNAMIC:
                del self._dynamic[next(iter(self._dynamic))]
            bucket = self._dynamic[client] = TokenBucket(limit, name=client)
        return bucket


def _carried(bucket: TokenBucket | None, name: str, rate: float, burst: int) -> TokenBucket:
    limit = RateLimit(capacity=burst, per_second=rate)
    if bucket is not None and bucket.limit == limit:
        return bucket
    return TokenBucket(limit, name=name)


def ratelimit_fields(
    policy: str, limit: RateLimit, remaining: int, reset_after: float
) -> list[tuple[bytes, bytes]]:
    """The ``RateLimit-Policy`` and ``RateLimit`` fields for the policy named ``policy``."""
    window = max(1, math.ceil(limit.capacity / limit.per_second))
    name = policy.encode("ascii")
    return [
        (b"ratelimit-policy", b'"%s";q=%d;w=%d' % (name, limit.capacity, window)),
        (b"ratelimit", b'"%s";r=%d;t=%d' % (name, remaining, math.ceil(reset_after))),
    ]


class Upstreams:
    """An instance of the route's service for each request, the outcome recorded, retries.

    Also the engine's ``Retrier``: a failed attempt is sent to another
    instance, after the retry policy's backoff and within the service's
    retry budget, when that is safe. A refused connection always is
    (nothing was sent); a dropped connection, a timeout or a 502, 503 or 504
    answer only for idempotent methods (RFC 9110, 9.2.2), since the instance
    may have acted on the request.
    """

    def __init__(
        self, directory: Directory, clock: Clock, *, rng: random.Random | None = None
    ) -> None:
        self._directory = directory
        self._breaker_config = BreakerConfig()
        self._breakers: dict[str, CircuitBreaker] = {}  # one per service
        self._clock = clock
        self._timeout = 30.0
        self._rng = rng or random.Random()
        self._policy = CallPolicy()
        self._sets: dict[str, InstanceSet] = {}
        directory.listen(self._changed)

    def configure(self, config: GatewayConfig) -> None:
        """Take the timeouts, retries, breaker and splits of ``config``.

        What was learned stays: instances' ejection state, breakers (a new
        breaker configuration applies to services first seen after it).
        """
        self._policy = CallPolicy(
            retry=RetryPolicy(attempts=config.attempts, timeout=config.timeout)
        )
        self._timeout = config.timeout
        self._breaker_config = config.breaker

    def on_request(self, request: ProxyRequest) -> Awaitable[None] | None:
        service: str = request.attributes["service"]
        instances = self._sets.get(service)
        if instances is None:
            return self._discover(request, service)
        self._first_pick(request, self._narrowed(request, instances))
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        success = response.status not in _FAILED
        picked = request.attributes.pop("instance", None)
        # No pick left when a retry was declined: that attempt is recorded already.
        now = self._clock.monotonic() if picked is None else self._record(picked, success=success)
        run: RetryRun | None = request.attributes.get("retries")
        if run is not None and success:
            run.succeeded(now)
        self._record_service(request, now, success=success)

    def retry(
        self, request: ProxyRequest, failure: BaseException | int, time_left: float | None
    ) -> float | None:
        picked = request.attributes.pop("instance", None)
        if picked is None:
            return None
        instances, key, _, _ = picked
        now = self._record(picked, success=False)
        unsent = isinstance(failure, ConnectError | ConnectTimeoutError)
        retryable = unsent or request.method in IDEMPOTENT_METHODS
        run: RetryRun = request.attributes["retries"]
        decision = run.failed(now, retryable=retryable)
        if not decision.retry:
            return None
        if time_left is not None and decision.delay >= time_left:
            run.close(now)  # no time for it: give the retry slot back
            return None
        tried: set[str] = request.attributes.setdefault("tried", set())
        tried.add(key)
        if not self._pick(request, instances, tried):
            run.close(now)
            return None
        return decision.delay

    def _finished(self, request: ProxyRequest, run: RetryRun) -> None:
        """However the request ended: an attempt without an outcome gives back what it took."""
        run.close(self._clock.monotonic())
        service = request.attributes.pop("service_ticket", None)
        if service is not None:  # the client left before the answer came
            service[0].release(service[1])
        picked = request.attributes.pop("instance", None)
        if picked is not None:  # the client left before the answer came
            instances, key, ticket, _ = picked
            breaker = instances.breakers.get(key)
            if breaker is not None:
                breaker.release(ticket)
                instances.balancer.cancel(key)

    @staticmethod
    def _record_service(request: ProxyRequest, now: float, *, success: bool) -> None:
        """The request's final outcome, for its service's breaker (retries are not counted)."""
        service = request.attributes.pop("service_ticket", None)
        if service is not None:
            breaker, ticket, started = service
            breaker.record(ticket, now, success=success, duration=now - started)

    def health(self) -> dict[str, list[dict[str, str]]]:
        """Each instance set's instances and their ejection state: for the admin API.

        A route with a split balances each version on its own (``orders@1.1.0``).
        """
        return {
            name: [
                {
                    "id": instance.id,
                    "address": f"{instance.host}:{instance.port}",
                    "version": instance.version,
                    "state": instances.breakers[key].state.value,
                }
                for key, instance in instances.instances.items()
            ]
            for name, instances in sorted(self._sets.items())
        }

    def breakers(self) -> dict[str, str]:
        """Each service's breaker state: for the admin API and the dashboard."""
        return {service: breaker.state.value for service, breaker in self._breakers.items()}

    def _record(self, picked: tuple[InstanceSet, str, int, float], *, success: bool) -> float:
        instances, key, ticket, started = picked
        now = self._clock.monotonic()
        breaker = instances.breakers.get(key)
        if breaker is not None:  # the instance may have left meanwhile
            breaker.record(ticket, now, success=success, duration=now - started)
            instances.balancer.complete(key, now, now - started, success=success)
        return now

    async def _discover(self, request: ProxyRequest, service: str) -> None:
        instances = await self._directory.instances(service)
        found = self._sets.get(service)
        if found is None:
            found = self._sets[service] = InstanceSet(service, self._policy, self._rng)
            found.update(instances, self._policy.ejection)
        self._first_pick(request, self._narrowed(request, found))

    def _narrowed(self, request: ProxyRequest, instances: InstanceSet) -> InstanceSet:
        """The instances of the version the route's split chooses, or all of them."""
        split: Split | None = request.attributes.get("split")
        if split is None:
            return instances
        weights, sticky = split
        versions = {instance.version for instance in instances.instances.values()}
        version = weights.choose(*self._points(request, sticky), available=versions)
        if version is None:
            raise ServiceUnavailableError(
                instances.name,
                f"no instance runs a version of the route's split ({', '.join(weights.weights)})",
            )
        request.attributes["version"] = version
        name = f"{instances.name}@{version}"
        subset = self._sets.get(name)
        if subset is None:
            subset = self._sets[name] = InstanceSet(name, self._policy, self._rng)
            subset.update(_of_version(instances.instances.values(), version), self._policy.ejection)
        return subset

    def _points(
        self, request: ProxyRequest, sticky: tuple[str, bytes] | None
    ) -> tuple[float, float]:
        if sticky is not None:
            kind, name = sticky
            key = request.header(name) if kind == "header" else _cookie(request, name)
            if key:
                return sticky_points(key)
        return self._rng.random(), self._rng.random()

    def _first_pick(self, request: ProxyRequest, instances: InstanceSet) -> None:
        now = self._clock.monotonic()
        service: str = request.attributes["service"]  # the set may be one version's
        breaker = self._breakers.get(service)
        if breaker is None:
            breaker = self._breakers[service] = CircuitBreaker(self._breaker_config, name=service)
        ticket = breaker.allow(now)
        if ticket is None:
            until = breaker.statistics(now).open_until
            wait = "" if until is None else f"; it is tried again in {max(0.0, until - now):.1f}s"
            raise ServiceUnavailableError(
                service, f"its circuit breaker is open after repeated failures{wait}"
            )
        if not self._pick(request, instances, ()):
            breaker.record(ticket, now, success=False)
            raise ServiceUnavailableError(service, instances.why_nothing(set(), ""))
        request.attributes["service_ticket"] = (breaker, ticket, now)
        run = self._policy.retry.start(now, rng=self._rng, budget=instances.budget)
        request.attributes["retries"] = run
        request.on_finish(lambda: self._finished(request, run))
        request.deadline = request.started + self._timeout

    def _pick(self, request: ProxyRequest, instances: InstanceSet, tried: Collection[str]) -> bool:
        now = self._clock.monotonic()
        chosen = instances.pick(now, set(tried))
        if chosen is None:
            request.attributes.pop("instance", None)
            return False
        key, ticket = chosen
        instance = instances.instances[key]
        request.upstream = (instance.host, instance.port)
        request.attributes["instance"] = (instances, key, ticket, now)
        return True

    def _changed(self, service: str, instances: tuple[Instance, ...]) -> None:
        found = self._sets.get(service)
        if found is not None:
            found.update(instances, self._policy.ejection)
        versions = f"{service}@"
        for name, subset in self._sets.items():
            if name.startswith(versions):
                subset.update(_of_version(instances, name[len(versions) :]), self._policy.ejection)


def _of_version(instances: Iterable[Instance], version: str) -> list[Instance]:
    return [instance for instance in instances if instance.version == version]


def _cookie(request: ProxyRequest, name: bytes) -> bytes | None:
    """The value of the cookie ``name`` (RFC 6265: ``a=1; b=2``), if the request has it."""
    header = request.header(b"cookie")
    if header is None:
        return None
    for pair in header.split(b";"):
        key, _, value = pair.strip().partition(b"=")
        if key == name:
            return value
    return None
