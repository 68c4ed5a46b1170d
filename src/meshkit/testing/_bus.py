"""The bus conformance suite: what every ``Bus`` backend must do, on the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable

import pytest

from meshkit._clock import SystemClock
from meshkit.bus import (
    MAX_PAYLOAD,
    Bus,
    Consumer,
    DeadLetter,
    Delivery,
    GroupInfo,
    Message,
    outgoing,
    subscribe,
)
from meshkit.errors import GroupLostError, MessageRefusedError, NotFoundError
from meshkit.policy import Backoff, Redelivery

__all__ = ["BusConformance"]

# Short waits so the suite runs in seconds; real servers keep real time.
QUICK = Redelivery(max_deliveries=3, backoff=Backoff(initial=0.25, maximum=4.0), ack_wait=1.0)
WITHIN = 20.0  # seconds any one expectation may take on a loaded machine
_CLOCK = SystemClock()


class _Seen:
    """What a handler received; ``until(n)`` waits for the n-th message."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.times: list[float] = []
        self._changed = asyncio.Event()

    def record(self, message: Message) -> None:
        self.messages.append(message)
        self.times.append(_CLOCK.monotonic())
        self._changed.set()

    async def until(self, count: int) -> list[Message]:
        async with asyncio.timeout(WITHIN):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages

    def handler(
        self, fails: Callable[[Message], bool] = lambda _: False
    ) -> Callable[[Message], Awaitable[None]]:
        async def handle(message: Message) -> None:
            self.record(message)
            if fails(message):
                raise ValueError(f"cannot handle {message.id} (delivery {message.deliveries})")

        return handle


async def _take(consumer: Consumer, count: int) -> list[Delivery]:
    """Fetch until ``count`` deliveries came, in order."""
    taken: list[Delivery] = []
    async with asyncio.timeout(WITHIN):
        while len(taken) < count:
            taken += await consumer.fetch(count - len(taken), wait=1.0)
    return taken


async def _dead_letters(bus: Bus, count: int) -> list[DeadLetter]:
    """Wait until the queue holds ``count`` dead letters."""
    async with asyncio.timeout(WITHIN):
        # Polled: the interface has no way to wait for a dead letter.
        while len(letters := await bus.dead_letters()) < count:
            await _CLOCK.sleep(0.05)
    return letters


