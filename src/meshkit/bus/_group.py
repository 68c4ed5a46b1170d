"""One consumer group's place in its topic on the embedded broker: what is out, failed and done.

Pure bookkeeping: the broker reads the log, asks the policy, writes to disk
and waits; this only records what happened to which sequence number.

Every message of the topic below ``cursor`` has been handed out at least
once, and is now exactly one of: leased to a member (until an ack deadline),
waiting to be delivered again (after a failure, until its due time), or done
(acked, dead-lettered, or not for this group). ``floor`` is the lowest
sequence that may not be done: the lowest of the cursor, the leases and the
waiting. Only the floor, the done sequences above it and the failures are
written to disk; leases are not, because a broker that restarts has no
members holding anything, and redelivers everything above its floor that is
neither done nor waiting. First deliveries therefore cost no write, and a
crash costs at most a repeat of what was in flight: at-least-once.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["GroupState"]


@dataclass(slots=True)
class _Lease:
    deliveries: int
    deadline: float  # monotonic


@dataclass(slots=True)
class GroupState:
    """Where one group stands; the broker keeps one per (topic, group).

    Times: lease deadlines are monotonic seconds (they live only as long as
    the process); due times of failed messages are Unix seconds, because
    they are written to disk and read back after a restart.
    """

    floor: int = 0
    cursor: int = 0
    _done: set[int] = field(default_factory=set)
    _leases: dict[int, _Lease] = field(default_factory=dict)
    _deadlines: list[tuple[float, int, int]] = field(default_factory=list)  # heap
    _failures: dict[int, int] = field(default_factory=dict)  # deliveries that failed so far
    _waiting: dict[int, float] = field(default_factory=dict)  # due time
    _due: list[tuple[float, int]] = field(default_factory=list)  # heap

    @classmethod
    def restored(
        cls, *, floor: int, done: Iterable[int], failures: Iterable[tuple[int, int, float]]
    ) -> GroupState:
        """Where a restarted broker resumes; ``failures`` are (sequence, deliveries, due)."""
        state = cls(floor=floor, cursor=floor, _done=set(done))
        for sequence, deliveries, due in failures:
            state._failures[sequence] = deliveries
            state._wait(sequence, due)
        return state

    # -- handing out ------------------------------------------------------------

    def is_new(self, sequence: int) -> bool:
        """Whether the cursor should hand ``sequence`` out: it is not done, leased or waiting."""
        return (
            sequence >= self.floor
            and sequence not in self._done
            and sequence not in self._leases
            and sequence not in self._waiting
        )

    def passed(self, sequence: int) -> None:
        """The cursor has handled everything up to and including ``sequence``."""
        if sequence >= self.cursor:
            self.cursor = sequence + 1

    def lease(self, sequence: int, *, now: float, ack_wait: float) -> int:
        """Lease ``sequence`` until ``now + ack_wait``: this delivery's number (from 1)."""
        deliveries = self._failures.get(sequence, 0) + 1
        self._waiting.pop(sequence, None)
        self._leases[sequence] = _Lease(deliveries, now + ack_wait)
        heapq.heappush(self._deadlines, (now + ack_wait, sequence, deliveries))
        if len(self._deadlines) > 2 * len(self._leases) + 1024:
            # Acked leases stay in the heap until their deadline: at thousands
            # of messages a second and a 30 s ack_wait, far more than are out.
            self._deadlines = [
                (lease.deadline, s, lease.deliveries) for s, lease in self._leases.items()
            ]
            heapq.heapify(self._deadlines)
        return deliveries

    def due(self, now: float, limit: int) -> list[int]:
        """Up to ``limit`` waiting sequences whose due time has come, earliest first.

        They stay waiting: the caller leases each one (or, if it is gone from
        the log, calls ``done``).
        """
        found: list[int] = []
        while self._due and len(found) < limit and self._due[0][0] <= now:
            due, sequence = heapq.heappop(self._due)
            if self._waiting.get(sequence) == due:  # else stale: acked, or due again later
                found.append(sequence)
        return found

    def expired(self, now: float) -> list[tuple[int, int]]:
        """(sequence, deliveries) of each lease whose ack deadline has passed; still leased."""
        found: list[tuple[int, int]] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, sequence, deliveries = heapq.heappop(self._deadlines)
            lease = self._leases.get(sequence)
            if lease is not None and lease.deliveries == deliveries:
                found.append((sequence, deliveries))
        return found

    # -- outcomes ---------------------------------------------------------------

    def done(self, sequence: int) -> bool:
        """Acked (or not for this group): True if it was out; False if it was done already,
        or never handed out (an ack from before a restart: it is delivered again)."""
        if sequence in self._done or sequence < self.floor or sequence >= self.cursor:
            return False
        self._leases.pop(sequence, None)
        self._waiting.pop(sequence, None)
        self._failures.pop(sequence, None)
        self._done.add(sequence)
        return True

    def failed(self, sequence: int, deliveries: int, *, retry_at: float | None) -> bool:
        """Delivery number ``deliveries`` failed: wait until ``retry_at``, or done with it (None).

        False, and nothing changes, when that delivery is no longer the one
        out (its lease expired and the message went to another member).
        """
        lease = self._leases.get(sequence)
        if lease is None or lease.deliveries != deliveries:
            return False
        del self._leases[sequence]
        if retry_at is None:
            self._failures.pop(sequence, None)
            self._done.add(sequence)
        else:
            self._failures[sequence] = deliveries
            self._wait(sequence, retry_at)
        return True

    def _wait(self, sequence: int, due: float) -> None:
        self._waiting[sequence] = due
        heapq.heappush(self._due, (due, sequence))

    # -- what to write and when to wake -------------------------------------------

    def advance_floor(self) -> int:
        """The new floor, dropping what is done below it from memory."""
        floor = min(self.cursor, min(self._leases, default=self.cursor))
        floor = min(floor, min(self._waiting, default=floor))
        if floor > self.floor:
            self.floor = floor
            self._done = {sequence for sequence in self._done if sequence >= floor}
        return self.floor

    def next_due(self) -> float | None:
        """The Unix time the earliest waiting message is due, if any waits."""
        while self._due and self._waiting.get(self._due[0][1]) != self._due[0][0]:
            heapq.heappop(self._due)  # stale
        return self._due[0][0] if self._due else None

    def next_deadline(self) -> float | None:
        """The monotonic time the earliest lease runs out, if any is out."""
        while self._deadlines:
            _, sequence, deliveries = self._deadlines[0]
            lease = self._leases.get(sequence)
            if lease is not None and lease.deliveries == deliveries:
                return self._deadlines[0][0]
            heapq.heappop(self._deadlines)  # stale
        return None

    def statistics(self) -> dict[str, int]:
        return {"leased": len(self._leases), "waiting": len(self._waiting), "floor": self.floor}
