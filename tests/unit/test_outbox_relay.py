"""The outbox relay's driving, in fake time: nudges, polls, backoff, batches, parking, stopping."""

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from meshkit import SystemClock
from meshkit.bus import Outgoing, Published, outgoing
from meshkit.bus._outbox import OutboxEntry, OutboxRelay, ParkedEntry
from meshkit.errors import ConfigError, EnvironmentFaultError, InvalidArgumentError, UsageError
from meshkit.policy import Backoff
from meshkit.testing import FakeClock
from meshkit.testing._outbox import RecordingBus

TOPIC = "order.created"


class MemoryStore:
    """An outbox in a list, for one relay; ``claim_errors`` claims and ``sent_errors`` removals
    fail first; with ``release_gate`` set, a release waits for it."""

    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self.entries: list[OutboxEntry] = []
        self.parked_entries: list[ParkedEntry] = []
        self.claim_errors = 0
        self.sent_errors = 0
        self.holds: list[float] = []
        self.releases = 0
        self.release_gate: asyncio.Event | None = None
        self.releasing = asyncio.Event()
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
        if self.sent_errors:
            self.sent_errors -= 1
            raise EnvironmentFaultError("the database is locked")
        done = {e.seq for e in entries}
        self.entries = [e for e in self.entries if e.seq not in done]

    async def park(self, entry: OutboxEntry, error: str) -> None:
        self.entries.remove(entry)
        self.parked_entries.append(
            ParkedEntry(seq=entry.seq, message=entry.message, error=error, parked=0.0)
        )

    async def parked(self, *, limit: int = 100) -> list[ParkedEntry]:
        return self.parked_entries[:limit]

    async def release(self) -> None:
        self.releasing.set()
        if self.release_gate is not None:
            await self.release_gate.wait()
        self.releases += 1

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class TimedBus(RecordingBus):
    """Also notes when each publish began, refused ones too."""

    times: list[float] = field(default_factory=list)

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        self.times.append(self.clock.monotonic())
        return await super().publish_batch(messages)


async def until(bus: RecordingBus, condition: Callable[[RecordingBus], bool]) -> None:
    """Until ``condition(bus)``, within 60 s (fake: a relay that stalls fails the test at once)."""
    await asyncio.wait_for(bus.wait_for(condition), 60)


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


async def test_notify_from_a_plain_thread_wakes_the_relay() -> None:
    """A sync handler committing in a thread of its own wakes a relay nothing else would wake."""
    real = SystemClock()
    store, bus = MemoryStore(), RecordingBus()
    async with OutboxRelay(store, bus, interval=3600) as relay:
        async with asyncio.timeout(5):
            while not store.holds:  # the first pass, which finds nothing
                await real.sleep(0)
        store.add("a")
        # A thread that calls notify() once the loop sleeps in its selector: no
        # timer is due before the 5 s below, no I/O comes, so only a nudge
        # that wakes the selector (call_soon_threadsafe) gets the event out.
        thread = threading.Timer(0.1, relay.notify)
        thread.start()
        try:
            await asyncio.wait_for(bus.wait_for(lambda b: len(b.sent) == 1), 5)
        finally:
            thread.join()


def test_without_a_nudge_the_relay_polls_at_its_interval() -> None:
    """An event nobody notifies about goes out at the next poll."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), TimedBus(clock=clock)
        async with OutboxRelay(store, bus, interval=10, clock=clock):
            await clock.sleep(3)
            store.add("a")
            await until(bus, lambda b: len(b.sent) == 1)
        assert bus.times == [10]

    clock.run(main())


def test_a_full_batch_is_followed_by_the_next_at_once() -> None:
    """250 waiting events go out in three batches without a poll between them."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), TimedBus(clock=clock)
        ids = store.add(*range(250))
        async with OutboxRelay(store, bus, batch=100, interval=10, clock=clock) as relay:
            await until(bus, lambda b: len(b.sent) == 250)
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
            await until(bus, lambda b: b.refused == 5)
            assert relay.statistics.failing == 5
            bus.down = False
            await until(bus, lambda b: len(b.sent) == 3)
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
            await until(bus, lambda b: len(b.sent) == 1)
        assert bus.times == [0, 15]
        assert f"cannot publish event {event} ({TOPIC}) (TimeoutError" in caplog.text

    clock.run(main())


