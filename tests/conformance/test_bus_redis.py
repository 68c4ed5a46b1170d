"""The bus conformance suite against Redis Streams on the machine's Redis."""

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import pytest

from meshkit._clock import Clock, SystemClock
from meshkit.bus import Bus, Delivery, Message, outgoing, subscribe
from meshkit.bus.redis import RedisBus, RedisConsumer
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    GroupLostError,
    InvalidArgumentError,
    NotFoundError,
    UsageError,
)
from meshkit.policy import Backoff, Redelivery
from meshkit.testing.conformance import BusConformance
from meshkit.testing.servers import backend_missing, free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


class SkewedClock(SystemClock):
    """The real clock, its wall time a day ahead: a member on a host whose clock is wrong."""

    __slots__ = ()

    def time(self) -> float:
        return super().time() + 86_400


@contextlib.asynccontextmanager
async def redis_bus(
    prefix: str | None = None, clock: Clock | None = None, connections: int = 100
) -> AsyncIterator[RedisBus]:
    """A bus under a prefix of its own, whose keys are deleted afterwards."""
    prefix = prefix or f"meshkit-test:{secrets.token_hex(6)}:"
    bus = RedisBus(REDIS_URL, prefix=prefix, timeout=2.0, clock=clock, connections=connections)
    try:
        await bus.dead_letters()
    except EnvironmentFaultError:
        await bus.aclose()
        backend_missing("Redis at 127.0.0.1:6379", "install it with: apt-get install redis-server")
    try:
        yield bus
    finally:
        client = bus._client  # cleanup only: every key this test made
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await bus.aclose()


class TestRedisBus(BusConformance):
    @pytest.fixture
    async def bus(self) -> AsyncIterator[Bus]:
        async with redis_bus() as bus:
            yield bus


QUICK = Redelivery(max_deliveries=2, backoff=Backoff(initial=0.3, maximum=60), ack_wait=1.0)
LONG = Redelivery(max_deliveries=2, backoff=Backoff(initial=60, maximum=60), ack_wait=1.0)


async def test_a_member_silent_on_the_last_delivery_makes_a_dead_letter() -> None:
    """Two deliveries both left unanswered past ack_wait: a dead letter, deliveries = max."""
    async with redis_bus() as bus:
        await bus.publish("order.created", {"n": 1}, message_id="silent")
        first = await bus.consumer("order.created", "g", redelivery=QUICK)
        second = await bus.consumer("order.created", "g", redelivery=QUICK)
        [one] = await first.fetch(1, wait=5)
        [two] = await second.fetch(1, wait=5)  # claimed after ack_wait
        assert (one.message.deliveries, two.message.deliveries) == (1, 2)
        assert await first.fetch(1, wait=1.5) == []  # the last delivery runs out here
        [letter] = await bus.dead_letters()
        assert (letter.message.id, letter.deliveries, letter.group) == ("silent", 2, "g")
        assert "not acked within ack_wait (1 s)" in letter.error


async def test_entries_held_past_ack_wait_are_found_behind_many_parked_ones() -> None:
    """1,100 failures waiting out a long backoff do not hide 10 abandoned deliveries."""
    async with redis_bus() as bus:
        await bus.publish_batch([outgoing("order.created", n) for n in range(1_110)])
        member = await bus.consumer("order.created", "g", redelivery=LONG)
        held = await member.fetch(1_110, wait=5)
        assert len(held) == 1_110
        for delivery in held[:1_100]:  # the oldest: a scan from the start meets them first
            await member.fail(delivery, "later")  # parked for a minute
        other = await bus.consumer("order.created", "g", redelivery=LONG)
        got = await other.fetch(10, wait=5)
        assert sorted(d.message.json() for d in got) == list(range(1_100, 1_110))  # type: ignore[type-var]


async def test_a_malformed_entry_becomes_a_dead_letter_and_the_rest_go_on() -> None:
    """An entry this bus did not write (no publish time) is dead-lettered, not retried."""
    async with redis_bus() as bus:
        await bus._client.xadd(bus._stream("order.created"), {"id": "odd", "p": b"{}"})
        await bus.publish("order.created", "fine")
        member = await bus.consumer("order.created", "g", redelivery=QUICK)
        [delivery] = await member.fetch(10, wait=5)
        assert delivery.message.json() == "fine"
        [letter] = await bus.dead_letters()
        assert letter.message.id == "odd"
        assert "malformed" in letter.error
        assert "no field 't'" in letter.error


