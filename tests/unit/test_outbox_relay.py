"""The outbox relay's driving, in fake time: nudges, polls, backoff, batches, stopping."""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest

from meshkit.bus import Outgoing, Published, outgoing
from meshkit.bus._outbox import OutboxEntry, OutboxRelay
from meshkit.errors import ConfigError, EnvironmentFaultError, UsageError
from meshkit.policy import Backoff
from meshkit.testing import FakeClock
from meshkit.testing._outbox import RecordingBus

TOPIC = "order.created"


class MemoryStore:
    """An outbox in a list, for one relay; ``claim_errors`` claims fail first."""

    def __init__(self) -> None:
        self.entries: list[OutboxEntry] = []
        self.claim_errors = 0
        self.holds: list[float] = []
        self.releases = 0
        self.closed = False
        self._seq = 0

    def add(self, *payloads: object) -> list[str]:
        ids = []
        for payload in payloads:
            self._seq += 1
            message = outgoing(TOPIC, payload)
            given = Outgoing(
                topic=message.topic, id=message.id, payload=message.payload, given_id=True
            )
            self.entries.append(OutboxEntry(seq=self._seq, message=given))
            ids.append(message.id)
        return ids

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        if self.claim_errors:
            self.claim_errors -= 1
            raise EnvironmentFaultError("the database is locked")
        self.holds.append(hold)
        return self.entries[:limit]

    async def sent(self, entries: Sequence[OutboxEntry]) -> None:
        done = {e.seq for e in entries}
        self.entries = [e for e in self.entries if e.seq not in done]

    async def release(self) -> None:
        self.releases += 1

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class TimedBus(RecordingBus):
    """Also notes when each publish began."""

    times: list[float] = field(default_factory=list)

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        self.times.append(self.clock.monotonic())
        return await super().publish_batch(messages)


def test_notify_starts_a_pass_without_waiting_for_the_interval() -> None:
    """An event committed at t=5 goes out at t=5 when nudged, not at the 60 s poll."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), RecordingBus(clock=clock)
        async with OutboxRelay(store, bus, interval=60, clock=clock) as relay:
            await clock.sleep(5)
            ids = store.add("a")
            relay.notify()
            await asyncio.wait_for(bus.wait_for(lambda b: len(b.sent) == 1), 1)
            assert clock.monotonic() == 5
        assert bus.ids() == ids
        assert store.entries == []

    clock.run(main())


def test_notify_from_another_thread_wakes_the_relay() -> None:
    """A sync handler committing in a worker thread can nudge the relay."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), RecordingBus(clock=clock)
        async with OutboxRelay(store, bus, interval=60, clock=clock) as relay:
            await clock.sleep(5)
            store.add("a")
            await asyncio.to_thread(relay.notify)
            await asyncio.wait_for(bus.wait_for(lambda b: len(b.sent) == 1), 1)

    clock.run(main())


def test_without_a_nudge_the_relay_polls_at_its_interval() -> None:
    """An event nobody notifies about goes out at the next poll."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), TimedBus(clock=clock)
        async with OutboxRelay(store, bus, interval=10, clock=clock):
            await clock.sleep(3)
            store.add("a")
            await bus.wait_for(lambda b: len(b.sent) == 1)
        assert bus.times == [10]

    clock.run(main())


def test_a_full_batch_is_followed_by_the_next_at_once() -> None:
    """250 waiting events go out in three batches without a poll between them."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), TimedBus(clock=clock)
        ids = store.add(*range(250))
        async with OutboxRelay(store, bus, batch=100, interval=10, clock=clock) as relay:
            await bus.wait_for(lambda b: len(b.sent) == 250)
        assert bus.times == [0, 0, 0]
        assert bus.ids() == ids
        assert relay.statistics.published == 250

    clock.run(main())