@pytest.mark.parametrize(("publish_timeout", "store_timeout", "hold"), [(5, 1, 14), (10, 10, 60)])
def test_the_hold_covers_the_publish_and_the_store_calls_after_it(
    publish_timeout: float, store_timeout: float, hold: float
) -> None:
    """hold = 2 x (publish_timeout + 2 x the store's timeout): always past the store's timeout."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(timeout=store_timeout), RecordingBus(clock=clock)
        store.add("a")
        async with OutboxRelay(store, bus, publish_timeout=publish_timeout, clock=clock):
            await until(bus, lambda b: len(b.sent) == 1)
        assert store.holds[0] == hold

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
            await until(bus, lambda b: len(b.sent) == 1)
        assert bus.times == [2]
        assert relay.statistics.failures == 2

    clock.run(main())


def test_a_removal_that_fails_after_the_publish_says_the_events_go_out_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Published but not removed: the log says so, and the next pass publishes them again."""
    caplog.set_level(logging.WARNING, logger="meshkit.bus.outbox")
    clock = FakeClock()

    async def main() -> list[str]:
        store, bus = MemoryStore(), RecordingBus(clock=clock)
        ids = store.add("a")
        store.sent_errors = 1
        async with OutboxRelay(store, bus, clock=clock) as relay:
            await until(bus, lambda b: len(b.sent) == 2)
        assert bus.ids() == ids + ids
        assert (relay.statistics.published, relay.statistics.duplicates) == (1, 1)
        return ids

    [event] = clock.run(main())
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        f"outbox: published event {event} ({TOPIC}) but cannot remove them from the outbox"
        " (EnvironmentFaultError: the database is locked); they will be published again"
    )


def test_an_event_refused_for_good_is_parked_after_the_events_before_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The refused one is found by halves, each accepted half published once; the rest follow
    at once; an ERROR names the parked event and the bus's error."""
    caplog.set_level(logging.WARNING, logger="meshkit.bus.outbox")
    clock = FakeClock()

    async def main() -> tuple[list[str], str]:
        store, bus = MemoryStore(), TimedBus(clock=clock, dedup=False)
        ids = store.add(*range(8))
        bus.oversized = {ids[5]}
        async with OutboxRelay(store, bus, interval=60, clock=clock) as relay:
            await until(bus, lambda b: len(b.sent) == 7)
        assert bus.ids() == ids[:5] + ids[6:]
        # 0-7 refused, 0-3 taken, 4-7 refused, 4-5 refused, 4 taken, 5 refused; then 6-7.
        assert bus.times == [0] * 7
        assert [p.message.id for p in store.parked_entries] == [ids[5]]
        assert store.parked_entries[0].error.startswith("MessageRefusedError: payload: ")
        assert store.entries == []
        assert (relay.statistics.published, relay.statistics.parked) == (7, 1)
        assert relay.statistics.failures == 0
        return ids, store.parked_entries[0].error

    ids, error = clock.run(main())
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR
    assert f"event {ids[5]} ({TOPIC})" in record.getMessage()
    assert error in record.getMessage()


