"""The transactional outbox's relay, the interface of its stores, and the inbox's retention.

A service that changes its database and then publishes an event can do one
without the other: the publish fails after the commit (the event is lost),
or the commit fails after the publish (consumers act on a change that never
happened). The outbox closes that gap. The service records the event in its
own transaction (``SqliteOutbox.record``, ``PostgresOutbox.record``), so the
event commits or rolls back with the change, and an ``OutboxRelay`` publishes
committed events afterwards, in the order they were recorded.

Delivery is at least once, never at most once: the relay removes events
only after the bus has made them durable, so a relay that dies in between
publishes them again. Every event keeps the id it was recorded with and is
published with ``given_id``, so such a repeat within the bus's duplicate
window is dropped by the bus (``Published.duplicate``); past it, by the
consumer's inbox (``SqliteInbox``, ``PostgresInbox``), which remembers the
ids a group has handled in the group's own transaction.

Order: one relay at a time publishes from a database. A store's ``claim``
gives the oldest events to one relay and nothing to any other until that
relay is done, so two replicas of a service, each with its relay, never
publish overlapping or out-of-order batches. Claiming disjoint batches in
parallel (``FOR UPDATE SKIP LOCKED`` alone) would be faster, and would let
the second batch overtake the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.bus._model import Outgoing, check_group
from meshkit.bus._protocol import Bus
from meshkit.errors import ConfigError, MeshkitError, UsageError
from meshkit.policy import Backoff
from meshkit.policy import _check as check

__all__ = [
    "INBOX_RETENTION",
    "InboxRetention",
    "OutboxEntry",
    "OutboxRelay",
    "OutboxStore",
    "RelayStatistics",
]

_log = logging.getLogger("meshkit.bus.outbox")

# Waits after a failed pass: 0.1 s growing to 5 s, as a subscription waits
# for an unreachable broker. No jitter: the relays of one database take turns
# through the store's claim, so there is no herd to spread.
_UNREACHABLE = Backoff(initial=0.1, maximum=5.0)

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


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event: ``seq`` orders the outbox, ``message`` is what the relay publishes.

    ``message.given_id`` is always true: whether the id was chosen by the
    service or generated when it was recorded, a second publish of the
    event must be recognisable as a repeat.
    """

    seq: int
    message: Outgoing


class OutboxStore(Protocol):
    """Where a relay finds the events recorded in one database, and removes them.

    Errors: ``EnvironmentFaultError`` when the database cannot be reached
    (or is locked past its timeout); ``UsageError`` when meshkit's tables
    are missing (run the engine's ``SCHEMA`` or ``ensure_schema()``).
    """

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        """The oldest ``limit`` events, oldest first, claimed for this store.

        Empty when there are none, or when another store holds the claim.
        While this store holds it, no other store's ``claim`` returns
        events. The claim ends with ``sent`` or ``release``; one that this
        store does not end lapses after at most ``hold`` seconds (the relay
        crashed or hangs), so another relay can take over.
        """
        ...

    async def sent(self, entries: Sequence[OutboxEntry]) -> None:
        """These were published: remove them, and end the claim."""
        ...

    async def release(self) -> None:
        """End the claim, removing nothing (the publish failed). Without a claim, nothing."""
        ...

    async def aclose(self) -> None:
        """Release the claim and the connection."""
        ...


@dataclass(slots=True)
class RelayStatistics:
    """Counts since the relay started.

    ``published`` counts events the bus accepted, including the repeats it
    recognised (``duplicates``); ``failures`` counts passes that failed,
    and ``failing`` is how many of the latest ones did (0 when healthy).
    """

    published: int = 0
    duplicates: int = 0
    failures: int = 0
    failing: int = 0


