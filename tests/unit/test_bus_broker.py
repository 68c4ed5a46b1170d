"""The embedded broker's group state: what survives a restart, and the pure bookkeeping under it."""

from pathlib import Path

import pytest

from meshkit.bus import outgoing
from meshkit.bus._broker import EmbeddedBroker
from meshkit.bus._group import GroupState
from meshkit.errors import ConfigError, GroupLostError, InvalidArgumentError, NotFoundError
from meshkit.policy import Backoff, Redelivery
from meshkit.testing import FakeClock

POLICY = Redelivery(max_deliveries=3, backoff=Backoff(initial=10, maximum=100), ack_wait=30)


async def test_acked_messages_are_not_delivered_again_after_a_restart(tmp_path: Path) -> None:
    """Restart resumes at the floor: acked ones stay done, unacked ones come back."""
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=FakeClock())
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", n) for n in range(6)])
    out = await broker.fetch("t", "g", limit=6, wait=0)
    # Acked out of order: 0, 1 and 4; 2, 3 and 5 were in flight when it stopped.
    await broker.ack("t", "g", [out[i].receipt for i in (0, 1, 4)])
    await broker.aclose()

    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=FakeClock())
    await broker.join("t", "g", POLICY)
    again = await broker.fetch("t", "g", limit=10, wait=0)
    await broker.aclose()
    assert [d.message.json() for d in again] == [2, 3, 5]
    assert [d.message.deliveries for d in again] == [1, 1, 1]


async def test_failure_counts_and_due_times_survive_a_restart(tmp_path: Path) -> None:
    """A message that failed twice is due at its time after a restart, as delivery 3."""
    clock = FakeClock()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock)
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", "x")])
    for _ in range(2):
        [delivery] = await broker.fetch("t", "g", limit=1, wait=0)
        await broker.fail("t", "g", delivery.receipt, "boom")
        clock.advance(5)
        assert await broker.fetch("t", "g", limit=1, wait=0) == []  # not due yet
        clock.advance(20)
    await broker.aclose()

    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock)
    await broker.join("t", "g", POLICY)
    [third] = await broker.fetch("t", "g", limit=1, wait=0)
    assert third.message.deliveries == 3
    await broker.fail("t", "g", third.receipt, "boom at last")
    [letter] = broker.dead_letters()
    assert (letter.deliveries, letter.error, letter.group) == (3, "boom at last", "g")
    await broker.aclose()


async def test_a_new_group_starts_at_the_earliest_message_and_others_are_untouched(
    tmp_path: Path,
) -> None:
    """Groups are independent: one acking does not move another."""
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=FakeClock())
    await broker.join("t", "a", POLICY)
    await broker.publish([outgoing("t", n) for n in range(3)])
    await broker.ack("t", "a", [d.receipt for d in await broker.fetch("t", "a", limit=3, wait=0)])
    await broker.join("t", "b", POLICY)
    assert [d.message.json() for d in await broker.fetch("t", "b", limit=5, wait=0)] == [0, 1, 2]
    assert await broker.fetch("t", "a", limit=5, wait=0) == []
    await broker.aclose()


async def test_a_late_failure_for_a_delivery_that_moved_on_changes_nothing(tmp_path: Path) -> None:
    """After the ack deadline the message is someone else's: the first holder's fail is ignored."""
    clock = FakeClock()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock)
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", "x")])
    [first] = await broker.fetch("t", "g", limit=1, wait=0)
    clock.advance(31)
    [second] = await broker.fetch("t", "g", limit=1, wait=0)
    assert second.message.deliveries == 2
    await broker.fail("t", "g", first.receipt, "late")
    assert await broker.fetch("t", "g", limit=1, wait=0) == []  # still leased to the second
    await broker.ack("t", "g", [second.receipt])
    assert broker.dead_letters() == []
    await broker.aclose()


