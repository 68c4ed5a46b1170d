"""The inbox's part that touches no database: its group, how long it keeps ids, when it prunes.

An inbox remembers the ids a consumer group has handled, in the group's own
transactions, so that a repeat past the bus's duplicate window (a relay
that published an event again after a crash, a redelivery whose ack was
lost) changes nothing twice. Each engine's inbox (``SqliteInbox``,
``PostgresInbox``) derives from ``InboxRetention`` and adds its statements.
"""

from __future__ import annotations

from meshkit._clock import Clock, SystemClock
from meshkit.bus._model import check_group
from meshkit.policy import _check as check

__all__ = ["INBOX_RETENTION", "InboxRetention"]

# Seven days, Kafka's default log retention (log.retention.hours=168). A
# repeat reaches a consumer when a relay publishes an event again after it
# crashed between publishing and removing it (possibly only when the
# service comes back, after a weekend), or when a broker redelivers a
# message whose ack was lost (minutes). A week covers both with room to
# spare, and at 10 events/s costs about 6 million rows of ~100 bytes.
INBOX_RETENTION = 7 * 24 * 3600.0
# An inbox prunes its group's old entries once an hour of its clock: the
# table then holds at most retention + 1 h of ids, and a handler's
# transaction pays for a prune once an hour per process.
_PRUNE_EVERY = 3600.0


class InboxRetention:
    """The base of the engines' inboxes: ``group``, ``retention``, stamps and prune times.

    ``_stamp()`` is the wall time an entry records (wall, not monotonic:
    entries outlive the process, and other processes prune them);
    ``_cutoff()`` the stamp before which entries are forgotten;
    ``_prune_due()`` whether a prune is due, which it stays until a prune
    succeeds and calls ``_pruned()``: then again an hour of the clock later.
    """

    def __init__(
        self, group: str, *, retention: float = INBOX_RETENTION, clock: Clock | None = None
    ) -> None:
        self.group = check_group(group)
        self.retention = check.seconds("retention", retention)
        self._clock = clock or SystemClock()
        self._next_prune: float | None = None

    def _stamp(self) -> float:
        return self._clock.time()

    def _cutoff(self) -> float:
        return self._clock.time() - self.retention

    def _prune_due(self) -> bool:
        return self._next_prune is None or self._clock.monotonic() >= self._next_prune

    def _pruned(self) -> None:
        self._next_prune = self._clock.monotonic() + _PRUNE_EVERY
