"""The limit store conformance suite against the in-process store and a real Redis."""

import secrets
from collections.abc import AsyncIterator

import pytest

from meshkit.errors import ConfigError, EnvironmentFaultError
from meshkit.policy import RateLimit
from meshkit.ratelimit import LimitStore, MemoryLimitStore
from meshkit.ratelimit.redis import RedisLimitStore
from meshkit.testing.conformance import LimitStoreConformance
from meshkit.testing.servers import backend_missing, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


class TestMemoryLimitStore(LimitStoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[LimitStore]:
        store = MemoryLimitStore()
        yield store
        await store.aclose()


class TestRedisLimitStore(LimitStoreConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[LimitStore]:
        prefix = f"meshkit-test:{secrets.token_hex(6)}:"
        # The suite checks what is admitted, not how fast: the gateway's 0.25 s
        # (fail over rather than hold a request) is too short for 200 calls
        # queued on 32 connections on a loaded 2-core CI machine.
        store = RedisLimitStore(REDIS_URL, prefix=prefix, timeout=5.0)
        try:
            await store.acquire([("probe", RateLimit(capacity=1, per_second=1000))])
        except EnvironmentFaultError:
            await store.aclose()
            backend_missing(
                "Redis at 127.0.0.1:6379", "install it with: apt-get install redis-server"
            )
        try:
            yield store
        finally:
            client = store._client  # cleanup only: every key this run made
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await store.aclose()


async def test_an_unreachable_redis_is_an_environment_fault_naming_it() -> None:
    """Nothing listening: the store raises EnvironmentFaultError with its address."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    store = RedisLimitStore(url, timeout=0.5)
    try:
        with pytest.raises(EnvironmentFaultError, match=url):
            await store.acquire([("k", RateLimit(capacity=1, per_second=1))])
    finally:
        await store.aclose()


def test_a_url_that_is_not_redis_is_refused() -> None:
    """http://... is a ConfigError that shows the expected form."""
    with pytest.raises(ConfigError, match="redis://"):
        RedisLimitStore("http://127.0.0.1:6379")


async def test_the_memory_store_forgets_the_quietest_key_not_a_refused_one() -> None:
    """Past MAX_KEYS the oldest untouched key goes; one just refused is kept, still empty."""
    store = MemoryLimitStore()
    store.MAX_KEYS = 3
    one = RateLimit(capacity=1, per_second=0.01)
    assert (await store.acquire([("busy", one)]))[0].allowed
    for key in ("a", "b"):
        await store.acquire([(key, one)])
    assert not (await store.acquire([("busy", one)]))[0].allowed  # refused: now the newest
    await store.acquire([("c", one)])  # a fourth key: "a", the quietest, is forgotten
    assert not (await store.acquire([("busy", one)]))[0].allowed
    assert (await store.acquire([("a", one)]))[0].allowed