async def test_bad_arguments_are_refused_naming_them(tmp_path: Path) -> None:
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=FakeClock())
    try:
        with pytest.raises(GroupLostError, match="has not joined"):
            await broker.fetch("t", "nobody", limit=1, wait=0)
        with pytest.raises(NotFoundError, match="no group"):
            await broker.delete_group("t", "nobody")
        await broker.join("t", "g", POLICY)
        with pytest.raises(ConfigError, match="limit"):
            await broker.fetch("t", "g", limit=0, wait=0)
        with pytest.raises(InvalidArgumentError, match="receipt"):
            await broker.ack("t", "g", ["forged"])
        with pytest.raises(InvalidArgumentError, match="receipt"):
            await broker.fail("t", "g", "1.0", "a delivery numbered 0")
        with pytest.raises(InvalidArgumentError, match="id"):
            broker.dead_letter("1; DROP TABLE messages")
        with pytest.raises(ConfigError, match="group"):
            await broker.join("t", "a.b", POLICY)
    finally:
        await broker.aclose()


def test_the_floor_stays_below_everything_still_out() -> None:
    """Leased and waiting sequences hold the floor back; done ones above it do not."""
    state = GroupState()
    for sequence in (1, 2, 3, 4):
        state.passed(sequence)
        state.lease(sequence, now=0, ack_wait=10)
    state.done(2)
    state.done(4)
    assert state.advance_floor() == 1
    assert state.failed(1, 1, retry_at=100.0)
    state.done(3)
    assert state.advance_floor() == 1  # 1 waits for its retry
    assert state.due(50.0, 10) == []
    assert state.due(100.0, 10) == [1]
    assert state.lease(1, now=0, ack_wait=10) == 2
    state.done(1)
    assert state.advance_floor() == 5
    assert not state.is_new(4)  # below the floor: done
    state.passed(5)
    assert state.is_new(5)


def test_the_deadline_heap_does_not_keep_every_acked_lease() -> None:
    """Thousands of leases acked before their deadline leave the heap near the count still out."""
    state = GroupState()
    for sequence in range(10_000):
        state.passed(sequence)
        state.lease(sequence, now=0, ack_wait=30)
        state.done(sequence)
    assert len(state._deadlines) <= 1024 + 2


def test_an_expired_lease_is_reported_once_and_only_if_it_is_still_out() -> None:
    state = GroupState()
    state.passed(7)
    state.lease(7, now=0, ack_wait=5)
    assert state.next_deadline() == 5
    assert state.expired(4.9) == []
    assert state.expired(5.0) == [(7, 1)]
    assert state.expired(6.0) == []
    state.passed(8)
    state.lease(8, now=0, ack_wait=5)
    state.done(8)
    assert state.expired(10.0) == []
    assert state.next_deadline() is None


async def test_an_ack_for_a_message_never_handed_out_does_not_drop_it(tmp_path: Path) -> None:
    """A receipt from before a restart (or made up) cannot mark an undelivered message done."""
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=FakeClock())
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", "x")])
    await broker.ack("t", "g", ["1.1"])
    [delivery] = await broker.fetch("t", "g", limit=1, wait=0)
    assert delivery.receipt == "1.1"
    await broker.aclose()


async def test_messages_past_their_age_are_dropped_and_groups_go_on(tmp_path: Path) -> None:
    """A sweep drops what is older than max_age, had or not; every group resumes after it."""
    clock = FakeClock()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock, max_age=3600)
    await broker.join("t", "slow", POLICY)
    await broker.join("t", "failing", POLICY)
    await broker.publish([outgoing("t", n) for n in range(5)])
    [first] = await broker.fetch("t", "failing", limit=1, wait=0)
    await broker.fail("t", "failing", first.receipt, "boom")  # due again in 10 s
    clock.advance(1800)
    await broker.publish([outgoing("t", "young")])
    assert await broker.sweep() == 0  # nothing is an hour old yet
    clock.advance(1801)
    assert await broker.sweep() == 5
    assert [r[0] for r in broker.log.read("SELECT count(*) FROM messages")] == [1]
    for group in ("slow", "failing", "new"):
        await broker.join("t", group, POLICY)
        got = await broker.fetch("t", group, limit=10, wait=0)
        assert [d.message.json() for d in got] == ["young"], group
        await broker.ack("t", group, [d.receipt for d in got])
    assert await broker.sweep() == 0
    await broker.aclose()


