"""The gateway process: the proxy engine with the edge filters, fed by the registry."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import IO

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.gateway._config import GatewayConfig
from meshkit.gateway._cors import Cors
from meshkit.gateway._filters import ApiKeys, ClientLimits, Ready, Routes, Upstreams
from meshkit.gateway._global import GlobalLimits
from meshkit.gateway._jwt import JwtAuth
from meshkit.http import Timeouts
from meshkit.policy import RetryPolicy
from meshkit.proxy import Exchange, Filter, Forwarder, Forwarding, ProxyServer
from meshkit.ratelimit import LimitStore, MemoryLimitStore
from meshkit.registry import Registry
from meshkit.service._client import CallPolicy
from meshkit.service._directory import Directory

__all__ = ["Gateway"]


class AccessLog:
    """One JSON line per request, written to ``stream`` (standard output by default)."""

    def __init__(self, stream: IO[bytes] | None = None) -> None:
        self._stream = stream or sys.stdout.buffer
        self._encoder = msgspec.json.Encoder()

    def __call__(self, record: Exchange) -> None:
        self._stream.write(self._encoder.encode(record) + b"\n")
        self._stream.flush()


class Gateway:
    """``start()`` listens on the configured address; ``aclose()`` drains and stops."""

    def __init__(
        self,
        config: GatewayConfig,
        registry: Registry,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        access_log: AccessLog | None = None,
        project_dir: Path | None = None,
    ) -> None:
        self.config = config
        clock = clock or SystemClock()
        self.directory = Directory(registry, clock=clock, rng=rng)
        policy = CallPolicy(retry=RetryPolicy(attempts=config.attempts, timeout=config.timeout))
        self.upstreams = Upstreams(
            self.directory,
            clock,
            timeout=config.timeout,
            rng=rng,
            policy=policy,
            breaker=config.breaker,
            routes=config.routes,
        )
        forwarder = Forwarder(
            # At the edge nothing a client says about itself is believed.
            forwarding=Forwarding(pseudonym="meshkit-gateway", trust_forwarded=False),
            timeouts=Timeouts(connect=config.connect_timeout, read=config.try_timeout),
        )
        filters: list[Filter] = [
            Ready(),
            *([Cors(config.cors)] if config.cors else []),
            Routes(config),
            ApiKeys(config.api_keys),
            *([JwtAuth(config.jwt, project_dir or Path.cwd())] if config.jwt else []),
            ClientLimits(config, clock),
        ]
        self.limit_store: LimitStore | None = None
        if config.global_limits:
            self.limit_store = _limit_store(config, clock)
            fail_open = config.redis is None or config.redis.on_unreachable == "open"
            filters.append(
                GlobalLimits(
                    config.global_limits, self.limit_store, fail_open=fail_open, clock=clock
                )
            )
        filters.append(self.upstreams)
        self.server = ProxyServer(filters, forwarder, retrier=self.upstreams)
        if access_log is not None:
            self.server.on_exchange.append(access_log)

    async def start(self) -> tuple[str, int]:
        return await self.server.start(self.config.host, self.config.port)

    async def aclose(self, grace: float = 10.0) -> None:
        await self.server.aclose(grace=grace)
        await self.directory.aclose()
        if self.limit_store is not None:
            await self.limit_store.aclose()


def _limit_store(config: GatewayConfig, clock: Clock) -> LimitStore:
    if config.redis is None:
        return MemoryLimitStore(clock=clock)
    from meshkit.ratelimit.redis import RedisLimitStore  # lazily: redis is an extra

    redis = config.redis
    return RedisLimitStore(redis.url, prefix=redis.prefix, timeout=redis.timeout)
