"""The gateway's filters, in the order a request meets them.

``Ready`` (the engine's) answers the gateway's own health check. ``Routes`` finds the
route (404, 405, or 400 for an ambiguous path) and rewrites the path.
``ApiKeys`` authenticates routes that need it (401 without a valid key,
403 for a key not allowed that service or route). ``ClientLimits`` gives each
client (API key, or address on public routes) a token bucket (429 with
``Retry-After``). The last filter, the engine's ``Upstreams`` (shared
with the sidecar), picks the instance.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math

from meshkit._clock import Clock
from meshkit.gateway._config import ApiKey, GatewayConfig, RouteConfig
from meshkit.policy import (
    BadPath,
    NoRoute,
    RateLimit,
    Route,
    RouteTable,
    TokenBucket,
    WeightedSplit,
)
from meshkit.proxy import (
    ProxyRequest,
    ProxyResponse,
    RequestOnly,
    RoutePolicy,
    RouteSplit,
    error_response,
)

__all__ = ["READY_PATH", "ApiKeys", "ClientLimits", "Routes"]

READY_PATH = "/.meshkit/gateway/ready"

log = logging.getLogger("meshkit.gateway")


class Routes(RequestOnly):
    """The route table: which service, and the path it gets."""

    def __init__(self, config: GatewayConfig) -> None:
        routes = config.route_list()
        self.table = RouteTable(routes)
        # A matched Route leads back to its configuration, and the settings
        # later filters act on, made once.
        self._configs: dict[Route, RouteConfig] = dict(zip(routes, config.routes, strict=True))
        self._policies: dict[Route, RoutePolicy] = {
            route: _policy(found) for route, found in self._configs.items()
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
        request.route = route.path
        request.service = route.service
        request.policy = self._policies[found.route]
        request.path = found.path
        return None


def _policy(route: RouteConfig) -> RoutePolicy:
    split = route.split
    return RoutePolicy(
        auth=route.auth,
        keys=None if route.keys is None else frozenset(route.keys),
        split=None if split is None else RouteSplit(WeightedSplit(split), route.sticky_source()),
    )


def _digest(key: str | bytes) -> bytes:
    # Keys are looked up by their hash, so a lookup's timing says nothing
    # about how much of a guessed key was right.
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class ApiKeys(RequestOnly):
    """``X-API-Key`` on every route that does not say ``auth = "none"``.

    A key given by ``key_env`` is read from the environment when the
    filter is made, at start and on each reload (see
    ``GatewayConfig.key_secrets``). Unset, that key is disabled, with a
    warning: an operator who did not set it has no key to present anyway.
    """

    def __init__(self, config: GatewayConfig) -> None:
        self._keys: dict[bytes, ApiKey] = {}
        for key, secret in config.key_secrets():
            if secret is None:
                log.warning("the API key %r is disabled: $%s is not set", key.name, key.key_env)
                continue
            self._keys[_digest(secret)] = key

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        policy = request.policy
        if policy.auth != "api_key":
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
        if key.services is not None and request.service not in key.services:
            return error_response(
                403, f"the key {key.name!r} may not call {request.service}", request.request_id
            )
        if policy.keys is not None and key.name not in policy.keys:
            return error_response(
                403,
                f"the key {key.name!r} may not call {request.method} {request.route}",
                request.request_id,
            )
        request.identity = key.name
        return None


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
        name = request.identity
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
            request.rate_limit = fields
            return None
        retry = str(max(1, math.ceil(decision.retry_after))).encode("ascii")
        return error_response(
            429,
            f"rate limit of {limit.per_second:g}/s (burst {limit.capacity}) reached",
            request.request_id,
            headers=[(b"retry-after", retry), *fields],
        )

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        fields = request.rate_limit
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
    name, policy_field = _policy_field(policy, limit)
    return [
        (b"ratelimit-policy", policy_field),
        (b"ratelimit", b'"%s";r=%d;t=%d' % (name, remaining, math.ceil(reset_after))),
    ]


@functools.lru_cache(maxsize=1024)
def _policy_field(policy: str, limit: RateLimit) -> tuple[bytes, bytes]:
    """The policy's name and its ``RateLimit-Policy`` value: the same for every request."""
    window = max(1, math.ceil(limit.capacity / limit.per_second))
    name = policy.encode("ascii")
    return name, b'"%s";q=%d;w=%d' % (name, limit.capacity, window)
