import random

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from meshkit.errors import ConfigError, LeaseExpiredError, LeaseNotFoundError, UsageError
from meshkit.policy import LeaseEvent, LeaseEventKind, LeaseTable

REGISTERED, RENEWED, EXPIRED, REMOVED = (
    LeaseEventKind.REGISTERED,
    LeaseEventKind.RENEWED,
    LeaseEventKind.EXPIRED,
    LeaseEventKind.REMOVED,
)


def test_lease_lives_for_its_ttl_and_renewal_extends_it() -> None:
    """A lease is live before its TTL, gone at it, and a renewal restarts the TTL."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    lease = table.register("orders/1", "127.0.0.1:9001", ttl=5, now=0.0)
    assert table.get("orders/1", 4.999) == lease
    assert table.get("orders/1", 5.0) is None
    renewed = table.renew(lease.id, 4.0)
    assert renewed.expires_at == 9.0
    assert table.get("orders/1", 8.9) == renewed


def test_renewing_too_late_fails_and_records_the_expiry() -> None:
    """Renewing after the TTL raises LeaseExpiredError; the expiry becomes an event."""
    events: list[object] = []
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1), hook=events.append)
    lease = table.register("orders/1", "a", ttl=5, now=0.0)
    with pytest.raises(LeaseExpiredError):
        table.renew(lease.id, 5.0)
    assert [e.kind for e in events] == [REGISTERED, EXPIRED]  # type: ignore[attr-defined]
    with pytest.raises(LeaseNotFoundError):
        table.renew(lease.id, 5.0)


def test_registering_a_key_again_replaces_its_lease() -> None:
    """A second registration of a key takes over; the old lease id is dead."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    old = table.register("orders/1", "a", ttl=5, now=0.0)
    new = table.register("orders/1", "b", ttl=5, now=1.0)
    assert new.id != old.id
    assert table.live(2.0) == [new]
    with pytest.raises(LeaseNotFoundError, match="replaced"):
        table.renew(old.id, 2.0)
    assert table.expire(5.5) == []  # the old lease's expiry entry is skipped


def test_index_advances_on_membership_changes_only() -> None:
    """Register, expire and remove advance the index; renew does not."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    a = table.register("a", "a", ttl=5, now=0.0)
    b = table.register("b", "b", ttl=10, now=0.0)
    assert table.index == 2
    table.renew(a.id, 1.0)
    assert table.index == 2
    [expired] = table.expire(6.0)
    assert (expired.kind, expired.key, expired.index) == (EXPIRED, "a", 3)
    table.remove(b.id, 7.0)
    assert table.index == 4
    changes = table.changes_since(table.epoch, 1)
    assert changes is not None
    assert [(e.kind, e.key, e.index) for e in changes] == [
        (REGISTERED, "b", 2),
        (EXPIRED, "a", 3),
        (REMOVED, "b", 4),
    ]
    assert table.changes_since(table.epoch, 4) == ()


def test_a_watcher_too_far_behind_must_resync() -> None:
    """changes_since returns None when history no longer reaches back, or the index is foreign."""
    table: LeaseTable[int] = LeaseTable(rng=random.Random(1), history=3)
    for i in range(5):
        table.register(f"k{i}", i, ttl=5, now=0.0)
    assert table.changes_since(table.epoch, 1) is None
    changes = table.changes_since(table.epoch, 2)
    assert changes is not None
    assert [e.index for e in changes] == [3, 4, 5]
    assert table.changes_since(table.epoch, 99) is None  # ahead of the table: start over
    assert table.changes_since(table.epoch + 1, 4) is None  # another table's epoch


def test_an_id_from_before_a_restart_names_no_lease() -> None:
    """Lease ids are random, so a holder from an old table cannot renew or remove a new lease."""
    old: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    stale = old.register("orders/1", "a", ttl=5, now=0.0)
    new: LeaseTable[str] = LeaseTable(rng=random.Random(2))
    new.register("payments/1", "b", ttl=5, now=0.0)
    with pytest.raises(LeaseNotFoundError):
        new.renew(stale.id, 1.0)
    with pytest.raises(LeaseNotFoundError):
        new.remove(stale.id, 1.0)
    assert old.epoch != new.epoch


def test_renewals_do_not_grow_memory_without_bound() -> None:
    """Renewing long leases often keeps the expiry heap proportional to the leases held."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    leases = [table.register(f"k{i}", "v", ttl=3600, now=0.0) for i in range(10)]
    for step in range(10_000):
        table.renew(leases[step % 10].id, step * 0.01)
    assert len(table._expiries) <= 4 * len(table) + 65  # white-box: the heap itself
    assert table.next_expiry() == leases[0].ttl + 99.9


