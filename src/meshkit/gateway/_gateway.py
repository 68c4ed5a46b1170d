"""The gateway process: the proxy engine with the edge filters, fed by the registry."""

from __future__ import annotations

import asyncio
import random
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.discovery import Directory
from meshkit.errors import ConfigError, EnvironmentFaultError
from meshkit.gateway._access import AccessRecords
from meshkit.gateway._admin import AdminApi
from meshkit.gateway._config import GatewayConfig
from meshkit.gateway._cors import Cors
from meshkit.gateway._filters import READY_PATH, ApiKeys, ClientLimits, Routes
from meshkit.gateway._global import GlobalLimits
from meshkit.gateway._jwt import JwtAuth
from meshkit.http import Timeouts
from meshkit.observe import Exporter, Identity, Recorder, RecorderCollector, Sampler, Sink
from meshkit.proxy import (
    Filter,
    Forwarder,
    Forwarding,
    ProxyMetrics,
    ProxyServer,
    Ready,
    Tracing,
    Upstreams,
)
from meshkit.ratelimit import LimitStore, MemoryLimitStore
from meshkit.registry import Registry

__all__ = ["Gateway"]


class AccessLog:
    """One JSON line per record (a request, a span), to ``stream`` (default: standard output).

    Lines are flushed at most ``FLUSH_EVERY`` seconds after they are written,
    and by ``flush()``: a flush is a system call, and one per request would
    cost the proxy more than writing the record does.
    """

    FLUSH_EVERY = 0.2

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream or sys.stdout.buffer
        self._encoder = msgspec.json.Encoder()
        self._flush_timer: asyncio.TimerHandle | None = None

    def __call__(self, record: msgspec.Struct) -> None:
        self._stream.write(self._encoder.encode(record) + b"\n")
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._stream.flush()


