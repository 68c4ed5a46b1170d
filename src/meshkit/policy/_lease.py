"""Leases with a TTL: who is alive, and an index that watchers can wait on.

A holder registers a key (a service instance) with a TTL and must renew the
lease before the TTL runs out, or the lease expires. Liveness is computed
from ``now`` on every read: a lease is live while ``now < expires_at``, and
never after, even if the driver has not called ``expire()`` yet. ``expire()``
only turns expiries into events and frees memory; it never decides liveness.

Every change emits a ``LeaseEvent`` through the hook. Membership changes
(registered, expired, removed) also advance ``index`` by one and go into a
bounded history, from which ``changes_since(index)`` answers a watcher.
Renewals do not advance the index: they change nobody's view of which
instances are live, and with every instance renewing every few seconds they
would wake every watcher constantly (Consul's blocking queries likewise
advance their index only when the result changes).

Time the table could not hear: a holder can only renew while the table's
driver runs. When the driver was stalled (its process stopped, its event
loop blocked) or restarted, it calls ``resume(since, now)``, and every lease
live at ``since`` gets a fresh TTL from ``now``, as etcd gives every lease a
fresh TTL when a new leader takes over (its lessor's ``Promote``): a lease
must not expire for renewals that were sent but could not be heard. A
restored table does the same for the leases it loads.

Identity across restarts: lease ids are random 63-bit numbers, like etcd's,
so an id held from before a restart names no lease in a new table instead of
someone else's. A watcher's position is the pair ``(epoch, index)``; a table
starts with a random ``epoch``, and ``changes_since`` tells a watcher whose
epoch differs to start over. A table restored from disk keeps both.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

import msgspec

from meshkit.errors import LeaseExpiredError, LeaseNotFoundError, UsageError
from meshkit.policy import _check as check
from meshkit.policy._events import Hook, LeaseEvent, LeaseEventKind

__all__ = ["Lease", "LeaseTable"]

V = TypeVar("V")


class Lease(msgspec.Struct, Generic[V], frozen=True, kw_only=True):
    id: int
    key: str
    value: V
    ttl: float
    expires_at: float

    def live(self, now: float) -> bool:
        return now < self.expires_at


class LeaseTable(Generic[V]):
    """Leases by id and by key, expiring on TTL.

    One key holds at most one lease: registering a key again replaces its
    lease, and the old lease id can no longer be renewed or removed.
    """

    __slots__ = (
        "_by_id",
        "_by_key",
        "_expiries",
        "_history",
        "_hook",
        "_rng",
        "epoch",
        "index",
        "name",
    )

    def __init__(
        self,
        *,
        rng: random.Random,
        history: int = 1024,
        name: str = "",
        hook: Hook | None = None,
    ) -> None:
        check.whole("history", history, minimum=1)
        self.name = name
        self._rng = rng
        self.epoch = rng.getrandbits(63)
        self.index = 0
        self._hook = hook
        self._by_id: dict[int, Lease[V]] = {}
        self._by_key: dict[str, int] = {}
        # (expires_at, lease id); renewals push a new entry and leave the old
        # one to be skipped when it surfaces, which keeps renew O(log n).
        self._expiries: list[tuple[float, int]] = []
        self._history: deque[LeaseEvent[V]] = deque(maxlen=history)

    def restore(
        self,
        leases: Iterable[tuple[int, str, V, float]],
        *,
        epoch: int,
        index: int,
        now: float,
    ) -> None:
        """Load leases saved by an earlier table, each live for one more TTL from ``now``.

        ``leases`` are ``(lease_id, key, value, ttl)``. Keeping the saved
        ``epoch`` and ``index`` lets watchers carry on across a restart; the
        history starts empty, so one that was behind starts over. Expiry times
        are not saved because a monotonic clock means nothing to another
        process: every restored holder gets a full TTL in which to renew.
        """
        check.whole("index", index, minimum=0)
        self.epoch = epoch
        self.index = index
        self._by_id.clear()
        self._by_key.clear()
        self._expiries.clear()
        self._history.clear()
        for lease_id, key, value, ttl in leases:
            check.text("key", key)
            check.seconds("ttl", ttl)
            self._store(Lease(id=lease_id, key=key, value=value, ttl=ttl, expires_at=now + ttl))

    def advance(self) -> int:
        """Count a change watchers must see that is no lease's (a service's traffic
        weights): the index moves on, and ``changes_since`` tells a watcher behind
        it to start over, since the history holds no event for it. Returns the index."""
        self.index += 1
        self._history.clear()
        return self.index

    def resume(self, *, since: float, now: float) -> int:
        """Renewals could not be heard from ``since`` to ``now``: that time does not count.

        Every lease live at ``since`` has its expiry moved on by the gap,
        never past a full TTL from ``now``: it has from ``now`` what it had
        left at ``since``. (A fresh TTL for each instead would let a registry
        that keeps stalling keep a dead holder's lease alive for ever.)
        Returns how many leases were moved on.

        A lease that ran out before ``since`` is left to ``expire()``: its
        holder had a whole TTL to renew while the table was listening.
        Each renewal is reported as ``RENEWED``, as ``renew`` reports one.
        """
        if not since <= now:
            raise UsageError(f"resume(since={since!r}, now={now!r}): since is after now")
        renewed = 0
        gap = now - since
        for lease in list(self._by_id.values()):
            expires_at = min(lease.expires_at + gap, now + lease.ttl)
            if lease.live(since) and lease.expires_at < expires_at:
                lease = msgspec.structs.replace(lease, expires_at=expires_at)
                self._store(lease)
                self._record(LeaseEventKind.RENEWED, lease, now)
                renewed += 1
        return renewed

    def __len__(self) -> int:
        """Leases held, including expired ones not yet swept by ``expire()``."""
        return len(self._by_id)

    def register(self, key: str, value: V, ttl: float, now: float) -> Lease[V]:
        """Grant a lease on ``key`` for ``ttl`` seconds, replacing any lease the key had."""
        check.text("key", key)
        check.seconds("ttl", ttl)
        previous = self._by_key.get(key)
        if previous is not None:
            del self._by_id[previous]
        lease = Lease(id=self._new_id(), key=key, value=value, ttl=ttl, expires_at=now + ttl)
        self._store(lease)
        self._record(LeaseEventKind.REGISTERED, lease, now)
        return lease

    def renew(self, lease_id: int, now: float) -> Lease[V]:
        """Extend a live lease by its TTL from ``now``.

        Raises ``LeaseNotFoundError`` for an unknown, removed or replaced
        lease, and ``LeaseExpiredError`` (after recording the expiry) if the
        TTL has already run out.
        """
        lease = self._live(lease_id, now)
        lease = msgspec.structs.replace(lease, expires_at=now + lease.ttl)
        self._store(lease)
        self._record(LeaseEventKind.RENEWED, lease, now)
        return lease

    def remove(self, lease_id: int, now: float) -> Lease[V]:
        """End a live lease now. Raises like ``renew``."""
        lease = self._live(lease_id, now)
        self._drop(lease)
        self._record(LeaseEventKind.REMOVED, lease, now)
        return lease

    def expire(self, now: float) -> list[LeaseEvent[V]]:
        """Record the expiry of every lease whose TTL ran out by ``now``."""
        events = []
        while self._expiries and self._expiries[0][0] <= now:
            expires_at, lease_id = heapq.heappop(self._expiries)
            lease = self._by_id.get(lease_id)
            if lease is not None and lease.expires_at == expires_at:
                events.append(self._expire(lease, now))
        return events

    def next_expiry(self) -> float | None:
        """When the next lease will expire unless renewed; ``None`` if none is held."""
        while self._expiries:
            expires_at, lease_id = self._expiries[0]
            lease = self._by_id.get(lease_id)
            if lease is not None and lease.expires_at == expires_at:
                return expires_at
            heapq.heappop(self._expiries)
        return None

    def get(self, key: str, now: float) -> Lease[V] | None:
        """The live lease on ``key``, if any."""
        lease_id = self._by_key.get(key)
        lease = None if lease_id is None else self._by_id[lease_id]
        return lease if lease is not None and lease.live(now) else None

    def live(self, now: float) -> list[Lease[V]]:
        """Every live lease, in the order they were granted."""
        return [lease for lease in self._by_id.values() if lease.live(now)]

    def changes_since(self, epoch: int, index: int) -> tuple[LeaseEvent[V], ...] | None:
        """Membership events after ``index`` of ``epoch``, oldest first.

        Empty when nothing changed since. ``None`` when the watcher must start
        over (re-read ``live()`` and carry on from ``(self.epoch, self.index)``):
        its epoch is another table's, such as one from before a restart, or
        the history no longer reaches back to its index.
        """
        check.whole("index", index, minimum=0)
        if epoch != self.epoch:
            return None
        if index == self.index:
            return ()
        if index > self.index or not self._history or self._history[0].index > index + 1:
            return None
        start = index + 1 - self._history[0].index
        return tuple(itertools.islice(self._history, start, None))

    # -- internals --------------------------------------------------------

    def _live(self, lease_id: int, now: float) -> Lease[V]:
        lease = self._by_id.get(lease_id)
        if lease is None:
            raise LeaseNotFoundError(lease_id, "no such lease (never granted, removed or replaced)")
        if not lease.live(now):
            self._expire(lease, now)
            raise LeaseExpiredError(
                lease_id, f"expired at {lease.expires_at:.3f}, before {now:.3f}"
            )
        return lease

    def _new_id(self) -> int:
        while True:
            lease_id = self._rng.getrandbits(63)
            if lease_id and lease_id not in self._by_id:
                return lease_id

    def _store(self, lease: Lease[V]) -> None:
        self._by_id[lease.id] = lease
        self._by_key[lease.key] = lease.id
        expiries = self._expiries
        if len(expiries) > 4 * len(self._by_id) + 64:
            # Mostly superseded entries: rebuild from the live leases so
            # frequent renewals of long TTLs cannot grow the heap without bound.
            expiries[:] = [(held.expires_at, held.id) for held in self._by_id.values()]
            heapq.heapify(expiries)
        else:
            heapq.heappush(expiries, (lease.expires_at, lease.id))

    def _drop(self, lease: Lease[V]) -> None:
        del self._by_id[lease.id]
        del self._by_key[lease.key]

    def _expire(self, lease: Lease[V], now: float) -> LeaseEvent[V]:
        self._drop(lease)
        event = self._record(LeaseEventKind.EXPIRED, lease, now)
        assert event is not None  # membership changes always produce one
        return event

    def _record(self, kind: LeaseEventKind, lease: Lease[V], now: float) -> LeaseEvent[V] | None:
        renewal = kind is LeaseEventKind.RENEWED
        if renewal and self._hook is None:
            return None  # nobody to tell, and renewals stay out of the history
        if not renewal:
            self.index += 1
        event = LeaseEvent(
            kind=kind,
            lease_id=lease.id,
            key=lease.key,
            value=lease.value,
            expires_at=lease.expires_at,
            index=self.index,
            at=now,
        )
        if not renewal:
            self._history.append(event)
        if self._hook is not None:
            self._hook(event)
        return event