def test_a_restored_table_gives_every_lease_one_more_ttl() -> None:
    """restore() keeps ids, epoch and index, and each lease lives one TTL from the restore."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    table.restore([(11, "a/1", "x", 5.0), (12, "b/1", "y", 10.0)], epoch=77, index=9, now=100.0)
    assert (table.epoch, table.index) == (77, 9)
    assert [lease.id for lease in table.live(104.9)] == [11, 12]
    assert [lease.id for lease in table.live(105.0)] == [12]
    assert table.renew(11, 104.0).expires_at == 109.0
    assert table.changes_since(77, 9) == ()
    assert table.changes_since(77, 8) is None  # history from before the restart is gone
    table.register("c/1", "z", ttl=5, now=104.0)
    assert table.index == 10


def test_a_stall_renews_every_lease_live_when_it_began() -> None:
    """After resume(since, now), a lease live at ``since`` has from ``now`` what it had left,
    keeps its id and can be renewed; one that ran out before the stall stays expired."""
    events: list[LeaseEvent[str]] = []
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1), hook=events.append)  # type: ignore[arg-type]
    kept = table.register("orders/1", "a", ttl=5, now=0.0)
    table.renew(kept.id, 3.0)  # due at 8
    lapsed = table.register("orders/2", "b", ttl=1, now=0.0)  # due at 1, before the stall
    index = table.index
    assert table.resume(since=4.0, now=11.0) == 1  # seven seconds not heard: due at 15
    assert [lease.id for lease in table.live(14.9)] == [kept.id]
    assert table.renew(kept.id, 14.9).expires_at == 19.9
    assert table.get("orders/2", 11.0) is None
    with pytest.raises(LeaseExpiredError):
        table.renew(lapsed.id, 11.0)
    assert table.index == index + 1  # the lapsed one's expiry; the resume changed no membership
    assert [e.kind for e in events[-3:]] == [RENEWED, RENEWED, EXPIRED]
    assert table.next_expiry() == 19.9


def test_a_registry_that_keeps_stalling_still_expires_a_dead_holder() -> None:
    """Stalls give back only the time they took: unrenewed, a lease runs out between them."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    lease = table.register("orders/1", "a", ttl=10, now=0.0)
    now = 0.0
    for _ in range(5):  # 2 s heard, then 6 s not, over and over
        now += 2
        table.resume(since=now, now=now + 6)
        now += 6
    assert table.get("orders/1", now) is None
    with pytest.raises(LeaseExpiredError):
        table.renew(lease.id, now)


