"""``Upstreams``: each request's instance, found through discovery, with retries and breakers.

The last filter of the gateway and of the sidecar's outbound port, and the
engine's ``Retrier``. The rules (balancing, ejection, which failures go to
another instance) are ``meshkit.discovery``'s; this module drives them from
the engine's callbacks, and adds a circuit breaker per route and method, so
a failing ``POST /orders`` does not stop ``GET /orders/{id}``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Iterable
from functools import partial

from meshkit._clock import Clock
from meshkit.discovery import Attempts, CallPolicy, Directory, InstanceSet, failed_status
from meshkit.errors import ServiceUnavailableError
from meshkit.http import IDEMPOTENT_METHODS
from meshkit.policy import BreakerConfig, CircuitBreaker, sticky_points
from meshkit.proxy._message import ProxyRequest, ProxyResponse
from meshkit.registry import Instance, Snapshot

__all__ = ["UpstreamCall", "Upstreams", "route_breaker"]


def route_breaker() -> BreakerConfig:
    """The default breaker of a route: the policy core's trip rules, open 1 s at a time.

    While its upstream fails, a route sheds load and lets one request
    through each second, so it is back about a second after the upstream
    is. A longer or growing open period would keep refusing a route whose
    upstream recovered from a blip; ejection and retry budgets already
    protect the instances themselves.
    """
    return BreakerConfig(open_for=1.0, open_for_max=1.0)


class UpstreamCall(Attempts):
    """One request's attempts, and the ticket of its route's breaker.

    One object rather than attempts beside a ticket: it is made for every
    request the proxy forwards.
    """

    __slots__ = ("route_breaker", "route_started", "route_ticket")

    # Set by Upstreams as it makes the call (no __init__ of its own: one
    # call less per request).
    route_breaker: CircuitBreaker
    route_ticket: int | None
    route_started: float

    def record_route(self, now: float, *, success: bool) -> None:
        """The request's final outcome, for its route's breaker (retries are not counted)."""
        ticket, self.route_ticket = self.route_ticket, None
        if ticket is not None:
            duration = now - self.route_started
            self.route_breaker.record(ticket, now, success=success, duration=duration)

    def release_route(self) -> None:
        ticket, self.route_ticket = self.route_ticket, None
        if ticket is not None:
            self.route_breaker.release(ticket)


class Upstreams:
    """An instance of the request's ``service`` for each request, its outcome recorded, retries.

    As the engine's ``Retrier``, a failed attempt goes to another instance
    when ``meshkit.discovery`` says it may: a refused connection always, a
    dropped connection, a timeout or a 502, 503 or 504 only for idempotent
    methods (RFC 9110, 9.2.2), within the retry policy and budget.
    """

    def __init__(
        self, directory: Directory, clock: Clock, *, rng: random.Random | None = None
    ) -> None:
        self._directory = directory
        self._clock = clock
        self._rng = rng or random.Random()
        self._breaker_config = route_breaker()
        self._breakers: dict[tuple[str, str], CircuitBreaker] = {}  # by method and route
        self._policy = CallPolicy()
        self._try_timeout = 10.0
        self._timeout = 30.0
        self._sets: dict[str, InstanceSet] = {}  # by service, and by "service@version"
        self._versions: dict[str, frozenset[str]] = {}  # by service, for splits
        directory.listen(self._changed)

    def configure(self, policy: CallPolicy, *, try_timeout: float, breaker: BreakerConfig) -> None:
        """Take the call policy (attempts, the overall timeout in its retry policy,
        ejection's bounds), one attempt's timeout and the routes' breaker settings.

        What was learned stays: instances' ejection state, breakers (a new
        configuration applies to routes and services first seen after it).
        """
        self._policy = policy
        self._timeout = policy.retry.timeout or policy.timeout
        self._try_timeout = try_timeout
        self._breaker_config = breaker

    # -- the filter -------------------------------------------------------------

    def on_request(self, request: ProxyRequest) -> Awaitable[None] | None:
        service = request.service
        if service is None:
            return None  # a fixed address (the sidecar's app): nothing to find
        instances = self._sets.get(service)
        if instances is None:
            return self._discover(request, service)
        if request.policy.split is not None:
            instances = self._narrowed(request, instances)
        self._start(request, instances)
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        call = request.call
        if call is None:
            return
        now = self._clock.monotonic()
        if call.current is None:
            # No attempt is under way when a retry was declined: it was recorded then.
            success = not failed_status(response.status)
        elif not response.upstream:
            # The proxy's own answer with an attempt under way: the request's
            # deadline ended it (a 504), which says nothing about the instance.
            call.abandon()
            success = not failed_status(response.status)
        else:
            success = call.answered(now, response.status)
        call.record_route(now, success=success)

    # -- the retrier ------------------------------------------------------------

    def retry(
        self, request: ProxyRequest, failure: BaseException | int, time_left: float | None
    ) -> float | None:
        attempts = request.call
        if attempts is None or attempts.current is None:
            return None
        now = self._clock.monotonic()
        if isinstance(failure, int):
            attempts.answered(now, failure)
        else:
            attempts.failed(now, failure)
        delay = attempts.retry(now, failure, time_left=time_left)
        if delay is None or attempts.current is None:
            return None
        instance = attempts.current.instance
        request.upstream = (instance.host, instance.port)
        return delay

    # -- for the admin API, metrics and the dashboard ------------------------------

    def health(self) -> dict[str, list[dict[str, str]]]:
        """Each instance set's instances and their ejection state.

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
        """Each route's breaker state, by ``"METHOD route"``."""
        return {breaker.name: breaker.state.value for breaker in self._breakers.values()}

    # -- per request ------------------------------------------------------------

    async def _discover(self, request: ProxyRequest, service: str) -> None:
        snapshot = await self._directory.snapshot(service)
        found = self._sets.get(service)
        if found is None:
            found = self._sets[service] = InstanceSet(service, self._policy, self._rng)
            found.update(snapshot.instances, snapshot.weights)
            self._versions[service] = _versions(snapshot.instances)
        self._start(request, self._narrowed(request, found) if request.policy.split else found)

    def _start(self, request: ProxyRequest, instances: InstanceSet) -> None:
        """The route's breaker, then the first attempt's instance; a 503 if either refuses."""
        now = self._clock.monotonic()
        key = (request.method, request.route or instances.name)
        breaker = self._breakers.get(key)
        if breaker is None:
            route = f"{key[0]} {key[1]}"
            breaker = self._breakers[key] = CircuitBreaker(self._breaker_config, name=route)
        ticket = breaker.allow(now)
        if ticket is None:
            until = breaker.statistics(now).open_until
            wait = "" if until is None else f"; it is tried again in {max(0.0, until - now):.1f}s"
            raise ServiceUnavailableError(
                instances.name,
                f"the circuit breaker of {breaker.name} is open after repeated failures{wait}",
            )
        call = UpstreamCall(
            instances,
            self._policy.retry,
            now,
            rng=self._rng,
            idempotent=request.method in IDEMPOTENT_METHODS,
            patience=self._try_timeout,
        )
        call.route_breaker, call.route_ticket, call.route_started = breaker, ticket, now
        pick = call.next(now, time_left=self._timeout)
        if pick is None:
            call.close(now)
            call.record_route(now, success=False)
            raise ServiceUnavailableError(instances.name, instances.why_nothing())
        request.call = call
        request.upstream = (pick.instance.host, pick.instance.port)
        request.on_finish(partial(self._finished, call))
        request.deadline = request.started + self._timeout

    def _finished(self, call: UpstreamCall) -> None:
        """However the request ended: what is still held (the client left) goes back."""
        if call.current is not None or not call.run.done:
            call.close(self._clock.monotonic())
        if call.route_ticket is not None:
            call.release_route()

    def _narrowed(self, request: ProxyRequest, instances: InstanceSet) -> InstanceSet:
        """The instances of the version the route's split chooses (the route has a split)."""
        split = request.policy.split
        assert split is not None
        available = self._versions.get(instances.name, frozenset())
        version = split.weights.choose(*self._points(request, split.sticky), available=available)
        if version is None:
            raise ServiceUnavailableError(
                instances.name,
                "no instance runs a version of the route's split"
                f" ({', '.join(split.weights.weights)})",
            )
        name = f"{instances.name}@{version}"
        subset = self._sets.get(name)
        if subset is None:
            subset = self._sets[name] = InstanceSet(name, self._policy, self._rng)
            subset.update(_of_version(instances.instances.values(), version))
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

    def _changed(self, snapshot: Snapshot) -> None:
        service, instances = snapshot.service, snapshot.instances
        found = self._sets.get(service)
        if found is not None:
            found.update(instances, snapshot.weights)
            self._versions[service] = _versions(instances)
        versions = f"{service}@"
        for name, subset in self._sets.items():
            if name.startswith(versions):
                subset.update(_of_version(instances, name[len(versions) :]))


def _versions(instances: Iterable[Instance]) -> frozenset[str]:
    return frozenset(instance.version for instance in instances)


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
