"""The outbox conformance suite: what every outbox store and inbox must do, on the real engine.

An engine takes part through an ``OutboxDatabase``: a fresh database with
meshkit's tables, that can run one transaction recording events (with the
engine's ``record``), one handling a message (with the engine's inbox), and
make stores on itself, as each replica of a service makes its own. The
suite brings the buses: an ``EmbeddedBus`` where a real one is needed, and
a ``RecordingBus`` to take the bus down, to refuse an event for good, or to
publish past its duplicate window.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pytest

from meshkit._clock import Clock, SystemClock
from meshkit.bus import (
    INBOX_RETENTION,
    Bus,
    Consumer,
    DeadLetter,
    EmbeddedBus,
    GroupInfo,
    Message,
    Outgoing,
    Published,
)
from meshkit.bus._model import MAX_ERROR, clip_error
from meshkit.bus._outbox import OutboxEntry, OutboxRelay, OutboxStore, ParkedEntry
from meshkit.bus._protocol import PublishOne
from meshkit.errors import (
    EnvironmentFaultError,
    InvalidArgumentError,
    MessageRefusedError,
    NotFoundError,
    UsageError,
)
from meshkit.policy import Backoff, Redelivery
from meshkit.testing._clock import FakeClock

__all__ = ["Event", "OutboxConformance", "OutboxDatabase", "RecordingBus"]

WITHIN = 20.0  # seconds any one expectation may take on a loaded machine
_CLOCK = SystemClock()
_QUICK = Backoff(initial=0.01, maximum=0.05)
_REDELIVERY = Redelivery(max_deliveries=3, backoff=Backoff(initial=0.25, maximum=1.0), ack_wait=5.0)


@dataclass(frozen=True, slots=True)
class Event:
    """One event for a transaction to record, as a service would pass it to ``record``."""

    topic: str
    payload: object
    headers: dict[str, str] | None = None
    key: str | None = None
    message_id: str | None = None


class OutboxDatabase(Protocol):
    """One fresh database of one engine, with meshkit's tables, as the suite drives it."""

    def store(self) -> OutboxStore:
        """A new store on this database: each relay (each replica) has its own."""
        ...

    async def record(self, events: Sequence[Event], *, commit: bool = True) -> list[str]:
        """One transaction recording ``events`` in order; committed, or rolled back.

        Returns the ids ``record`` gave. An error from ``record`` rolls the
        transaction back and propagates.
        """
        ...

    async def receive(
        self,
        group: str,
        message_id: str,
        *,
        clock: Clock | None = None,
        retention: float = INBOX_RETENTION,
        commit: bool = True,
    ) -> bool:
        """One transaction handling a message: the inbox's answer, committed or rolled back.

        The inbox is a new one, on ``clock``, with this ``retention``.
        """
        ...

    async def prune(self, group: str, *, clock: Clock, retention: float) -> int:
        """The inbox's ``prune`` for ``group`` in a transaction of its own: how many it forgot."""
        ...


@dataclass
class RecordingBus(PublishOne):
    """A ``Bus`` that only records what is published: for relays under failure.

    While ``down``, a publish raises ``EnvironmentFaultError`` (counted in
    ``refused``). A batch holding a message whose id is in ``oversized`` is
    refused for good, as JetStream refuses a payload over its server's
    ``max_payload``: ``MessageRefusedError`` on ``payload``, nothing published.
    Otherwise it takes ``latency`` seconds on ``clock``, then appends every
    message to ``sent``, repeats included. With ``dedup`` a repeat of a
    given id is ``Published.duplicate``, as within a real bus's window (here
    unbounded); without, it is new, as past the window.
    """

    dedup: bool = True
    latency: float = 0.0
    clock: Clock = field(default_factory=SystemClock)
    down: bool = False
    oversized: set[str] = field(default_factory=set)
    sent: list[Outgoing] = field(default_factory=list)
    refused: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        if self.down:
            self.refused += 1
            self._changed.set()
            raise EnvironmentFaultError("the recording bus is down")
        for m in messages:
            if m.id in self.oversized:
                raise MessageRefusedError(
                    "payload", f"of {m.id} is more than the recording bus takes"
                )
        if self.latency:
            await self.clock.sleep(self.latency)
        seen = {m.id for m in self.sent if m.given_id} if self.dedup else set()
        self.sent.extend(messages)
        self._changed.set()
        return [Published(id=m.id, duplicate=m.given_id and m.id in seen) for m in messages]

    def ids(self) -> list[str]:
        return [m.id for m in self.sent]

    async def wait_for(self, condition: Callable[[RecordingBus], bool]) -> None:
        """Until ``condition(self)`` holds, checked after every publish (unbounded: bound it)."""
        while not condition(self):
            self._changed.clear()
            await self._changed.wait()

    # The rest of the Bus interface: nothing to consume, no dead letters.

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> Consumer:  # noqa: ARG002
        raise UsageError("a RecordingBus only records publishes")

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:  # noqa: ARG002
        return []

    async def dead_letter(self, letter_id: str) -> DeadLetter:  # noqa: ARG002
        raise UsageError("a RecordingBus only records publishes")

    async def replay(self, letter_id: str) -> None:  # noqa: ARG002
        raise UsageError("a RecordingBus only records publishes")

    async def purge(self, ids: Sequence[str] | None = None) -> int:  # noqa: ARG002
        return 0

    async def groups(self) -> list[GroupInfo]:
        return []

    async def delete_group(self, topic: str, group: str) -> None:
        raise NotFoundError(f"a RecordingBus has no groups (asked for {group!r} on {topic!r})")

    async def aclose(self) -> None:
        pass


