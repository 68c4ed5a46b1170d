"""``RedisLimitStore``: rate limits shared by every gateway that uses one Redis.

Each request is one ``EVALSHA`` of the GCRA below: one round trip, and
atomic, since Redis runs a script with nothing else interleaved, so two
gateways can never both spend the last token. The script reads the time
from Redis (``TIME``) rather than taking it from the gateway, so gateways
on hosts whose clocks disagree still share one timeline.

Time is counted in whole microseconds, not the nanoseconds of
``meshkit.policy.GCRA``: Lua's numbers are doubles, exact only up to 2**53,
and the Unix time in nanoseconds (about 1.8e18) is past that, in
microseconds (1.8e15) well within it. As in the policy, the interval is
rounded up, so the effective rate never exceeds the configured one.

Keys expire once their bucket would be full again, so an idle client costs
Redis nothing. All of a request's keys must live on one Redis node (no
Redis Cluster spread): the script needs them together to be atomic.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any

from meshkit import _net
from meshkit._net import redacted
from meshkit._optional import require
from meshkit.errors import ConfigError, EnvironmentFaultError
from meshkit.policy import RateDecision, RateLimit

__all__ = ["RedisLimitStore", "check_url"]

_US = 1_000_000


def check_url(key: str, url: object) -> str:
    """A Redis URL: ``redis://`` or ``rediss://`` with a host (and a numeric port), or ``unix://``."""
    return _net.check_url(
        key, url, schemes=("redis", "rediss", "unix"), example="redis://127.0.0.1:6379/0"
    )


# KEYS: one per limit. ARGV[1]: the cost; then, per key, its interval and its
# capacity, in microseconds. Returns four numbers per key: 1 if that key
# alone admits, the whole tokens remaining, and the microseconds until a
# retry could be admitted and until the bucket is full again.
_GCRA = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local cost = tonumber(ARGV[1])
local tats, allowed, every = {}, {}, true
for i = 1, #KEYS do
  local need = cost * tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0)
  if tat < now then tat = now end
  tats[i] = tat + need
  allowed[i] = now >= tats[i] - tonumber(ARGV[2 * i + 1])
  every = every and allowed[i]
end
local out = {}
for i = 1, #KEYS do
  local interval, capacity = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local tat = tats[i]
  if every then
    redis.call('SET', KEYS[i], tat, 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  local retry = 0
  if not allowed[i] then
    retry = tat - capacity - now
    tat = tat - cost * interval
  end
  out[#out + 1] = allowed[i] and 1 or 0
  out[#out + 1] = math.floor((capacity - tat + now) / interval)
  out[#out + 1] = retry
  out[#out + 1] = tat - now
end
return out
"""


def _redis() -> Any:
    return require("redis.asyncio", extra="redis", what="global rate limits in Redis")


class RedisLimitStore:
    """A ``LimitStore`` in the Redis at ``url`` (``redis://host:port/db``).

    ``timeout`` bounds connecting and each call: past it the store counts as
    unreachable, and the gateway applies its configured failure mode rather
    than holding the request. ``connections`` bounds the connections open
    at once; a request finding them all busy waits for one.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "meshkit:ratelimit:",
        timeout: float = 0.25,
        connections: int = 32,
    ) -> None:
        self.url = check_url("url", url)
        self._shown = redacted(url)  # for messages: never a password
        self.prefix = prefix
        aioredis = _redis()
        retry = importlib.import_module("redis.asyncio.retry")
        backoff = importlib.import_module("redis.backoff")
        self._errors: tuple[type[BaseException], ...] = (
            importlib.import_module("redis.exceptions").RedisError,
            OSError,
        )
        # A blocking pool: a burst of requests waits (up to ``timeout``) for
        # one of ``connections`` rather than opening a connection each or
        # failing at once, as redis-py's default pool does when it is full.
        try:
            pool = aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=connections,
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # One immediate second try, for a pooled connection Redis
                # closed (a restart); redis-py's default of three with
                # backoff would hold requests for longer than failing over
                # to the configured failure mode does.
                retry=retry.Retry(backoff.NoBackoff(), 1),
            )
        except ValueError as error:  # a port that is not a number, a bad db
            raise ConfigError("url", f"{self._shown!r}: {error}") from error
        self._client = aioredis.Redis(connection_pool=pool)
        self._script = self._client.register_script(_GCRA)

    async def acquire(
        self, keys: Sequence[tuple[str, RateLimit]], cost: int = 1
    ) -> list[RateDecision]:
        args: list[int] = [cost]
        for _, limit in keys:
            interval = math.ceil(_US / limit.per_second)
            args += (interval, limit.capacity * interval)
        try:
            flat = await self._script(keys=[self.prefix + key for key, _ in keys], args=args)
        except self._errors as error:
            raise EnvironmentFaultError(
                f"the rate limit store at {self._shown} failed: {error}"
            ) from error
        return [
            RateDecision(
                allowed=flat[i] == 1,
                remaining=max(0, flat[i + 1]),
                retry_after=flat[i + 2] / _US,
                reset_after=flat[i + 3] / _US,
            )
            for i in range(0, len(flat), 4)
        ]

    async def aclose(self) -> None:
        await self._client.aclose(close_connection_pool=True)
