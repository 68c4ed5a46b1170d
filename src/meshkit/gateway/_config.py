"""The ``[gateway]`` section of meshkit.toml.

    [gateway]
    port = 8000                       # host defaults to 127.0.0.1

    [[gateway.api_keys]]
    name = "shop-demo"                # who: the rate limit and the logs say this
    key = "shop-demo"
    rate = 100                        # requests per second, refilled continuously
    burst = 100                       # at most this many at once

    [[gateway.api_keys]]
    name = "shop-admin"
    key_env = "SHOP_ADMIN_KEY"        # or the key from this variable, read at start;
                                      # unset, the key is disabled (with a warning)

    [[gateway.routes]]
    path = "/api/orders"              # a prefix, or a pattern with {name} segments
    service = "orders"
    strip = "/api"                    # removed before the request goes upstream
    methods = ["GET", "POST"]         # optional: any method when absent
    auth = "api_key"                  # the default; "jwt" (see _jwt.py); "none": public
    keys = ["shop-admin"]             # optional: only these API keys (by name), others 403
    split = { "1.1.0" = 10, "1.0.0" = 90 }   # optional: weights by instance version
    sticky = "header:X-User-Id"       # optional: or "cookie:NAME"; one version per client

    [[gateway.global_limits]]       # shared by every gateway using the same Redis
    name = "orders-writes"
    rate = 50                         # requests per second
    burst = 50
    services = ["orders"]             # optional: every service when absent
    per = "client"                    # a bucket per client; "total": one for all

    [gateway.admin]                   # the admin API and /metrics, on a port of their own
    port = 8001                       # host defaults to 127.0.0.1; needs the project's token

    [gateway.tracing]                 # W3C trace context, spans sent with the access log
    ratio = 1.0                       # share of new traces sampled (0 to 1); a request
                                      # arriving with a trace context keeps its decision

    [gateway.redis]                   # without it, global limits live in this process
    url = "redis://127.0.0.1:6379/0"
    on_unreachable = "open"           # required: "open" admits, "closed" answers 503

``access_log = true`` (the default) makes each request a log record, sent
with the traces (never printed by ``meshkit up``; ``meshkit gateway
--access-log`` prints it too).

Routes need a key unless they say ``auth = "none"``: a forgotten setting
refuses requests rather than exposing a service. Requests without a key
(on public routes) are limited per client address by ``anonymous_rate``
and ``anonymous_burst``.
"""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from meshkit import _env
from meshkit.discovery import CallPolicy
from meshkit.errors import ConfigError
from meshkit.gateway._cors import CorsConfig
from meshkit.gateway._jwt import JwtConfig
from meshkit.http._grammar import TOKEN
from meshkit.policy import BreakerConfig, RateLimit, RetryPolicy, Route, RouteTable, WeightedSplit
from meshkit.proxy import route_breaker
from meshkit.ratelimit.redis import check_url
from meshkit.registry import check_host

__all__ = [
    "AdminConfig",
    "ApiKey",
    "GatewayConfig",
    "GlobalLimit",
    "RedisConfig",
    "RouteConfig",
    "TracingConfig",
]

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_WINDOW = 10 * 365 * 86_400.0  # seconds a global limit may take to refill


