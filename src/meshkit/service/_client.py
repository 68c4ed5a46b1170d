"""Calling services by name: discovery, load balancing, ejection, retries and deadlines.

``ServiceClient.request("orders", "POST", "/orders", json=...)``:

1. instances come from the ``Directory`` cache (no registry round trip);
2. power-of-two-choices picks one, skipping instances already tried in this
   call and instances ejected after consecutive failures (a circuit breaker
   per instance, as Envoy's outlier detection does it);
3. the attempt gets whatever is left of the deadline: the call's own timeout,
   or less if the request being served has a shorter one, and the time left
   is sent on in ``x-meshkit-timeout-ms``;
4. a failure is retried on another instance when that is safe: a refused
   connection always (nothing was sent), a dropped connection or a 502, 503
   or 504 only for idempotent requests, within the retry policy and budget.

A response, even a 5xx one, is returned as it is. When nothing can serve the
call, ``ServiceUnavailableError`` names the service and says why; when the
deadline runs out, ``DeadlineExceededError`` does.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterable
from typing import Any

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.errors import (
    ConfigError,
    ConnectError,
    ConnectTimeoutError,
    DeadlineExceededError,
    MeshkitError,
    PeerError,
    ReadTimeoutError,
    ServiceUnavailableError,
    UsageError,
)
from meshkit.http import IDEMPOTENT_METHODS, HTTPClient, Response
from meshkit.policy import (
    BreakerConfig,
    RetryPolicy,
)
from meshkit.policy import _check as check
from meshkit.registry import Instance
from meshkit.service._deadline import TIMEOUT_HEADER, current_deadline
from meshkit.service._directory import Directory
from meshkit.service._instances import InstanceSet

__all__ = ["CallPolicy", "ServiceClient"]

_RETRYABLE_STATUS = frozenset({502, 503, 504})
_JSON = (b"content-type", b"application/json")


class CallPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How calls to other services behave.

    ``timeout`` is a call's default deadline. ``ejection`` configures the
    per-instance breaker: by default 3 consecutive failures eject an
    instance for 5 s, growing to 60 s while it keeps failing (Envoy ejects
    after 5 for 30 s; a mesh on one machine recovers faster, and the
    registry drops a dead instance within its TTL anyway).
    """

    timeout: float = 10.0
    connect_timeout: float = 2.0
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    ejection: BreakerConfig = msgspec.field(
        default_factory=lambda: BreakerConfig(
            consecutive_failures=3,
            failure_rate=None,
            open_for=5.0,
            open_for_max=60.0,
            half_open_successes=1,
        )
    )
    retry_ratio: float = 0.2
    retry_min_concurrency: int = 3

    def __post_init__(self) -> None:
        check.seconds("timeout", self.timeout)
        check.seconds("connect_timeout", self.connect_timeout)