async def test_backoffs_are_timed_by_the_server_not_by_a_members_wrong_clock() -> None:
    """A member a day ahead fails a message; a member on time gets it back after the backoff."""
    redelivery = Redelivery(max_deliveries=3, backoff=Backoff(initial=0.2, maximum=0.2))
    async with redis_bus() as on_time, redis_bus(on_time.prefix, SkewedClock()) as ahead:
        await on_time.publish("order.created", "x")
        wrong = await ahead.consumer("order.created", "g", redelivery=redelivery)
        right = await on_time.consumer("order.created", "g", redelivery=redelivery)
        try:
            [delivery] = await wrong.fetch(10, wait=5)
            await wrong.fail(delivery, "ValueError: no")
            async with asyncio.timeout(5):
                [again] = await right.fetch(10, wait=5)
            assert (again.message.id, again.message.deliveries) == (delivery.message.id, 2)
        finally:
            await wrong.aclose()
            await right.aclose()


async def test_a_publish_trims_entries_past_their_age_and_keeps_the_rest() -> None:
    """Entries from 1970 go at the next publish; without a max_age they would all stay."""
    async with redis_bus() as bus:
        stream = bus._stream("order.created")
        for ms in range(1, 301):  # three of Redis's 100-entry nodes, all ancient
            await bus._client.xadd(stream, {"id": f"old{ms}", "p": b"1", "t": "0"}, id=f"{ms}-0")
        keep = RedisBus(REDIS_URL, prefix=bus.prefix, max_age=None)
        try:
            await keep.publish("order.created", "kept")
        finally:
            await keep.aclose()
        assert await bus._client.xlen(stream) == 301
        await bus.publish("order.created", "young")
        entries = await bus._client.xrange(stream)
        assert len(entries) <= 100  # '~' trims whole nodes: what is left is the newest
        assert [e[1][b"p"] for e in entries[-2:]] == [b'"kept"', b'"young"']
    with pytest.raises(ConfigError) as caught:
        RedisBus(REDIS_URL, max_age=0)
    assert caught.value.key == "max_age"


async def test_a_century_of_retention_still_publishes() -> None:
    """A max_age reaching before 1970 trims nothing, instead of failing after appending."""
    async with redis_bus() as bus:
        long = RedisBus(REDIS_URL, prefix=bus.prefix, max_age=100 * 365 * 86_400)
        try:
            assert not (await long.publish("order.created", 1, message_id="once")).duplicate
        finally:
            await long.aclose()
        [(_, fields)] = await bus._client.xrange(bus._stream("order.created"))
        assert fields[b"h"] == b"{}"  # always written: older consumers read it


async def test_more_due_entries_than_lua_can_unpack_are_claimed() -> None:
    """9,000 parked entries due at once: one fetch claims them all (unpack stops near 8,000)."""
    async with redis_bus() as bus:
        stream, due = bus._stream("order.created"), f"{bus.prefix}due:order.created:g"
        member = await bus.consumer("order.created", "g", redelivery=QUICK)
        try:
            pipe = bus._client.pipeline(transaction=False)
            for n in range(9_000):
                pipe.xadd(stream, {"id": f"m{n}", "p": b"1", "h": b"{}", "t": "0"})
            await pipe.execute()
            parked = await bus._client.xreadgroup("g", "meshkit:parked", {stream: ">"})
            [(_, entries)] = parked
            await bus._client.zadd(due, {entry_id: 0 for entry_id, _ in entries})
            got = await member.fetch(10_000, wait=5)
            assert len(got) == 9_000
            assert await bus._client.zcard(due) == 0
        finally:
            await member.aclose()


async def test_a_malformed_entry_with_unreadable_headers_does_not_spoil_the_listing() -> None:
    async with redis_bus() as bus:
        await bus._client.xadd(
            bus._stream("order.created"), {"id": "odd", "p": b"{}", "h": b"not json"}
        )
        member = await bus.consumer("order.created", "g", redelivery=QUICK)
        try:
            assert await member.fetch(10, wait=0.5) == []
        finally:
            await member.aclose()
        [letter] = await bus.dead_letters()
        assert (letter.message.id, letter.message.headers) == ("odd", {})


async def test_a_subscription_joins_again_when_redis_lost_the_group() -> None:
    """The stream deleted (a flushed or restarted Redis): the member joins again and goes on."""
    async with redis_bus() as bus:
        seen: list[object] = []
        got = asyncio.Event()

        async def handle(message: Message) -> None:
            seen.append(message.json())
            got.set()

        async with subscribe(bus, "order.created", "g", handle, redelivery=QUICK):
            await bus._client.delete(bus._stream("order.created"))
            await bus.publish("order.created", "after the loss")
            await asyncio.wait_for(got.wait(), 20)
        assert seen == ["after the loss"]