@pytest.mark.parametrize(
    "refusal",
    [
        ConfigError("token", "the control plane refused it"),
        UsageError("the JetStreamBus is not connected: open() it first"),
        # Parking goes by the type alone: a field of a message named by another
        # error is no refusal of that message.
        ConfigError("payload", "a bus option about payloads is wrong"),
        InvalidArgumentError("topic", "not this message's fault"),
    ],
)
def test_a_refusal_not_about_one_message_parks_nothing(
    refusal: UsageError, caplog: pytest.LogCaptureFixture
) -> None:
    """It would refuse every event alike: an ERROR, the backoff, and the events stay in order."""
    caplog.set_level(logging.WARNING, logger="meshkit.bus.outbox")
    clock = FakeClock()

    @dataclass
    class Refusing(TimedBus):
        refusing: bool = True

        async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
            if self.refusing:
                self.refused += 1
                self._changed.set()
                raise refusal
            return await super().publish_batch(messages)

    async def main() -> None:
        store, bus = MemoryStore(), Refusing(clock=clock)
        ids = store.add("a", "b")
        backoff = Backoff(initial=1, maximum=1)
        async with OutboxRelay(store, bus, backoff=backoff, clock=clock) as relay:
            await until(bus, lambda b: b.refused == 3)
            assert store.parked_entries == []
            bus.refusing = False
            await until(bus, lambda b: len(b.sent) == 2)
        assert bus.ids() == ids
        assert (relay.statistics.failures, relay.statistics.parked) == (3, 0)

    clock.run(main())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert str(refusal) in errors[0].getMessage()


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
            await until(bus, lambda b: len(b.sent) == 1)
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


def test_closing_does_not_swallow_the_callers_cancellation() -> None:
    """A caller cancelled while aclose() waits for the relay to stop is cancelled, not returned."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), RecordingBus(clock=clock, latency=30)
        store.add("a")
        store.release_gate = asyncio.Event()  # the relay, cancelled, takes a while to release
        relay = OutboxRelay(store, bus, publish_timeout=60, clock=clock)
        await relay.start()
        await clock.sleep(1)  # the publish is under way
        closing = asyncio.create_task(relay.aclose())
        await asyncio.wait_for(store.releasing.wait(), 1)
        closing.cancel()  # a shutdown timeout around aclose(), say
        await asyncio.wait([closing])
        assert closing.cancelled()
        assert store.closed
        store.release_gate.set()

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
        ("publish_timeout", 3601),
        ("backoff", 1.0),
    ],
)
def test_bad_options_are_config_errors_naming_them(option: str, value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        OutboxRelay(MemoryStore(), RecordingBus(), **{option: value})  # type: ignore[arg-type]
    assert caught.value.key == option


def test_closing_with_a_flush_publishes_what_the_outbox_holds() -> None:
    """Events committed just before aclose(flush=...) go out; without a flush they stay."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), RecordingBus(clock=clock)
        relay = OutboxRelay(store, bus, interval=60, batch=2, clock=clock)
        await relay.start()
        await clock.sleep(1)  # the first pass found nothing; the next poll is at 61
        ids = store.add("a", "b", "c")
        await relay.aclose(flush=5)
        assert bus.ids() == ids
        assert store.entries == []
        assert store.closed

        kept, quiet = MemoryStore(), RecordingBus(clock=clock)
        relay = OutboxRelay(kept, quiet, interval=60, clock=clock)
        await relay.start()
        await clock.sleep(1)
        kept.add("d")
        await relay.aclose()
        assert quiet.ids() == []
        assert len(kept.entries) == 1

    clock.run(main())


def test_a_flush_that_cannot_publish_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    """The database locked at closing: aclose(flush=2) stops at the failed pass, events kept."""
    clock = FakeClock()

    async def main() -> None:
        store, bus = MemoryStore(), RecordingBus(clock=clock)
        relay = OutboxRelay(store, bus, interval=60, clock=clock)
        await relay.start()
        await clock.sleep(1)
        store.add("a")
        store.claim_errors = 1_000
        started = clock.monotonic()
        await relay.aclose(flush=2)
        assert clock.monotonic() - started <= 2
        assert len(store.entries) == 1

    clock.run(main())
    assert "not all events went out before stopping" in caplog.text