class ServiceClient:
    """Calls other services by name. Share one per process; close with ``aclose()``."""

    def __init__(
        self,
        directory: Directory,
        *,
        http: HTTPClient | None = None,
        policy: CallPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.directory = directory
        self.policy = policy or CallPolicy()
        self._owns_http = http is None
        self._http = http or HTTPClient()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._upstreams: dict[str, InstanceSet] = {}
        directory.listen(self._on_change)

    async def get(self, service: str, path: str, **options: Any) -> Response:
        return await self.request(service, "GET", path, **options)

    async def post(self, service: str, path: str, **options: Any) -> Response:
        return await self.request(service, "POST", path, **options)

    async def put(self, service: str, path: str, **options: Any) -> Response:
        return await self.request(service, "PUT", path, **options)

    async def delete(self, service: str, path: str, **options: Any) -> Response:
        return await self.request(service, "DELETE", path, **options)

    async def request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: object = None,
        body: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        # Not an asyncio.timeout's job: the deadline is split across retries
        # and sent on to the callee.
        timeout: float | None = None,  # noqa: ASYNC109
        idempotent: bool | None = None,
    ) -> Response:
        """Call ``method path`` on an instance of ``service``; see the module docstring.

        ``json`` is encoded as the body. ``idempotent`` overrides what the
        method implies (POST is not, GET and PUT are) for retry decisions.
        """
        now = self._clock.monotonic()
        expires_at = self._expires_at(now, timeout)
        if json is not None:
            body = msgspec.json.encode(json)
            headers = [*headers, _JSON]
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        upstream = self._upstreams.get(service) or await self._find(service, expires_at - now)
        run = self.policy.retry.start(now, rng=self._rng, budget=upstream.budget)
        tried: set[str] = set()
        last_error = ""
        last_response: Response | None = None
        try:
            while True:
                now = self._clock.monotonic()
                remaining = expires_at - now
                if remaining <= 0:
                    raise DeadlineExceededError(
                        f"{method} {service}{path}: the deadline passed after {run.attempts}"
                        f" attempt(s){'; the last said: ' + last_error if last_error else ''}"
                    )
                chosen = upstream.pick(now, tried)
                if chosen is None:
                    if last_response is not None:
                        return last_response  # nowhere else to try: the answer we have
                    raise ServiceUnavailableError(service, upstream.why_nothing(tried, last_error))
                key, ticket = chosen
                tried.add(key)
                outcome = await self._attempt(
                    upstream,
                    key,
                    ticket,
                    method,
                    path,
                    headers,
                    body,
                    remaining,
                    idempotent=idempotent,
                )
                if isinstance(outcome, Response):
                    if outcome.status not in _RETRYABLE_STATUS:
                        run.succeeded(self._clock.monotonic())
                        return outcome
                    last_error, last_response = f"{outcome.status} from {key}", outcome
                    retryable, retry_after = idempotent, _retry_after(outcome)
                else:
                    last_error = str(outcome)
                    # No connection means nothing was sent: any call may go elsewhere.
                    unsent = isinstance(outcome, ConnectError | ConnectTimeoutError)
                    retryable, retry_after = idempotent or unsent, None
                now = self._clock.monotonic()
                decision = run.failed(now, retryable=retryable, retry_after=retry_after)
                if decision.retry and now + decision.delay < expires_at:
                    await self._clock.sleep(decision.delay)
                    continue
                if isinstance(outcome, Response):
                    return outcome  # the answer we have, since no retry can follow
                if now >= expires_at:
                    raise DeadlineExceededError(
                        f"{method} {service}{path}: the deadline passed;"
                        f" the last said: {last_error}"
                    ) from outcome
                raise ServiceUnavailableError(
                    service, f"{run.attempts} attempt(s) failed; the last said: {last_error}"
                ) from outcome
        finally:
            run.close(self._clock.monotonic())

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- one attempt --------------------------------------------------------

    async def _attempt(
        self,
        upstream: InstanceSet,
        key: str,
        ticket: int,
        method: str,
        path: str,
        headers: Iterable[tuple[bytes, bytes]],
        body: bytes,
        remaining: float,
        *,
        idempotent: bool,
    ) -> Response | PeerError | DeadlineExceededError:
        """Send once to one instance, within ``remaining`` seconds; the response, or the error."""
        instance = upstream.instances[key]
        breaker = upstream.breakers[key]
        sent = [*headers, (TIMEOUT_HEADER, b"%d" % max(1, int(remaining * 1000)))]
        connect = self.policy.connect_timeout
        start = self._clock.monotonic()
        try:
            response = await self._http.send(
                method,
                instance.host,
                instance.port,
                path,
                headers=sent,
                body=body,
                connect=connect if connect < remaining else remaining,
                read=remaining,
                # One bound for waiting, connecting, reading and any resend.
                deadline=asyncio.get_running_loop().time() + remaining,
                idempotent=idempotent,
            )
        except (PeerError, DeadlineExceededError) as error:
            end = self._clock.monotonic()
            if isinstance(error, ReadTimeoutError) and remaining < self.policy.timeout:
                # The caller's short budget ran out, not the instance's patience:
                # counting it would let impatient callers eject healthy instances.
                breaker.release(ticket)
                upstream.balancer.cancel(key)
            else:
                breaker.record(ticket, end, success=False, duration=end - start)
                upstream.balancer.complete(key, end, end - start, success=False)
            return error
        except BaseException:
            breaker.release(ticket)
            upstream.balancer.cancel(key)
            raise
        end = self._clock.monotonic()
        ok = response.status not in _RETRYABLE_STATUS
        breaker.record(ticket, end, success=ok, duration=end - start)
        upstream.balancer.complete(key, end, end - start, success=ok)
        return response

    # -- per-service state ----------------------------------------------------

    def _expires_at(self, now: float, timeout: float | None) -> float:
        """When this call must be over: its own timeout, or the served request's deadline."""
        if timeout is None:
            timeout = self.policy.timeout  # checked once, in CallPolicy
        else:
            check.seconds("timeout", timeout)
        expires_at = now + timeout
        inherited = current_deadline()
        if inherited is not None and inherited.expires_at < expires_at:
            return inherited.expires_at
        return expires_at

    async def _find(self, service: str, remaining: float) -> InstanceSet:
        """The service's state, fetching its instances the first time, within the deadline."""
        try:
            async with asyncio.timeout(remaining):
                return await self._upstream(service)
        except TimeoutError as error:
            raise DeadlineExceededError(
                f"looking up {service!r} in the registry outlasted the call's deadline"
            ) from error
        except MeshkitError as error:
            if isinstance(error, UsageError) and not isinstance(error, ConfigError):
                raise
            raise ServiceUnavailableError(
                service, f"the registry cannot be reached to find it: {error}"
            ) from error

    async def _upstream(self, service: str) -> InstanceSet:
        instances = await self.directory.instances(service)
        upstream = self._upstreams.get(service)
        if upstream is None:
            upstream = self._upstreams[service] = InstanceSet(service, self.policy, self._rng)
            upstream.update(instances, self.policy.ejection)
        return upstream

    def _on_change(self, service: str, instances: tuple[Instance, ...]) -> None:
        upstream = self._upstreams.get(service)
        if upstream is not None:
            upstream.update(instances, self.policy.ejection)


def _retry_after(response: Response) -> float | None:
    """Seconds from a Retry-After header in the delay-seconds form (RFC 9110, 10.2.3)."""
    for name, value in response.headers:
        if name == b"retry-after":
            match = _DELAY.fullmatch(value.strip())
            return float(match.group()) if match else None
    return None


_DELAY = re.compile(rb"[0-9]{1,9}")