class Gateway:
    """``start()`` listens on the configured address; ``aclose()`` drains and stops.

    ``reload(config)`` swaps in a new configuration without dropping a
    connection: requests in flight finish under the filters they started
    with. ``metrics`` counts every request; ``[gateway.admin]`` serves them
    and the admin API on a listener of its own, which needs ``admin_token``.

    With ``telemetry`` (a ``meshkit.observe.Sink``: the control plane, a
    collector), each request carries W3C trace context upstream, sampled
    as ``[gateway.tracing]`` says; sampled ones are recorded as a SERVER
    span and a CLIENT span per attempt, and with ``access_log`` every
    request is a log record too, all sent in the background as
    ``service.name`` "gateway", ``service.instance.id`` ``instance``.
    ``recorder`` holds them meanwhile (its counts are in ``metrics``).
    """

    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        access_log: AccessLog | None = None,
        project_dir: Path | None = None,
        admin_token: str | None = None,
        reloader: Callable[[], GatewayConfig] | None = None,
        telemetry: Sink | None = None,
        instance: str = "",
    ) -> None:
        if config.admin is not None and not admin_token:
            raise ConfigError("gateway.admin", "the admin API needs a token (MESHKIT_TOKEN)")
        self.config = config
        self._clock = clock = clock or SystemClock()
        self._project_dir = project_dir or Path.cwd()
        self.directory = Directory(registry, clock=clock, rng=rng)
        self.upstreams = Upstreams(self.directory, clock, rng=rng)
        self.client_limits: ClientLimits | None = None
        self.global_limits: GlobalLimits | None = None
        self.limit_store: LimitStore | None = (
            _limit_store(config, clock) if config.global_limits else None
        )
        self.recorder: Recorder | None = None
        self.exporter: Exporter | None = None
        self._tracing: Tracing | None = None
        if telemetry is not None:
            self.recorder = Recorder(ratio=config.tracing.ratio, rng=rng)
            resource = Identity(service="gateway", instance=instance).resource()
            self.exporter = Exporter(self.recorder, telemetry, resource=resource, clock=clock)
            self._tracing = Tracing(self.recorder, clock, server=True, client=True)
        forwarder = Forwarder(
            # At the edge nothing a client says about itself is believed.
            forwarding=Forwarding(pseudonym="meshkit-gateway", trust_forwarded=False),
            timeouts=Timeouts(connect=config.connect_timeout, read=config.try_timeout),
        )
        self.server = ProxyServer(self._filters(config), forwarder, retrier=self.upstreams)
        self.metrics = ProxyMetrics(self.upstreams.breakers, prefix="meshkit_gateway")
        self.server.on_exchange.append(self.metrics.observe)
        if self.recorder is not None:
            self.metrics.registry.register(RecorderCollector(self.recorder, "meshkit_gateway"))
            if config.access_log:
                self.server.on_exchange.append(AccessRecords(self.recorder, clock))
        self._access_log = access_log
        if access_log is not None:
            self.server.on_exchange.append(access_log)
        self.admin = None
        if config.admin is not None and admin_token:
            self.admin = AdminApi(self, token=admin_token, reloader=reloader)

    def _filters(self, config: GatewayConfig) -> list[Filter]:
        """The chain for ``config``, keeping what the running one has learned."""
        client_limits = ClientLimits(config, self._clock, previous=self.client_limits)
        global_limits = None
        if self.limit_store is not None and config.global_limits:
            fail_open = config.redis is None or config.redis.on_unreachable == "open"
            global_limits = GlobalLimits(
                config.global_limits, self.limit_store, fail_open=fail_open, clock=self._clock
            )
        optional: list[Filter | None] = [
            Ready(READY_PATH),
            self._tracing,
            Cors(config.cors) if config.cors else None,
            Routes(config),
            ApiKeys(config),
            JwtAuth(config.jwt, self._project_dir) if config.jwt else None,
            client_limits,
            global_limits,
            self.upstreams,
        ]
        # Built without error: only now does anything running change.
        self.upstreams.configure(
            config.call_policy(), try_timeout=config.try_timeout, breaker=config.breaker
        )
        self.client_limits, self.global_limits = client_limits, global_limits
        if self.recorder is not None:
            self.recorder.sampler = Sampler(config.tracing.ratio)
        return [layer for layer in optional if layer is not None]

    def reload(self, config: GatewayConfig) -> None:
        """Use ``config`` from the next request on.

        Raises ``ConfigError`` naming a setting that only a restart can
        change (the addresses, the Redis, the admin API, the per-try
        timeouts of pooled connections), and leaves the running
        configuration as it was.
        """
        for name in _RESTART_ONLY:
            if getattr(config, name) != getattr(self.config, name):
                raise ConfigError(f"gateway.{name}", "changes only with a restart")
        if config.global_limits and self.limit_store is None:
            raise ConfigError("gateway.global_limits", "added only with a restart")
        if config.access_log != self.config.access_log:
            raise ConfigError("gateway.access_log", "changes only with a restart")
        self.server.filters = self._filters(config)
        self.config = config

    async def start(self) -> tuple[str, int]:
        """Listen; ``EnvironmentFaultError`` names the listener whose address cannot be had."""
        config = self.config
        address = await _listen("gateway", self.server.start, config.host, config.port)
        admin = config.admin
        if self.admin is not None and admin is not None:
            try:
                await _listen("gateway.admin", self.admin.start, admin.host, admin.port)
            except BaseException:
                await self.server.aclose(grace=0)
                raise
        if self.exporter is not None:
            self.exporter.start()
        return address

    async def aclose(self, grace: float = 10.0) -> None:
        if self.admin is not None:
            await self.admin.aclose()
        await self.server.aclose(grace=grace)
        if self._access_log is not None:
            self._access_log.flush()
        if self.exporter is not None:
            await self.exporter.aclose()
        await self.directory.aclose()
        if self.limit_store is not None:
            await self.limit_store.aclose()


# What a reload cannot change: each is held by something made once at start.
async def _listen(
    what: str, start: Callable[[str, int], Awaitable[tuple[str, int]]], host: str, port: int
) -> tuple[str, int]:
    try:
        return await start(host, port)
    except OSError as error:
        raise EnvironmentFaultError(f"{what}: cannot listen on {host}:{port}: {error}") from error


_RESTART_ONLY = ("host", "port", "admin", "redis", "connect_timeout", "try_timeout")


def _limit_store(config: GatewayConfig, clock: Clock) -> LimitStore:
    if config.redis is None:
        return MemoryLimitStore(clock=clock)
    from meshkit.ratelimit.redis import RedisLimitStore  # lazily: redis is an extra

    redis = config.redis
    return RedisLimitStore(redis.url, prefix=redis.prefix, timeout=redis.timeout)