async def test_a_group_redis_no_longer_has_is_lost_not_the_callers_fault() -> None:
    """NOGROUP (the group destroyed, or its stream deleted as by FLUSHDB) is GroupLostError, an
    environment fault and no UsageError; deleting a group of a topic without a stream is
    NotFoundError, not a Redis failure."""
    async with redis_bus() as bus:
        member = await bus.consumer("order.created", "g", redelivery=QUICK)
        try:
            await bus._client.xgroup_destroy(bus._stream("order.created"), "g")
            with pytest.raises(GroupLostError, match="NOGROUP") as caught:
                await member.fetch(1, wait=0)
            assert isinstance(caught.value, EnvironmentFaultError)
            assert not isinstance(caught.value, UsageError)
            await bus._client.delete(bus._stream("order.created"))
            with pytest.raises(GroupLostError, match="NOGROUP"):
                await member.fetch(1, wait=0)
            with pytest.raises(NotFoundError, match="no group"):
                await bus.delete_group("order.created", "g")
        finally:
            with contextlib.suppress(GroupLostError):
                await member.aclose()


async def test_a_member_that_leaves_holding_nothing_is_removed_from_the_group() -> None:
    async with redis_bus() as bus:
        member = await bus.consumer("order.created", "g", redelivery=QUICK)
        assert await member.fetch(1, wait=0) == []
        await member.aclose()
        consumers = await bus._client.xinfo_consumers(bus._stream("order.created"), "g")
        assert consumers == []


async def test_bad_options_and_arguments_are_refused_naming_them() -> None:
    """A window of 0 or a NaN wait: ConfigError; a one-string purge, a receipt of another
    backend: InvalidArgumentError (not configuration)."""
    with pytest.raises(ConfigError, match="window"):
        RedisBus(REDIS_URL, window=0)
    async with redis_bus() as bus:
        with pytest.raises(InvalidArgumentError, match="ids") as caught:
            await bus.purge("5")  # type: ignore[arg-type]
        assert not isinstance(caught.value, ConfigError)
        member = await bus.consumer("order.created", "g", redelivery=QUICK)
        message = Message(id="m", topic="order.created", payload=b"{}")
        with pytest.raises(InvalidArgumentError, match="receipt") as caught:
            await member.ack([Delivery(message=message, receipt="7.1")])
        assert not isinstance(caught.value, ConfigError)
        with pytest.raises(ConfigError, match="wait"):
            await member.fetch(1, wait=float("nan"))


def test_a_retry_is_looked_for_as_often_as_the_shortest_backoff() -> None:
    """With ack_wait 30 s, a failure due after 0.3 s is not found 5 s late."""
    bus = RedisBus(REDIS_URL)
    policy = Redelivery(backoff=Backoff(initial=0.3, maximum=60), ack_wait=30)
    member = RedisConsumer(bus, "order.created", "g", "me", policy)
    assert member._recheck == 0.3


async def test_an_unreachable_redis_is_an_environment_fault_naming_it() -> None:
    """Nothing listening: publishing raises EnvironmentFaultError with the URL."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    bus = RedisBus(url, timeout=0.5)
    try:
        with pytest.raises(EnvironmentFaultError, match=url):
            await bus.publish("order.created", {})
    finally:
        await bus.aclose()


async def test_a_password_in_the_url_is_never_in_a_message() -> None:
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    bus = RedisBus(url, timeout=0.5)
    try:
        with pytest.raises(EnvironmentFaultError) as caught:
            await bus.publish("order.created", {})
        assert "s3cret" not in str(caught.value)
        assert "127.0.0.1" in str(caught.value)
    finally:
        await bus.aclose()


async def test_dead_letter_ids_must_look_like_stream_ids() -> None:
    bus = RedisBus(REDIS_URL)
    try:
        with pytest.raises(InvalidArgumentError, match="1700000000000-0"):
            await bus.dead_letter("12; FLUSHALL")
    finally:
        await bus.aclose()


async def test_a_burst_of_publishes_past_the_pool_waits_for_a_connection() -> None:
    """200 publishes at once on 4 connections: all stored, none refused as "Too many"."""
    async with redis_bus(connections=4) as bus:
        await asyncio.gather(*(bus.publish("burst", {"n": n}) for n in range(200)))
        consumer = await bus.consumer("burst", "g", redelivery=LONG)
        got: list[Delivery] = []
        while len(got) < 200:
            batch = await consumer.fetch(100, wait=2)
            assert batch, f"only {len(got)} of 200 came back"
            got += batch
        assert sorted(d.message.json()["n"] for d in got) == list(range(200))


def test_a_pool_of_no_connections_is_refused() -> None:
    with pytest.raises(ConfigError, match="connections"):
        RedisBus(REDIS_URL, connections=0)