def test_while_the_bus_is_down_the_relay_backs_off_and_a_nudge_does_not_cut_it_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Attempts at 0, 1, 3, 7, 11 (backoff 1 s doubling to 4 s), then everything, in order."""
    caplog.set_level(logging.WARNING, logger="meshkit.bus.outbox")
    clock = FakeClock()

    async def main() -> list[str]:
        store, bus = MemoryStore(), TimedBus(clock=clock, down=True)
        ids = store.add("a", "b")
        backoff = Backoff(initial=1, maximum=4)
        async with OutboxRelay(store, bus, backoff=backoff, clock=clock) as relay:
            await clock.sleep(2)
            ids += store.add("c")
            relay.notify()  # during the wait from 1 to 3: no attempt at 2
            await bus.wait_for(lambda b: b.refused == 5)
            assert relay.statistics.failing == 5
            bus.down = False
            await bus.wait_for(lambda b: len(b.sent) == 3)
        assert bus.times == [0, 1, 3, 7, 11, 15]
        assert bus.ids() == ids
        assert (relay.statistics.failures, relay.statistics.failing) == (5, 0)
        assert store.releases == 5
        return ids

    a, b, c = clock.run(main())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5
    assert warnings[0].startswith(
        f"outbox: cannot publish 2 events, {a} ({TOPIC}) to {b} ({TOPIC}) "
        "(EnvironmentFaultError: the recording bus is down); they stay in the outbox"
    )
    assert f"3 events, {a} ({TOPIC}) to {c} ({TOPIC})" in warnings[-1]


def test_a_publish_longer_than_its_timeout_fails_and_is_tried_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bus that hangs counts as down after publish_timeout; the claim is released."""
    caplog.set_level(logging.WARNING, logger="meshkit.bus.outbox")
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), TimedBus(clock=clock, latency=20)
        [event] = store.add("a")
        backoff = Backoff(initial=10, maximum=10)
        relay = OutboxRelay(store, bus, publish_timeout=5, backoff=backoff, clock=clock)
        async with relay:
            await clock.sleep(6)
            assert (relay.statistics.failures, store.releases, bus.sent) == (1, 1, [])
            bus.latency = 0
            await bus.wait_for(lambda b: len(b.sent) == 1)
        assert bus.times == [0, 15]
        assert store.holds == [15, 15]  # three publish timeouts
        assert f"cannot publish event {event} ({TOPIC}) (TimeoutError" in caplog.text

    clock.run(main())


def test_a_database_error_backs_off_like_a_bus_error() -> None:
    """Claims that fail are retried after the backoff, and then the events go out."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), TimedBus(clock=clock)
        store.add("a")
        store.claim_errors = 2
        backoff = Backoff(initial=1, maximum=1)
        async with OutboxRelay(store, bus, backoff=backoff, clock=clock) as relay:
            await bus.wait_for(lambda b: len(b.sent) == 1)
        assert bus.times == [2]
        assert relay.statistics.failures == 2

    clock.run(main())


def test_an_unexpected_error_is_logged_with_its_traceback_and_the_relay_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in a bus adapter does not kill the relay, which would strand every later event."""
    caplog.set_level(logging.WARNING, logger="meshkit.bus.outbox")
    clock = FakeClock()

    @dataclass
    class BuggyOnce(RecordingBus):
        broken: bool = True

        async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
            if self.broken:
                self.broken = False
                raise RuntimeError("adapter bug")
            return await super().publish_batch(messages)

    async def main() -> None:
        store, bus = MemoryStore(), BuggyOnce(clock=clock)
        ids = store.add("a")
        async with OutboxRelay(store, bus, clock=clock):
            await bus.wait_for(lambda b: len(b.sent) == 1)
        assert bus.ids() == ids

    clock.run(main())
    [record] = [r for r in caplog.records if "adapter bug" in r.getMessage()]
    assert record.exc_info is not None


def test_closing_mid_publish_releases_the_claim_and_keeps_the_events() -> None:
    """aclose() cancels the publish; the events stay for the next relay; the store is closed."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), RecordingBus(clock=clock, latency=30)
        store.add("a")
        relay = OutboxRelay(store, bus, publish_timeout=60, clock=clock)
        await relay.start()
        await clock.sleep(1)  # the publish is under way
        await relay.aclose()
        assert (store.releases, len(store.entries), store.closed) == (1, 1, True)
        assert bus.sent == []
        await relay.aclose()  # again: nothing more to do

    clock.run(main())


async def test_a_relay_starts_once() -> None:
    relay = OutboxRelay(MemoryStore(), RecordingBus())
    await relay.start()
    with pytest.raises(UsageError, match="starts once"):
        await relay.start()
    await relay.aclose()
    with pytest.raises(UsageError, match="starts once"):
        await relay.start()


async def test_closing_a_relay_that_never_started_closes_its_store() -> None:
    store = MemoryStore()
    relay = OutboxRelay(store, RecordingBus())
    relay.notify()  # not started: nothing to wake, no error
    await relay.aclose()
    assert store.closed


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch", 0),
        ("batch", 2.5),
        ("batch", 10_001),
        ("interval", 0),
        ("publish_timeout", -1),
        ("publish_timeout", float("inf")),
        ("backoff", 1.0),
    ],
)
def test_bad_options_are_config_errors_naming_them(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        OutboxRelay(MemoryStore(), RecordingBus(), **{option: value})  # type: ignore[arg-type]
    assert caught.value.key == option