class BusConformance:
    """What every ``Bus`` backend must do. Provide a ``bus`` fixture on an empty namespace.

    Each test uses topics and groups of its own, and the dead-letter queue
    must start empty for each ``bus`` the fixture gives.
    """

    @pytest.fixture
    def topic(self) -> str:
        return f"conf.t{secrets.token_hex(5)}"

    # -- publishing and delivery ---------------------------------------------------

    async def test_a_published_message_reaches_its_group_intact(self, bus: Bus, topic: str) -> None:
        """Payload, headers, key and id arrive as published, on the first delivery."""
        published = await bus.publish(
            topic,
            {"order": 7, "items": ["a"]},
            headers={"x-tenant": "t1"},
            key="o7",
            message_id="m-7",
        )
        assert published.id == "m-7"
        assert not published.duplicate
        seen = _Seen()
        async with subscribe(bus, topic, "billing", seen.handler(), redelivery=QUICK):
            [message] = await seen.until(1)
        assert message.id == "m-7"
        assert message.topic == topic
        assert message.json() == {"order": 7, "items": ["a"]}
        assert message.headers["x-tenant"] == "t1"
        assert message.key == "o7"
        assert message.deliveries == 1

    async def test_every_group_gets_every_message_and_members_share_them(
        self, bus: Bus, topic: str
    ) -> None:
        """Two groups each get all 20; the two members of one split them, none twice."""
        first, second, other, shared = _Seen(), _Seen(), _Seen(), _Seen()

        async def slow(seen: _Seen) -> Callable[[Message], Awaitable[None]]:
            async def handle(message: Message) -> None:
                seen.record(message)
                shared.record(message)
                await _CLOCK.sleep(0.02)  # work, so that one member cannot take them all

            return handle

        async with (
            subscribe(bus, topic, "shared", await slow(first), concurrency=1, redelivery=QUICK),
            subscribe(bus, topic, "shared", await slow(second), concurrency=1, redelivery=QUICK),
            subscribe(bus, topic, "audit", other.handler(), redelivery=QUICK),
        ):
            sent = await bus.publish_batch([outgoing(topic, {"n": n}) for n in range(20)])
            await other.until(20)
            await shared.until(20)  # a second delivery of any would leave one id out
        ids = sorted(p.id for p in sent)
        assert sorted(m.id for m in other.messages) == ids
        assert sorted(m.id for m in shared.messages) == ids
        assert first.messages
        assert second.messages

    async def test_a_group_that_joins_later_gets_the_earlier_messages(
        self, bus: Bus, topic: str
    ) -> None:
        """A new group starts at the earliest message the topic keeps."""
        await bus.publish_batch([outgoing(topic, n) for n in range(3)])
        seen = _Seen()
        async with subscribe(bus, topic, "late", seen.handler(), redelivery=QUICK):
            messages = await seen.until(3)
        assert sorted(m.json() for m in messages) == [0, 1, 2]  # type: ignore[type-var]

    async def test_one_member_handling_one_at_a_time_sees_publish_order(
        self, bus: Bus, topic: str
    ) -> None:
        """With concurrency 1, first deliveries come in the order they were published."""
        await bus.publish_batch([outgoing(topic, n) for n in range(30)])
        seen = _Seen()
        async with subscribe(
            bus, topic, "ordered", seen.handler(), concurrency=1, redelivery=QUICK
        ):
            messages = await seen.until(30)
        assert [m.json() for m in messages] == list(range(30))

    async def test_a_waiting_fetch_answers_when_a_message_is_published(
        self, bus: Bus, topic: str
    ) -> None:
        """A long poll returns the message as soon as it is published, not at its end."""
        consumer = await bus.consumer(topic, "poller", redelivery=QUICK)
        try:
            async with asyncio.timeout(WITHIN):  # far below the fetch's own 120 s
                fetching = asyncio.create_task(consumer.fetch(10, wait=120))
                # Let the fetch start waiting (the interface cannot say it is); if
                # it has not, the message is simply there when it looks.
                await _CLOCK.sleep(0.2)
                await bus.publish(topic, "hello")
                [delivery] = await fetching
            assert delivery.message.json() == "hello"
            await consumer.ack([delivery])
        finally:
            await consumer.aclose()

    async def test_a_repeated_message_id_is_delivered_once(self, bus: Bus, topic: str) -> None:
        """The second publish of an id says duplicate, and only one copy is delivered."""
        assert not (await bus.publish(topic, 1, message_id="same")).duplicate
        assert (await bus.publish(topic, 2, message_id="same")).duplicate
        await bus.publish(topic, 3, message_id="after")
        seen = _Seen()
        async with subscribe(bus, topic, "dedup", seen.handler(), concurrency=1, redelivery=QUICK):
            await seen.until(2)  # in order: a second "same" would come before "after"
        assert [(m.id, m.json()) for m in seen.messages] == [("same", 1), ("after", 3)]

    async def test_a_mixed_batch_keeps_each_topics_order_and_flags_the_repeat(
        self, bus: Bus, topic: str
    ) -> None:
        """One batch over two topics, with and without ids, keys and headers, as published."""
        other = f"{topic}.other"
        batch = [
            outgoing(topic, 1),
            outgoing(topic, 2, message_id="x"),
            outgoing(other, 3, key="k3"),
            outgoing(topic, 4, headers={"x-h": "v4"}),
            outgoing(topic, 5, message_id="x"),
            outgoing(other, 6),
            outgoing(topic, "end"),
            outgoing(other, "end"),
        ]
        published = await bus.publish_batch(batch)
        assert [p.id for p in published] == [m.id for m in batch]
        assert [p.duplicate for p in published] == [False] * 4 + [True] + [False] * 3
        received: dict[str, list[Message]] = {}
        for name in (topic, other):
            seen = _Seen()
            handler = seen.handler()
            async with subscribe(bus, name, "mixed", handler, concurrency=1, redelivery=QUICK):
                received[name] = await seen.until(4 if name == topic else 3)
        assert [m.json() for m in received[topic]] == [1, 2, 4, "end"]
        assert [m.json() for m in received[other]] == [3, 6, "end"]
        assert received[other][0].key == "k3"
        assert received[topic][2].headers["x-h"] == "v4"
        assert received[topic][0].key is None

    async def test_a_message_id_is_a_repeat_only_on_its_own_topic(
        self, bus: Bus, topic: str
    ) -> None:
        """The duplicate window is per topic: one id on two topics publishes twice."""
        assert not (await bus.publish(topic, 1, message_id="shared-id")).duplicate
        assert not (await bus.publish(f"{topic}.other", 2, message_id="shared-id")).duplicate

    async def test_a_malformed_publish_is_refused_and_changes_nothing(
        self, bus: Bus, topic: str
    ) -> None:
        """Bad topic, payload over the limit, invalid JSON, bad header: MessageRefusedError naming
        the field, no message."""
        refused = [
            bus.publish("Bad Topic", {}),
            bus.publish(topic, b"x" * (MAX_PAYLOAD + 1)),
            bus.publish(topic, b"{not json"),
            bus.publish(topic, {}, headers={"meshkit-replay-group": "x"}),
            bus.publish(topic, {}, message_id="has space"),
        ]
        fields = ["topic", "payload", "payload", "headers", "message_id"]
        for attempt, field in zip(refused, fields, strict=True):
            with pytest.raises(MessageRefusedError) as caught:
                await attempt
            assert caught.value.key == field
        await bus.publish(topic, "good")
        seen = _Seen()
        async with subscribe(bus, topic, "check", seen.handler(), concurrency=1, redelivery=QUICK):
            await seen.until(1)  # in order: a refused one, had it been kept, would come first
        assert [m.json() for m in seen.messages] == ["good"]

    # -- failures, redelivery and dead letters ------------------------------------------

    async def test_a_message_that_fails_once_comes_back_with_its_count(
        self, bus: Bus, topic: str
    ) -> None:
        """A handler that raises gets the message again, deliveries 2, after the backoff."""
        await bus.publish(topic, "flaky")
        seen = _Seen()
        handler = seen.handler(fails=lambda m: m.deliveries == 1)
        async with subscribe(bus, topic, "retry", handler, redelivery=QUICK):
            messages = await seen.until(2)
        assert [m.deliveries for m in messages] == [1, 2]
        assert seen.times[1] - seen.times[0] >= 0.2
        assert await bus.dead_letters() == []

    async def test_a_handler_that_always_fails_is_called_max_times_then_dead_lettered(
        self, bus: Bus, topic: str
    ) -> None:
        """Exactly max_deliveries calls with growing gaps; the dead letter keeps the last error."""
        await bus.publish(topic, {"poison": True}, message_id="poison-1", headers={"a": "b"})
        seen = _Seen()
        async with subscribe(
            bus, topic, "strict", seen.handler(fails=lambda _: True), redelivery=QUICK
        ):
            [letter] = await _dead_letters(bus, 1)
            # A wrong fourth delivery would come after the next wait of the backoff.
            await _CLOCK.sleep(QUICK.backoff.ceiling(QUICK.max_deliveries) + 0.5)
        assert [m.deliveries for m in seen.messages] == [1, 2, 3]
        first_gap, second_gap = seen.times[1] - seen.times[0], seen.times[2] - seen.times[1]
        assert first_gap >= 0.2
        assert second_gap >= 0.45
        assert letter.group == "strict"
        assert letter.topic == topic
        assert letter.deliveries == 3
        assert "ValueError: cannot handle poison-1 (delivery 3)" in letter.error
        assert letter.message.id == "poison-1"
        assert letter.message.json() == {"poison": True}
        assert letter.message.headers["a"] == "b"
        assert await bus.dead_letter(letter.id) == letter

    async def test_replay_delivers_a_dead_letter_to_its_group_only(
        self, bus: Bus, topic: str
    ) -> None:
        """Once its cause is fixed, a replayed dead letter is handled by its group alone."""
        broken = True
        picky, other = _Seen(), _Seen()
        async with (
            subscribe(bus, topic, "picky", picky.handler(fails=lambda _: broken), redelivery=QUICK),
            subscribe(bus, topic, "other", other.handler(), concurrency=1, redelivery=QUICK),
        ):
            await bus.publish(topic, {"user": 404}, message_id="needs-user")
            [letter] = await _dead_letters(bus, 1)
            broken = False
            await bus.replay(letter.id)
            messages = await picky.until(4)
            # In order: a wrong delivery of the replay to "other" would come before this one.
            await bus.publish(topic, "after", message_id="after")
            await other.until(2)
        replayed = messages[3]
        assert (replayed.id, replayed.json(), replayed.deliveries) == (
            "needs-user",
            {"user": 404},
            1,
        )
        assert [m.id for m in other.messages] == ["needs-user", "after"]
        assert await bus.dead_letters() == []
        with pytest.raises(NotFoundError):
            await bus.dead_letter(letter.id)
        with pytest.raises(NotFoundError):
            await bus.replay(letter.id)

    async def test_purge_removes_the_chosen_dead_letters_or_all(self, bus: Bus, topic: str) -> None:
        """purge([id]) removes one; purge() removes the rest; each says how many."""
        seen = _Seen()
        async with subscribe(
            bus, topic, "doomed", seen.handler(fails=lambda _: True), redelivery=QUICK
        ):
            await bus.publish_batch([outgoing(topic, n) for n in range(3)])
            letters = await _dead_letters(bus, 3)
        assert await bus.purge([letters[0].id]) == 1
        assert [x.id for x in await bus.dead_letters()] == [x.id for x in letters[1:]]
        assert await bus.purge() == 2
        assert await bus.dead_letters() == []

    async def test_an_unacked_delivery_goes_to_another_member_after_the_ack_deadline(
        self, bus: Bus, topic: str
    ) -> None:
        """A member that fetched and went silent loses the message after ack_wait."""
        await bus.publish(topic, "held")
        silent = await bus.consumer(topic, "workers", redelivery=QUICK)
        clock = SystemClock()
        try:
            [held] = await silent.fetch(1, wait=WITHIN)
            fetched = clock.monotonic()
            seen = _Seen()
            async with subscribe(bus, topic, "workers", seen.handler(), redelivery=QUICK):
                [message] = await seen.until(1)
        finally:
            await silent.aclose()
        assert message.id == held.message.id
        assert message.deliveries == 2
        assert seen.times[0] - fetched >= QUICK.ack_wait * 0.9

    async def test_a_deleted_group_is_forgotten_and_its_member_told(
        self, bus: Bus, topic: str
    ) -> None:
        """After delete_group its member's fetch is GroupLostError, joining again starts at the
        earliest message, and other groups go on where they were."""
        await bus.publish_batch([outgoing(topic, n) for n in range(3)])
        member = await bus.consumer(topic, "doomed", redelivery=QUICK)
        other = await bus.consumer(topic, "kept", redelivery=QUICK)
        fresh: Consumer | None = None
        try:
            taken = await _take(member, 3)
            await member.ack(taken[:2])  # the third is still held
            await other.ack(await _take(other, 3))
            await bus.delete_group(topic, "doomed")
            with pytest.raises(GroupLostError):
                await member.fetch(1, wait=1.0)
            with pytest.raises(NotFoundError):
                await bus.delete_group(topic, "doomed")
            fresh = await bus.consumer(topic, "doomed", redelivery=QUICK)
            again = await _take(fresh, 3)
            assert [(d.message.json(), d.message.deliveries) for d in again] == [
                (0, 1),
                (1, 1),
                (2, 1),
            ]
            await fresh.ack(again)
            await bus.publish(topic, 3)
            [after] = await _take(other, 1)
            assert after.message.json() == 3
        finally:
            for consumer in (member, other, fresh):
                if consumer is not None:
                    with contextlib.suppress(GroupLostError):
                        await consumer.aclose()

    async def test_groups_are_listed_with_their_lag_and_what_is_held(
        self, bus: Bus, topic: str
    ) -> None:
        """A group's lag counts what it was not handed yet, pending what a member holds;
        a deleted group is no longer listed."""
        await bus.publish_batch([outgoing(topic, n) for n in range(5)])
        slow = await bus.consumer(topic, "slow", redelivery=QUICK)
        idle = await bus.consumer(topic, "idle", redelivery=QUICK)
        try:
            held = await _take(slow, 2)
            await slow.ack(held[:1])

            def mine(groups: list[GroupInfo]) -> list[GroupInfo]:
                return [g for g in groups if g.topic == topic]

            assert mine(await bus.groups()) == [
                GroupInfo(topic=topic, group="idle", lag=5, pending=0),
                GroupInfo(topic=topic, group="slow", lag=3, pending=1),
            ]
            await bus.delete_group(topic, "idle")
            assert [g.group for g in mine(await bus.groups())] == ["slow"]
        finally:
            for consumer in (slow, idle):  # closing a deleted group's member is quiet
                await consumer.aclose()

    async def test_unknown_dead_letters_are_not_found(self, bus: Bus) -> None:
        """Showing or replaying an id the queue does not hold raises NotFoundError."""
        with pytest.raises(NotFoundError):
            await bus.dead_letter("999999")
        with pytest.raises(NotFoundError):
            await bus.replay("999999")

    # -- trace context ------------------------------------------------------------------

    async def test_the_publishers_trace_context_reaches_the_handler(
        self, bus: Bus, topic: str
    ) -> None:
        """traceparent travels in the headers, and the handler runs in that trace."""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("conformance")
        trace_ids: list[int] = []

        with tracer.start_as_current_span("place order") as span:
            await bus.publish(topic, "traced")
        expected = span.get_span_context().trace_id
        seen = _Seen()

        async def record(message: Message) -> None:
            trace_ids.append(trace.get_current_span().get_span_context().trace_id)
            seen.record(message)

        async with subscribe(bus, topic, "tracing", record, redelivery=QUICK):
            [message] = await seen.until(1)
        assert f"{expected:032x}" in message.headers["traceparent"]
        assert trace_ids == [expected]