class _ForgetsOnce:
    """A store whose first ``sent`` fails before removing anything: a relay killed there."""

    def __init__(self, inner: OutboxStore) -> None:
        self.inner = inner
        self.failed = False

    @property
    def timeout(self) -> float:
        return self.inner.timeout

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        return await self.inner.claim(limit, hold=hold)

    async def sent(self, entries: Sequence[OutboxEntry]) -> None:
        if not self.failed:
            self.failed = True
            raise EnvironmentFaultError("killed between publishing and removing")
        await self.inner.sent(entries)

    async def park(self, entry: OutboxEntry, error: str) -> None:
        await self.inner.park(entry, error)

    async def parked(self, *, limit: int = 100) -> list[ParkedEntry]:
        return await self.inner.parked(limit=limit)

    async def release(self) -> None:
        await self.inner.release()

    async def requeue(self, seqs: Sequence[int] | None = None) -> int:
        return await self.inner.requeue(seqs)

    async def discard(self, seqs: Sequence[int] | None = None) -> int:
        return await self.inner.discard(seqs)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _relay(store: OutboxStore, bus: Bus, **options: object) -> OutboxRelay:
    settings: dict[str, object] = {"interval": 0.05, "backoff": _QUICK}
    settings.update(options)
    return OutboxRelay(store, bus, **settings)  # type: ignore[arg-type]


async def _eventually(condition: Callable[[], bool | Awaitable[bool]]) -> None:
    """Until ``condition()`` holds, within ``WITHIN`` s: for state that signals no change."""
    async with asyncio.timeout(WITHIN):
        while True:
            answer = condition()
            if answer if isinstance(answer, bool) else await answer:
                return
            await _CLOCK.sleep(0.01)


async def _messages(bus: Bus, topic: str, count: int) -> list[Message]:
    """Every message published on ``topic`` so far, for a new group; fails unless ``count``.

    A sentinel published now comes after all of them, in order: reading up
    to it shows every repeat already published, without waiting to see
    whether one comes. Call it once the relay has published what it will.
    """
    sentinel = await bus.publish(topic, "sentinel")
    consumer = await bus.consumer(topic, "check", redelivery=_REDELIVERY)
    messages: list[Message] = []
    try:
        async with asyncio.timeout(WITHIN):
            while not messages or messages[-1].id != sentinel.id:
                deliveries = await consumer.fetch(100, wait=WITHIN)
                messages += [d.message for d in deliveries]
                await consumer.ack(deliveries)
    finally:
        await consumer.aclose()
    messages.pop()
    assert len(messages) == count, [m.id for m in messages]
    return messages


async def _another_refusal(bus: RecordingBus) -> None:
    refusals = bus.refused + 1
    await asyncio.wait_for(bus.wait_for(lambda b: b.refused >= refusals), WITHIN)