class ApiKey(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    key: str = ""  # the key itself, or ...
    key_env: str | None = None  # ... the environment variable holding it
    rate: float = 100.0
    burst: int = 100
    services: list[str] | None = None  # the services this key may call; None: all


class GlobalLimit(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    rate: float
    burst: int
    services: list[str] | None = None  # the services it applies to; None: all
    per: Literal["client", "total"] = "client"


class RedisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    url: str
    # No default: whether an outage of Redis lets every request through or
    # refuses every request is the operator's decision to make, knowingly.
    on_unreachable: Literal["open", "closed"]
    timeout: float = 0.25  # connecting and each call; past it Redis counts as unreachable
    prefix: str = "meshkit:ratelimit:"


class AdminConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    port: int
    host: str = "127.0.0.1"  # the admin API reloads and reveals: keep it off public addresses


class TracingConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[gateway.tracing]``: the sampling of traces the gateway starts.

    ``ratio`` 1.0 by default: OpenTelemetry's SDKs default to sampling
    every trace (``parentbased_always_on``), and a project's first order
    should be found in ``meshkit traces``. At high rates lower it: the
    gateway then records only that share of new traces, and the services
    follow its decision through the sampled flag.
    """

    ratio: float = 1.0


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    path: str
    service: str
    strip: str = ""
    methods: list[str] | None = None
    host: str | None = None
    auth: Literal["api_key", "jwt", "none"] = "api_key"
    # Weights by instance version, the first listed being the canary
    # (see meshkit.policy.WeightedSplit); None: every instance alike.
    split: dict[str, int] | None = None
    sticky: str | None = None  # "header:NAME" or "cookie:NAME": one version per client
    keys: list[str] | None = None  # the API keys (by name) allowed here; None: every key

    def sticky_source(self) -> tuple[Literal["header", "cookie"], bytes] | None:
        """Where the sticky key comes from, and the header's or cookie's name."""
        if self.sticky is None:
            return None
        kind, _, name = self.sticky.partition(":")
        if kind == "header":
            return "header", name.lower().encode("latin-1")
        return "cookie", name.encode("latin-1")


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 8000
    routes: list[RouteConfig] = msgspec.field(default_factory=list)
    api_keys: list[ApiKey] = msgspec.field(default_factory=list)
    jwt: JwtConfig | None = None
    global_limits: list[GlobalLimit] = msgspec.field(default_factory=list)
    redis: RedisConfig | None = None
    cors: CorsConfig | None = None
    admin: AdminConfig | None = None
    tracing: TracingConfig = msgspec.field(default_factory=TracingConfig)
    access_log: bool = True  # each request a log record, sent with the traces
    # One breaker per route and method ([gateway.breaker]): 5 failures in a
    # row, or half of at least 20 calls in 10 s, open it for 1 s at a time;
    # 2 successful probes close it (see meshkit.proxy.route_breaker).
    breaker: BreakerConfig = msgspec.field(default_factory=route_breaker)
    # Ejection of failing instances never takes out more than this share of
    # a service's instances, nor the last; below panic_threshold percent of
    # instances available, every instance takes traffic (see meshkit.discovery).
    max_ejection_percent: int = 50
    panic_threshold: int = 50
    anonymous_rate: float = 20.0
    anonymous_burst: int = 40
    connect_timeout: float = 2.0
    try_timeout: float = 10.0  # one attempt: connect and answer
    timeout: float = 30.0  # the whole request, retries included (504 past it)
    attempts: int = 3  # the first try included

    def __post_init__(self) -> None:
        check_host("gateway.host", self.host)
        if not 0 < self.port < 65536:
            raise ConfigError("gateway.port", f"must be between 1 and 65535, got {self.port}")
        if self.admin is not None:
            check_host("gateway.admin.host", self.admin.host)
            if not 0 < self.admin.port < 65536:
                raise ConfigError(
                    "gateway.admin.port", f"must be between 1 and 65535, got {self.admin.port}"
                )
            if self.admin.port == self.port:
                raise ConfigError("gateway.admin.port", "is also gateway.port")
        if not 0.0 <= self.tracing.ratio <= 1.0:
            raise ConfigError(
                "gateway.tracing.ratio", f"must be between 0 and 1, got {self.tracing.ratio}"
            )
        self._check_api_keys()
        _limit("gateway.anonymous", self.anonymous_rate, self.anonymous_burst)
        if self.jwt is not None:
            _limit("gateway.jwt", self.jwt.rate, self.jwt.burst)
        self._check_global_limits()
        timeouts = {
            "connect_timeout": self.connect_timeout,
            "try_timeout": self.try_timeout,
            "timeout": self.timeout,
        }
        for option, value in timeouts.items():
            if not 0 < value <= 3600:
                raise ConfigError(
                    f"gateway.{option}", f"must be between 0 and 3600 seconds, got {value}"
                )
        if not 1 <= self.attempts <= 10:
            raise ConfigError("gateway.attempts", f"must be between 1 and 10, got {self.attempts}")
        try:
            self.call_policy()
        except ConfigError as error:
            raise ConfigError(f"gateway.{error.key}", error.problem) from error
        if not self.routes:
            raise ConfigError("gateway.routes", "a gateway needs at least one route")
        for index, route in enumerate(self.routes):
            if route.auth == "jwt" and self.jwt is None:
                raise ConfigError(
                    f"gateway.routes[{index}].auth", "jwt needs a [gateway.jwt] section"
                )
            _check_split(f"gateway.routes[{index}]", route)
            self._check_route_keys(f"gateway.routes[{index}].keys", route)
        self.table()  # every route checked now, with its index in the message
        self._check_duplicates()

    def _check_api_keys(self) -> None:
        names = [key.name for key in self.api_keys]
        keys = [key.key for key in self.api_keys]
        for index, key in enumerate(self.api_keys):
            where = f"gateway.api_keys[{index}]"
            # Names are the keys' buckets, and no name can look like a JWT
            # subject's bucket ("jwt:SUB"): ':' is not allowed.
            _check_name(f"{where}.name", key.name)
            if key.name in names[:index]:
                raise ConfigError(f"{where}.name", f"{key.name!r} is used twice")
            if (key.key == "") == (key.key_env is None):
                raise ConfigError(f"{where}.key", "give the key, or key_env naming its variable")
            if key.key_env is not None:
                if not _ENV_NAME.fullmatch(key.key_env):
                    raise ConfigError(
                        f"{where}.key_env", f"is not a variable's name: {key.key_env!r}"
                    )
                continue
            if len(key.key) < 8:
                raise ConfigError(f"{where}.key", "must be 8 characters or more")
            if key.key in keys[:index]:
                # The second would silently replace the first, and its services with it.
                raise ConfigError(f"{where}.key", f"is also api_keys[{keys.index(key.key)}]'s key")
            _limit(where, key.rate, key.burst)

    def _check_duplicates(self) -> None:
        # The gateway finds a matched route's settings (auth, keys) by its
        # Route: of two alike, the second would never match, yet lend the
        # first its settings.
        seen: dict[Route, int] = {}
        for index, route in enumerate(self.route_list()):
            if route in seen:
                raise ConfigError(
                    f"gateway.routes[{index}]",
                    f"takes the same requests as routes[{seen[route]}]: merge them",
                )
            seen[route] = index

    def _check_route_keys(self, where: str, route: RouteConfig) -> None:
        if route.keys is None:
            return
        if route.auth != "api_key":
            raise ConfigError(
                where, f'names API keys, so it needs auth = "api_key", not {route.auth!r}'
            )
        if not route.keys:
            # An empty list would refuse every key: drop the route instead.
            raise ConfigError(where, "must name at least one API key")
        names = {key.name for key in self.api_keys}
        for name in route.keys:
            if name not in names:
                raise ConfigError(where, f"{name!r} is not the name of an API key")

    def _check_global_limits(self) -> None:
        names = [limit.name for limit in self.global_limits]
        for index, limit in enumerate(self.global_limits):
            where = f"gateway.global_limits[{index}]"
            _check_name(f"{where}.name", limit.name)
            if limit.name in names[:index]:
                raise ConfigError(f"{where}.name", f"{limit.name!r} is used twice")
            _limit(where, limit.rate, limit.burst)
            if limit.burst / limit.rate > _MAX_WINDOW:
                # Redis's Lua counts in doubles: beyond this, microseconds
                # since 1970 plus the window would lose precision.
                raise ConfigError(
                    f"{where}.burst",
                    f"refills in {limit.burst / limit.rate:.3g}s at this rate; at most"
                    f" {_MAX_WINDOW:.3g}s (ten years) is supported",
                )
        if self.redis is not None:
            check_url("gateway.redis.url", self.redis.url)
            if not 0 < self.redis.timeout <= 10:
                raise ConfigError(
                    "gateway.redis.timeout",
                    f"must be between 0 and 10 seconds, got {self.redis.timeout}",
                )

    def key_secrets(self) -> list[tuple[ApiKey, str | None]]:
        """Each API key with its secret: the key itself, or its variable's value (``None``
        when the variable is unset).

        Raises ``ConfigError`` naming the key whose variable holds fewer than
        8 characters, or the same secret as another key (one would take the
        other's place, and its rights). ``meshkit up`` calls it before
        anything starts; the gateway again at each start and reload.
        """
        found: list[tuple[ApiKey, str | None]] = []
        seen: dict[str, str] = {}  # secret: the name of the key holding it
        for index, key in enumerate(self.api_keys):
            secret = key.key if key.key_env is None else _env.secret(key.key_env)
            where = f"gateway.api_keys[{index}].{'key' if key.key_env is None else 'key_env'}"
            if secret is not None and len(secret) < 8:
                raise ConfigError(where, f"${key.key_env} must hold 8 characters or more")
            if secret is not None and secret in seen:
                raise ConfigError(where, f"is also the key of {seen[secret]!r}")
            if secret is not None:
                seen[secret] = key.name
            found.append((key, secret))
        return found

    def call_policy(self) -> CallPolicy:
        """How the gateway calls instances: attempts, the overall timeout, ejection's bounds."""
        return CallPolicy(
            retry=RetryPolicy(attempts=self.attempts, timeout=self.timeout),
            max_ejection_percent=self.max_ejection_percent,
            panic_threshold=self.panic_threshold,
        )

    def route_list(self) -> list[Route]:
        """The routes as policy ``Route`` values, in the file's order."""
        return [
            Route(
                service=route.service,
                path=route.path,
                # An empty list is refused by the table, not read as "any method".
                methods=None if route.methods is None else frozenset(route.methods),
                host=route.host,
                strip=route.strip,
            )
            for route in self.routes
        ]

    def table(self) -> RouteTable:
        """The routes as a ``RouteTable``; raises ``ConfigError`` naming a bad route."""
        try:
            return RouteTable(self.route_list())
        except ConfigError as error:
            raise ConfigError(f"gateway.{error.key}", error.problem) from error


def _check_name(key: str, name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(key, f"must be 1 to 64 letters, digits, '.', '_' or '-', got {name!r}")


def _check_split(where: str, route: RouteConfig) -> None:
    if route.split is not None:
        try:
            WeightedSplit(route.split)
        except ConfigError as error:
            raise ConfigError(f"{where}.{error.key}", error.problem) from error
    if route.sticky is not None:
        kind, _, name = route.sticky.partition(":")
        if kind not in ("header", "cookie") or not TOKEN.fullmatch(name):
            raise ConfigError(
                f"{where}.sticky",
                f'must be "header:NAME" or "cookie:NAME", got {route.sticky!r}',
            )
        if route.split is None:
            raise ConfigError(f"{where}.sticky", "sticks to a version of a split: add split")


def _limit(where: str, rate: float, burst: int) -> RateLimit:
    try:
        return RateLimit(capacity=burst, per_second=rate)
    except ConfigError as error:
        key = {"capacity": "burst", "per_second": "rate"}[error.key]
        name = f"{where}_{key}" if where.endswith("anonymous") else f"{where}.{key}"
        raise ConfigError(name, error.problem) from error
