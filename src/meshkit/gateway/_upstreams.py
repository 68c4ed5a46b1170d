"""``Upstreams``: the instance each request goes to, found in the registry.

Shared by the gateway and the sidecar's outbound side: a filter that picks
an instance of ``attributes["service"]`` (of one version when a route's
split says so), and the engine's ``Retrier``.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Collection, Iterable

from meshkit._clock import Clock
from meshkit.errors import ConnectError, ConnectTimeoutError, ServiceUnavailableError
from meshkit.http import IDEMPOTENT_METHODS
from meshkit.policy import (
    BreakerConfig,
    CircuitBreaker,
    RetryPolicy,
    RetryRun,
    WeightedSplit,
    sticky_points,
)
from meshkit.proxy import ProxyRequest, ProxyResponse
from meshkit.registry import Instance
from meshkit.service._client import CallPolicy
from meshkit.service._directory import Directory
from meshkit.service._instances import InstanceSet

__all__ = ["Split", "Upstreams"]

_FAILED = frozenset({502, 503, 504})

# A route's split, and where its sticky key comes from.
Split = tuple[WeightedSplit, tuple[str, bytes] | None]


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
        self._versions: dict[str, frozenset[str]] = {}  # by service, for splits
        directory.listen(self._changed)

    def configure(self, *, attempts: int, timeout: float, breaker: BreakerConfig) -> None:
        """Take the attempts per request, the overall timeout and the breaker configuration.

        What was learned stays: instances' ejection state, breakers (a new
        breaker configuration applies to services first seen after it).
        """
        self._policy = CallPolicy(retry=RetryPolicy(attempts=attempts, timeout=timeout))
        self._timeout = timeout
        self._breaker_config = breaker

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
            self._versions[service] = _versions(instances)
        self._first_pick(request, self._narrowed(request, found))

    def _narrowed(self, request: ProxyRequest, instances: InstanceSet) -> InstanceSet:
        """The instances of the version the route's split chooses, or all of them."""
        split: Split | None = request.attributes.get("split")
        if split is None:
            return instances
        weights, sticky = split
        available = self._versions.get(instances.name, frozenset())
        version = weights.choose(*self._points(request, sticky), available=available)
        if version is None:
            raise ServiceUnavailableError(
                instances.name,
                f"no instance runs a version of the route's split ({', '.join(weights.weights)})",
            )
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
        chosen = instances.pick(now, tried)
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
            self._versions[service] = _versions(instances)
        versions = f"{service}@"
        for name, subset in self._sets.items():
            if name.startswith(versions):
                subset.update(_of_version(instances, name[len(versions) :]), self._policy.ejection)


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