def test_a_resume_never_shortens_a_lease_nor_runs_backwards() -> None:
    """A lease due later than now + TTL keeps its expiry; ``since`` after ``now`` is refused."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    lease = table.register("a", "a", ttl=5, now=10.0)
    assert table.resume(since=5.0, now=6.0) == 0
    assert table.get("a", 14.9) == lease
    with pytest.raises(UsageError):
        table.resume(since=11.0, now=10.0)


def test_next_expiry_tracks_renewals() -> None:
    """next_expiry is the earliest live expiry, skipping superseded entries."""
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1))
    assert table.next_expiry() is None
    a = table.register("a", "a", ttl=5, now=0.0)
    table.register("b", "b", ttl=8, now=0.0)
    assert table.next_expiry() == 5.0
    table.renew(a.id, 4.0)
    assert table.next_expiry() == 8.0


@pytest.mark.parametrize(
    ("key", "ttl", "field"), [("", 5, "key"), ("a", 0, "ttl"), ("a", -1, "ttl")]
)
def test_bad_registration_names_the_field(key: str, ttl: float, field: str) -> None:
    """An empty key or a non-positive TTL raises ConfigError naming it."""
    with pytest.raises(ConfigError) as caught:
        LeaseTable[str](rng=random.Random(1)).register(key, "v", ttl=ttl, now=0.0)
    assert caught.value.key == field


class LeaseMachine(RuleBasedStateMachine):
    """Random registrations, renewals, removals, sweeps and passing time against a model."""

    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.events: list[LeaseEvent[int]] = []
        self.table: LeaseTable[int] = LeaseTable(
            rng=random.Random(0), history=16, hook=self.events.append
        )  # type: ignore[arg-type]
        self.now = 0.0
        self.expires: dict[int, float] = {}  # model: lease id -> expiry, while not removed
        self.key_of: dict[int, str] = {}
        self.ttl_of: dict[int, float] = {}
        self.last_index = 0

    @rule(target=leases, key=st.sampled_from("abcde"), ttl=st.floats(0.1, 10))
    def register(self, key: str, ttl: float) -> int:
        for lease_id, k in list(self.key_of.items()):
            if k == key:
                del self.key_of[lease_id]
                self.expires.pop(lease_id, None)
        lease = self.table.register(key, 0, ttl=ttl, now=self.now)
        self.expires[lease.id] = self.now + ttl
        self.ttl_of[lease.id] = ttl
        self.key_of[lease.id] = key
        return lease.id

    @rule(lease_id=leases)
    def renew(self, lease_id: int) -> None:
        if lease_id in self.expires and self.now < self.expires[lease_id]:
            lease = self.table.renew(lease_id, self.now)
            self.expires[lease_id] = lease.expires_at
        else:
            with pytest.raises((LeaseExpiredError, LeaseNotFoundError)):
                self.table.renew(lease_id, self.now)
            self._forget(lease_id)

    @rule(lease_id=leases)
    def remove(self, lease_id: int) -> None:
        if lease_id in self.expires and self.now < self.expires[lease_id]:
            self.table.remove(lease_id, self.now)
        else:
            with pytest.raises((LeaseExpiredError, LeaseNotFoundError)):
                self.table.remove(lease_id, self.now)
        self._forget(lease_id)

    @rule(seconds=st.floats(0, 4))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(seconds=st.floats(0, 20))
    def stalled(self, seconds: float) -> None:
        """The driver did not run for ``seconds``: every lease live before has that time back."""
        since, self.now = self.now, self.now + seconds
        renewed = self.table.resume(since=since, now=self.now)
        fresh = {
            i: min(e + seconds, self.now + self.ttl_of[i])
            for i, e in self.expires.items()
            if since < e
        }
        assert renewed == sum(self.expires[i] < fresh[i] for i in fresh)
        for lease_id, expires in fresh.items():
            self.expires[lease_id] = max(self.expires[lease_id], expires)

    @rule()
    def sweep(self) -> None:
        due = {i for i, expires in self.expires.items() if expires <= self.now}
        events = self.table.expire(self.now)
        assert all(event.kind is EXPIRED for event in events)
        assert {event.lease_id for event in events} == due  # each expiry reported once
        for lease_id in due:
            self._forget(lease_id)

    def _forget(self, lease_id: int) -> None:
        self.expires.pop(lease_id, None)
        self.key_of.pop(lease_id, None)

    @invariant()
    def live_is_exactly_the_unexpired_leases(self) -> None:
        # Never live after its TTL without a renewal, swept or not.
        expected = {i for i, expires in self.expires.items() if self.now < expires}
        assert {lease.id for lease in self.table.live(self.now)} == expected

    @invariant()
    def index_only_grows_and_history_replays_it(self) -> None:
        assert self.table.index >= self.last_index
        changes = self.table.changes_since(self.table.epoch, self.last_index)
        if changes is not None:
            assert [e.index for e in changes] == list(
                range(self.last_index + 1, self.table.index + 1)
            )
        self.last_index = self.table.index

    @invariant()
    def every_change_was_reported(self) -> None:
        membership = [e for e in self.events if e.kind is not RENEWED]
        assert len(membership) == self.table.index


TestLeaseMachine = LeaseMachine.TestCase