class OutboxRelay:
    """Publishes an outbox's events in order: ``async with OutboxRelay(store, bus):``.

    A pass claims up to ``batch`` of the oldest events, publishes them with
    one ``publish_batch`` and removes them. After a full batch the next pass
    starts at once; otherwise the relay waits ``interval`` seconds, or
    until ``notify()``, which a service calls after committing an event so
    that it goes out without waiting for the poll.

    A pass that fails (the bus or the database unreachable, a publish
    longer than ``publish_timeout``) is logged and tried again after the
    ``backoff``, from the same oldest event: however long the outage,
    nothing is lost or reordered, and ``notify()`` does not cut the wait
    short. A claim the relay does not end lapses after three publish
    timeouts (enough for claiming, publishing and removing, each bounded
    by about that long), when another relay may take over.

    The relay owns ``store`` and closes it; ``bus`` is only borrowed.
    ``aclose()`` stops at once: events not yet published stay in the
    outbox for the next relay.
    """

    def __init__(
        self,
        store: OutboxStore,
        bus: Bus,
        *,
        batch: int = 100,
        interval: float = 1.0,
        publish_timeout: float = 10.0,
        backoff: Backoff = _UNREACHABLE,
        clock: Clock | None = None,
    ) -> None:
        # At most the stores' bound on one claim, as on one fetch (check_limit).
        if check.whole("batch", batch, minimum=1) > 10_000:
            raise ConfigError("batch", f"must be at most 10000, got {batch!r}")
        self._batch = batch
        self._interval = check.seconds("interval", interval)
        self._publish_timeout = check.seconds("publish_timeout", publish_timeout)
        if not isinstance(backoff, Backoff):
            raise ConfigError("backoff", f"must be a Backoff, got {type(backoff).__name__}")
        self._backoff = backoff
        self._hold = 3 * self._publish_timeout
        self._store = store
        self._bus = bus
        self._clock = clock or SystemClock()
        self.statistics = RelayStatistics()
        self._nudged = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._unpublished: Sequence[OutboxEntry] = []  # claimed, not yet removed: for the log

    async def start(self) -> None:
        """Start publishing, with a first pass at once."""
        if self._task is not None or self._stopping:
            raise UsageError("an OutboxRelay starts once")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="meshkit-outbox-relay")

    def notify(self) -> None:
        """Start a pass now (if one is running, another right after it). Safe from any thread."""
        loop = self._loop
        if loop is None:
            return  # not started: the first pass will find the event anyway
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._nudged.set()
        else:  # a service committing in a worker thread (a sync handler)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._nudged.set)

    async def aclose(self) -> None:
        """Stop, release any claim, and close the store."""
        if self._stopping:
            return
        # Flags as well as cancels, as a subscription does: a client library
        # may swallow a cancellation, and the loop would then go on.
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._store.aclose()

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the loop ------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._nudged.clear()  # a notify() from here on asks for another pass
            try:
                count = await self._pass()
            except (MeshkitError, TimeoutError) as error:
                await self._failed(error, traceback=False)
                continue
            except Exception as error:  # noqa: BLE001 (a dead relay would strand every later event)
                await self._failed(error, traceback=True)
                continue
            if self.statistics.failing:
                _log.info("outbox: publishing again after %d failures", self.statistics.failing)
                self.statistics.failing = 0
            if count < self._batch:
                await self._pause(self._interval)

    async def _pass(self) -> int:
        """Claim, publish and remove one batch: how many events it held."""
        self._unpublished = []
        try:
            entries = await self._store.claim(self._batch, hold=self._hold)
            if not entries:
                return 0
            self._unpublished = entries
            async with asyncio.timeout(self._publish_timeout):
                published = await self._bus.publish_batch([entry.message for entry in entries])
            await self._store.sent(entries)
        except BaseException:
            # Whatever went wrong (cancellation too), the events stay, and the
            # next pass, this relay's or another's, starts from the oldest.
            await self._release()
            raise
        self._unpublished = []
        self.statistics.published += len(entries)
        self.statistics.duplicates += sum(p.duplicate for p in published)
        return len(entries)

    async def _release(self) -> None:
        try:
            await self._store.release()
        except MeshkitError as error:  # the claim lapses on its own after its hold
            _log.debug("outbox: could not release the claim: %s", error)

    async def _failed(self, error: BaseException, *, traceback: bool) -> None:
        self.statistics.failures += 1
        self.statistics.failing += 1
        wait = self._backoff.ceiling(self.statistics.failing)
        _log.warning(
            "outbox: cannot publish %s (%s: %s); they stay in the outbox, trying again in %.2f s",
            _describe(self._unpublished),
            type(error).__name__,
            error,
            wait,
            exc_info=error if traceback else None,
        )
        await self._clock.sleep(wait)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or until ``notify()``."""
        if self._nudged.is_set():
            return
        sleeping = asyncio.ensure_future(self._clock.sleep(seconds))
        nudged = asyncio.ensure_future(self._nudged.wait())
        try:
            await asyncio.wait((sleeping, nudged), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeping.cancel()
            nudged.cancel()


def _describe(entries: Sequence[OutboxEntry]) -> str:
    if not entries:
        return "its oldest events"
    first, last = entries[0].message, entries[-1].message
    if len(entries) == 1:
        return f"event {first.id} ({first.topic})"
    return f"{len(entries)} events, {first.id} ({first.topic}) to {last.id} ({last.topic})"


class InboxRetention:
    """The part of an inbox that does not touch a database: its group, stamps and prune times.

    ``stamp()`` is the wall time an entry records (wall, not monotonic:
    entries outlive the process, and other processes prune them);
    ``cutoff()`` the stamp before which entries are forgotten; ``due()``
    whether a prune is due now, once per hour of the clock.
    """

    def __init__(self, group: str, *, retention: float, clock: Clock | None) -> None:
        self.group = check_group(group)
        self.retention = check.seconds("retention", retention)
        self.clock = clock or SystemClock()
        self._next_prune: float | None = None

    def stamp(self) -> float:
        return self.clock.time()

    def cutoff(self) -> float:
        return self.clock.time() - self.retention

    def due(self) -> bool:
        now = self.clock.monotonic()
        if self._next_prune is not None and now < self._next_prune:
            return False
        self._next_prune = now + _PRUNE_EVERY
        return True