class WallSetBack(FakeClock):
    """A fake clock whose wall time can be set back by ``back`` seconds."""

    back = 0.0

    def time(self) -> float:
        return super().time() - self.back


async def test_a_sweep_stops_at_the_first_young_message(tmp_path: Path) -> None:
    """Publish times out of order (a wall clock set back): nothing younger than max_age goes."""
    clock = WallSetBack()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock, max_age=100)
    await broker.publish([outgoing("t", "old")])
    clock.advance(500)
    await broker.publish([outgoing("t", "young")])
    clock.back = 500  # the wall clock set back: "after" looks as old as "old"
    await broker.publish([outgoing("t", "after")])
    clock.advance(150)  # by the wall: "old" and "after" are 150 s old, "young" -350 s
    assert await broker.sweep() == 1
    rows = broker.log.read("SELECT payload FROM messages ORDER BY sequence")
    assert [bytes(r[0]) for r in rows] == [b'"young"', b'"after"']
    await broker.aclose()


async def test_without_a_max_age_nothing_is_dropped(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock, max_age=None)
    await broker.publish([outgoing("t", 1)])
    clock.advance(10**9)
    assert await broker.sweep() == 0
    await broker.aclose()
    with pytest.raises(ConfigError) as caught:
        await EmbeddedBroker.open(tmp_path / "other.db", max_age=0)
    assert caught.value.key == "max_age"


async def test_a_deleted_group_stays_deleted_after_a_restart(tmp_path: Path) -> None:
    """Its place, acks and failures leave the disk too: a restart does not bring it back."""
    clock = FakeClock()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock)
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", n) for n in range(3)])
    out = await broker.fetch("t", "g", limit=3, wait=0)
    await broker.ack("t", "g", [out[1].receipt])
    await broker.fail("t", "g", out[0].receipt, "boom")
    await broker.delete_group("t", "g")
    for table in ("groups", "acks", "failures"):
        assert broker.log.read(f"SELECT count(*) FROM {table}") == [(0,)], table  # noqa: S608
    await broker.aclose()

    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock)
    with pytest.raises(GroupLostError):
        await broker.fetch("t", "g", limit=3, wait=0)
    await broker.aclose()


async def test_a_sweep_keeps_the_newest_message_so_sequences_never_come_back(
    tmp_path: Path,
) -> None:
    """All past its age but the newest goes; later messages reach the group, restart or not."""
    clock = FakeClock()
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock, max_age=60)
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", n) for n in range(5)])
    out = await broker.fetch("t", "g", limit=5, wait=0)
    await broker.ack("t", "g", [d.receipt for d in out])
    clock.advance(120)
    assert await broker.sweep() == 4
    await broker.publish([outgoing("t", "a"), outgoing("t", "b")])
    got = await broker.fetch("t", "g", limit=10, wait=0)
    assert [d.message.json() for d in got] == ["a", "b"]
    await broker.aclose()

    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=clock, max_age=60)
    await broker.join("t", "g", POLICY)
    await broker.publish([outgoing("t", "c")])
    again = await broker.fetch("t", "g", limit=10, wait=0)
    assert [d.message.json() for d in again] == ["a", "b", "c"]  # a and b were not acked
    await broker.aclose()


async def test_a_fetch_reads_on_past_replays_meant_for_another_group(tmp_path: Path) -> None:
    """A replayed copy for one group does not hide the messages after it from another."""
    broker = await EmbeddedBroker.open(tmp_path / "bus.db", clock=FakeClock())
    await broker.join("t", "a", Redelivery(max_deliveries=1))
    await broker.join("t", "b", POLICY)
    await broker.publish([outgoing("t", "first")])
    [failed] = await broker.fetch("t", "a", limit=1, wait=0)
    await broker.fail("t", "a", failed.receipt, "refused")
    [letter] = broker.dead_letters()
    await broker.replay(letter.id)  # a copy for group a alone
    await broker.publish([outgoing("t", "after")])
    [first] = await broker.fetch("t", "b", limit=1, wait=0)
    [after] = await broker.fetch("t", "b", limit=1, wait=0)
    await broker.aclose()
    assert (first.message.json(), after.message.json()) == ("first", "after")