async def _backlog(database: OutboxDatabase) -> list[str]:
    """The ids the outbox holds, oldest first; fails if a store holds the claim.

    A claim returns nothing both when the outbox is empty and when another
    store holds the claim: a sentinel recorded now tells them apart, as it
    must come back, last. It stays in the outbox: call this at the end.
    """
    [sentinel] = await database.record([Event("conf.sentinel", "end")])
    store = database.store()
    try:
        ids = [entry.message.id for entry in await store.claim(10_000, hold=30.0)]
        if ids:
            await store.release()
    finally:
        await store.aclose()
    assert ids, "another store holds the outbox's claim"
    assert ids[-1] == sentinel, ids
    return ids[:-1]


def _errors_naming(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and text in r.getMessage()
    ]


class OutboxConformance:
    """What every outbox store and inbox must do. Provide a ``database`` fixture.

    ``database`` is an ``OutboxDatabase`` on a fresh database of the engine
    with meshkit's tables; the suite closes every store it makes.
    """

    @pytest.fixture
    def topic(self) -> str:
        return f"conf.o{secrets.token_hex(5)}"

    @pytest.fixture
    async def bus(self, tmp_path: Path) -> AsyncIterator[Bus]:
        bus = await EmbeddedBus.open(tmp_path / "bus.sqlite3")
        yield bus
        await bus.aclose()

    # -- recording -----------------------------------------------------------------

    async def test_a_rolled_back_transaction_leaves_no_event(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """Only the committed transaction's event is published; the outbox is empty after."""
        await database.record([Event(topic, "rolled back")], commit=False)
        [kept] = await database.record([Event(topic, "committed")])
        bus = RecordingBus()
        async with _relay(database.store(), bus) as relay:
            await _eventually(lambda: relay.statistics.published == 1)
        assert bus.ids() == [kept]
        assert [m.payload for m in bus.sent] == [b'"committed"']
        assert await _backlog(database) == []

    async def test_record_refuses_a_bad_event_naming_the_field(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """MessageRefusedError names the field; rolled back on it, the transaction publishes
        nothing."""
        with pytest.raises(MessageRefusedError) as caught:
            await database.record([Event(topic, "fine"), Event("Bad Topic", "x")])
        assert caught.value.key == "topic"
        [later] = await database.record([Event(topic, "later")])
        bus = RecordingBus()
        async with _relay(database.store(), bus) as relay:
            await _eventually(lambda: relay.statistics.published == 1)
        assert bus.ids() == [later]

    async def test_committed_events_are_published_once_in_commit_order_and_intact(
        self, database: OutboxDatabase, bus: Bus, topic: str
    ) -> None:
        """Ids (given or made), payload, headers and key arrive as recorded, in order, once."""
        first = await database.record([Event(topic, {"n": 1}), Event(topic, {"n": 2})])
        second = await database.record(
            [Event(topic, {"n": 3}, headers={"x-tenant": "t1"}, key="o3", message_id=f"{topic}-3")]
        )
        third = await database.record([Event(topic, [4, "four"])])
        assert second == [f"{topic}-3"]
        relay = _relay(database.store(), bus)
        async with relay:
            relay.notify()
            await _eventually(lambda: relay.statistics.published == 4)
            messages = await _messages(bus, topic, 4)
        assert [m.id for m in messages] == first + second + third
        assert [m.json() for m in messages] == [{"n": 1}, {"n": 2}, {"n": 3}, [4, "four"]]
        assert messages[2].headers["x-tenant"] == "t1"
        assert [m.key for m in messages] == [None, None, "o3", None]
        assert (relay.statistics.published, relay.statistics.duplicates) == (4, 0)

    # -- the relay under failure -------------------------------------------------------

    async def test_events_recorded_while_the_bus_is_down_go_out_in_order_once_it_is_back(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """Refused publishes lose nothing: after the outage every event goes out once, in order."""
        bus = RecordingBus(down=True)
        ids: list[str] = []
        async with _relay(database.store(), bus) as relay:
            for n in range(10):
                ids += await database.record([Event(topic, n)])
                relay.notify()
                if n in (0, 5):  # some recorded before the first refusal, some between
                    await _another_refusal(bus)
            bus.down = False
            await _eventually(lambda: relay.statistics.published == 10)
        assert bus.ids() == ids
        assert relay.statistics.failures >= 2
        assert relay.statistics.failing == 0

    async def test_an_event_the_bus_refuses_for_good_is_parked_and_the_rest_go_on(
        self, database: OutboxDatabase, topic: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The events around two refused ones go out once, in order; those two are parked."""
        caplog.set_level(logging.ERROR, logger="meshkit.bus.outbox")
        ids = await database.record([Event(topic, n) for n in range(7)])
        refused = [ids[1], ids[5]]
        bus = RecordingBus(dedup=False, oversized=set(refused))  # a repeat would show
        async with _relay(database.store(), bus) as relay:
            await _eventually(lambda: relay.statistics.parked == 2)
            await _eventually(lambda: relay.statistics.published == 5)
        assert bus.ids() == [i for i in ids if i not in refused]
        store = database.store()
        try:
            parked = await store.parked()
        finally:
            await store.aclose()
        assert [p.message.id for p in parked] == refused
        assert [p.message.payload for p in parked] == [b"1", b"5"]
        assert all(p.error.startswith("MessageRefusedError: payload: ") for p in parked)
        assert all(_errors_naming(caplog, event) for event in refused)
        assert await _backlog(database) == []

    async def test_a_relay_killed_between_publishing_and_removing_publishes_a_duplicate(
        self, database: OutboxDatabase, bus: Bus, topic: str
    ) -> None:
        """The batch goes out again with its ids; the bus reports duplicates, consumers get one."""
        ids = await database.record([Event(topic, n) for n in range(3)])
        store = _ForgetsOnce(database.store())
        async with _relay(store, bus) as relay:
            await _eventually(lambda: relay.statistics.published == 3)
            messages = await _messages(bus, topic, 3)
        assert store.failed
        assert relay.statistics.duplicates == 3
        assert [m.id for m in messages] == ids

    async def test_past_the_duplicate_window_the_inbox_drops_the_repeat(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """A bus that no longer knows the ids delivers them twice; the inbox admits each once."""
        ids = await database.record([Event(topic, n) for n in range(3)])
        bus = RecordingBus(dedup=False)
        async with _relay(_ForgetsOnce(database.store()), bus) as relay:
            await _eventually(lambda: relay.statistics.published == 3)
        assert bus.ids() == ids + ids
        admitted = [await database.receive("billing", m.id) for m in bus.sent]
        assert admitted == [True] * 3 + [False] * 3

    async def test_two_relays_on_one_database_publish_each_event_once_in_order(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """Two replicas' relays, nudged together, publish every event exactly once, in order."""
        bus = RecordingBus(dedup=False, latency=0.005)  # every overlap would show as a repeat
        ids: list[str] = []
        async with (
            _relay(database.store(), bus, batch=3) as first,
            _relay(database.store(), bus, batch=3) as second,
        ):
            for n in range(30):
                ids += await database.record([Event(topic, n)])
                first.notify()
                second.notify()
            await _eventually(
                lambda: first.statistics.published + second.statistics.published == 30
            )
        assert bus.ids() == ids

    # -- the store's claim -------------------------------------------------------------

    async def test_a_claim_excludes_other_stores_until_released_or_lapsed(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """Oldest first within the limit; others get nothing while it is held, until its hold."""
        ids = await database.record([Event(topic, n) for n in range(3)])
        one, other = database.store(), database.store()
        try:
            claimed = await one.claim(2, hold=30.0)
            assert [e.message.id for e in claimed] == ids[:2]
            assert all(e.message.given_id for e in claimed)
            assert await other.claim(2, hold=30.0) == []
            await one.release()
            assert [e.message.id for e in await other.claim(5, hold=0.3)] == ids
            # `other` neither sends nor releases, as if it hung: its claim lapses.
            await _eventually(lambda: _claims(one, 5))
            await one.sent(await one.claim(1, hold=30.0))
            assert [e.message.id for e in await one.claim(5, hold=30.0)] == ids[1:]
            await one.release()
        finally:
            await one.aclose()
            await other.aclose()

    async def test_a_store_holds_one_claim_and_ends_it_with_sent_or_release(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """claim() while holding a claim, and sent() or park() without one, are UsageErrors."""
        await database.record([Event(topic, 1)])
        store = database.store()
        try:
            with pytest.raises(UsageError, match="without a claim"):
                await store.sent([])
            [entry] = await store.claim(10, hold=30.0)
            with pytest.raises(UsageError, match="while holding a claim"):
                await store.claim(10, hold=30.0)
            await store.release()
            await store.release()  # without a claim: nothing
            with pytest.raises(UsageError, match="without a claim"):
                await store.park(entry, "refused")
            assert [e.message.id for e in await store.claim(10, hold=30.0)] == [entry.message.id]
            await store.sent([entry])
        finally:
            await store.aclose()

    async def test_parked_entries_leave_the_outbox_with_their_errors(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """park() moves claimed entries out, intact, with the error clipped; parked() lists them."""
        await database.record(
            [Event(topic, {"n": n}, headers={"x-n": str(n)}, key=f"k{n}") for n in range(3)]
        )
        store = database.store()
        try:
            entries = await store.claim(10, hold=30.0)
            await store.park(entries[1], "MessageRefusedError: payload: too large")
            await store.park(entries[0], "x" * (MAX_ERROR + 10))
            await store.sent(entries[2:])
            parked = await store.parked()
            assert await store.parked(limit=1) == parked[:1]
        finally:
            await store.aclose()
        assert [p.seq for p in parked] == [entries[0].seq, entries[1].seq]
        assert [p.message for p in parked] == [entries[0].message, entries[1].message]
        assert [p.error for p in parked] == [
            clip_error("x" * (MAX_ERROR + 10)),
            "MessageRefusedError: payload: too large",
        ]
        assert all(abs(p.parked - _CLOCK.time()) < WITHIN for p in parked)
        assert await _backlog(database) == []

    async def test_parked_events_are_requeued_after_the_outbox_or_discarded(
        self, database: OutboxDatabase, topic: str
    ) -> None:
        """requeue() puts parked events back, last, with their ids; discard() drops them."""
        await database.record([Event(topic, n) for n in range(4)])
        store = database.store()
        try:
            entries = await store.claim(10, hold=30.0)
            for entry in entries[:3]:
                await store.park(entry, "MessageRefusedError: payload: refused")
            with pytest.raises(UsageError, match="while holding a claim"):
                await store.requeue()
            await store.sent(entries[3:])
            [later] = await database.record([Event(topic, "later")])
            assert await store.requeue([entries[1].seq, 999_999]) == 1
            assert await store.discard([entries[0].seq]) == 1
            assert [p.seq for p in await store.parked()] == [entries[2].seq]
            assert await store.requeue() == 1
            assert await store.parked() == []
            assert await store.discard() == 0
            with pytest.raises(InvalidArgumentError) as caught:
                await store.requeue([0])
            assert caught.value.key == "seqs"
        finally:
            await store.aclose()
        expected = [later, entries[1].message.id, entries[2].message.id]
        assert await _backlog(database) == expected

    # -- the inbox ---------------------------------------------------------------------

    async def test_the_inbox_says_new_once_then_repeat_for_each_group(
        self, database: OutboxDatabase
    ) -> None:
        """A second record of an id in a group is a repeat; another group is independent."""
        assert await database.receive("billing", "m-1")
        assert not await database.receive("billing", "m-1")
        assert await database.receive("shipping", "m-1")
        assert await database.receive("billing", "m-2")

    async def test_a_rolled_back_handling_leaves_the_message_new(
        self, database: OutboxDatabase
    ) -> None:
        """The inbox's record rolls back with the handler's transaction."""
        assert await database.receive("billing", "m-1", commit=False)
        assert await database.receive("billing", "m-1")
        assert not await database.receive("billing", "m-1")

    async def test_the_inbox_forgets_ids_past_its_retention(self, database: OutboxDatabase) -> None:
        """prune() removes the group's ids older than the retention, and only those."""
        clock = FakeClock(start=100.0)
        assert await database.receive("billing", "old", clock=clock, retention=100)
        assert await database.receive("audit", "old", clock=clock, retention=1000)
        clock.advance(50)
        assert await database.receive("billing", "recent", clock=clock, retention=100)
        clock.advance(60)  # "old" is 110 s old, "recent" 60 s
        assert await database.prune("billing", clock=clock, retention=100) == 1
        assert await database.receive("billing", "old", clock=clock, retention=100)
        assert not await database.receive("billing", "recent", clock=clock, retention=100)
        assert not await database.receive("audit", "old", clock=clock, retention=1000)


async def _claims(store: OutboxStore, limit: int) -> bool:
    entries = await store.claim(limit, hold=30.0)
    if not entries:
        return False
    await store.release()
    return True
