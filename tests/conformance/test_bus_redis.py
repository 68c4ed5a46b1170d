"""The bus conformance suite against Redis Streams on the machine's Redis."""

import secrets
from collections.abc import AsyncIterator

import pytest

from meshkit.bus import Bus
from meshkit.bus.redis import RedisBus
from meshkit.errors import ConfigError, EnvironmentFaultError
from meshkit.testing.conformance import BusConformance
from meshkit.testing.servers import backend_missing, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


class TestRedisBus(BusConformance):
    @pytest.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        prefix = f"meshkit-test:{secrets.token_hex(6)}:"
        bus = RedisBus(REDIS_URL, prefix=prefix, timeout=2.0)
        try:
            await bus.dead_letters()
        except EnvironmentFaultError:
            await bus.aclose()
            backend_missing(
                "Redis at 127.0.0.1:6379", "install it with: apt-get install redis-server"
            )
        try:
            yield bus
        finally:
            client = bus._client  # cleanup only: every key this test made
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await bus.aclose()


async def test_an_unreachable_redis_is_an_environment_fault_naming_it() -> None:
    """Nothing listening: publishing raises EnvironmentFaultError with the URL."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = RedisBus(url, timeout=0.5)
    try:
        with pytest.raises(EnvironmentFaultError, match=url):
            await bus.publish("order.created", {})
    finally:
        await bus.aclose()


async def test_dead_letter_ids_must_look_like_stream_ids() -> None:
    bus = RedisBus(REDIS_URL)
    try:
        with pytest.raises(ConfigError, match="1700000000000-0"):
            await bus.dead_letter("12; FLUSHALL")
    finally:
        await bus.aclose()
