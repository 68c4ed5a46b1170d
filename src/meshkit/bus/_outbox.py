"""The transactional outbox's relay and the interface of its stores.

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

An event the bus refuses for good (a payload over a JetStream server's
``max_payload``, say) would stop every later one, the relay trying the
same oldest batch for ever. The relay publishes the events before it,
then ``park``s it: the store moves it to the outbox's parked events
(``parked()`` lists them, with the error) and the rest go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit._tasks import stop
from meshkit.bus import _trace
from meshkit.bus._model import UNREACHABLE, Outgoing, Published, outgoing
from meshkit.bus._protocol import Bus
from meshkit.errors import (
    ConfigError,
    InvalidArgumentError,
    MeshkitError,
    MessageRefusedError,
    UsageError,
)
from meshkit.policy import Backoff
from meshkit.policy import _check as check

__all__ = [
    "MAX_TIMEOUT",
    "OutboxEntry",
    "OutboxRelay",
    "OutboxStore",
    "ParkedEntry",
    "RelayStatistics",
    "check_seqs",
    "check_timeout",
    "outbox_entry",
    "outbox_row",
    "parked_entry",
]

_log = logging.getLogger("meshkit.bus.outbox")


# The longest publish, or wait for a database, the outbox allows. Longer is
# a hang, not a wait; and it keeps a relay's hold, 2 x (publish_timeout +
# 2 x the store's timeout), at most 6 h: PostgreSQL's timeout settings are
# 32-bit milliseconds (24.8 days).
MAX_TIMEOUT = 3600.0

_encode_headers = msgspec.json.encode
_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def check_timeout(key: str, value: object) -> float:
    """A timeout of the outbox's: positive seconds, at most ``MAX_TIMEOUT``."""
    seconds = check.seconds(key, value)
    if seconds > MAX_TIMEOUT:
        raise ConfigError(key, f"must be at most {MAX_TIMEOUT:g} seconds, got {value!r}")
    return seconds


class OutboxEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event: ``seq`` orders the outbox, ``message`` is what the relay publishes.

    ``message.given_id`` is always true: whether the id was chosen by the
    service or generated when it was recorded, a second publish of the
    event must be recognisable as a repeat.
    """

    seq: int
    message: Outgoing


class ParkedEntry(msgspec.Struct, frozen=True, kw_only=True):
    """An event the bus refused for good, out of the outbox: ``error`` why, ``parked`` when.

    ``parked`` is Unix time; ``error`` at most ``MAX_ERROR`` characters.
    """

    seq: int
    message: Outgoing
    error: str
    parked: float


def outbox_row(
    topic: str,
    payload: object,
    *,
    headers: Mapping[str, str] | None,
    key: str | None,
    message_id: str | None,
) -> tuple[str, str, bytes, str, str | None]:
    """What ``record()`` inserts: ``(id, topic, payload, headers, key)``, checked first.

    Raises ``MessageRefusedError`` naming the first bad field, as ``outgoing()``.
    """
    message = outgoing(topic, payload, headers=headers, key=key, message_id=message_id)
    headers_json = _encode_headers(message.headers).decode()
    return message.id, message.topic, message.payload, headers_json, message.key


def outbox_entry(
    seq: int, message_id: str, topic: str, payload: bytes, headers: str, key: str | None
) -> OutboxEntry:
    """An entry read back from an outbox row, as ``outbox_row`` wrote it."""
    # Checked when it was recorded; read back as it was written.
    message = Outgoing(
        topic=topic,
        id=message_id,
        payload=payload,
        headers=_decode_headers(headers),
        key=key,
        given_id=True,
    )
    return OutboxEntry(seq=seq, message=message)


def check_seqs(seqs: object) -> list[int] | None:
    """Parked events named by seq for ``requeue`` or ``discard``: whole numbers from 1, at
    most 10,000 of them; ``InvalidArgumentError`` on ``seqs`` otherwise. ``None`` (all)
    stays ``None``."""
    if seqs is None:
        return None
    if isinstance(seqs, Sequence) and not isinstance(seqs, str | bytes) and len(seqs) <= 10_000:
        whole = [s for s in seqs if isinstance(s, int) and not isinstance(s, bool) and s >= 1]
        if len(whole) == len(seqs):
            return whole
    raise InvalidArgumentError(
        "seqs", f"must be a list of at most 10,000 seqs (from 1), or None for all; got {seqs!r}"
    )


def parked_entry(
    seq: int,
    message_id: str,
    topic: str,
    payload: bytes,
    headers: str,
    key: str | None,
    error: str,
    parked: float,
) -> ParkedEntry:
    """A parked entry read back from its row: the outbox row's columns, then why and when."""
    entry = outbox_entry(seq, message_id, topic, payload, headers, key)
    return ParkedEntry(seq=seq, message=entry.message, error=error, parked=parked)


class OutboxStore(Protocol):
    """Where a relay finds the events recorded in one database, and removes them.

    A store holds at most one claim at a time: ``claim`` while it holds
    one, and ``sent`` or ``park`` without one, raise ``UsageError``.

    Errors: ``EnvironmentFaultError`` when the database cannot be reached
    (or is locked past ``timeout``); ``UsageError`` when meshkit's tables
    are missing (run the engine's ``SCHEMA`` or ``ensure_schema()``).
    """

    @property
    def timeout(self) -> float:
        """The longest one call waits for its database (a lock, a statement) before it fails."""
        ...

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        """The oldest ``limit`` events, oldest first, claimed for this store.

        Empty (and no claim held) when there are none, or when another
        store holds the claim. While this store holds it, no other store's
        ``claim`` returns events. The claim ends with ``sent`` or
        ``release``; one that this store does not end lapses ``hold``
        seconds after it was taken (the relay crashed or hangs), so another
        relay can take over.
        """
        ...

    async def sent(self, entries: Sequence[OutboxEntry]) -> None:
        """These claimed entries were published: remove them, and end the claim."""
        ...

    async def park(self, entry: OutboxEntry, error: str) -> None:
        """Move this claimed entry out of the outbox, into its parked events, with ``error``.

        For an event the bus refuses for good. The claim stays, to be ended
        with ``sent`` or ``release``; ``error`` is kept clipped to
        ``MAX_ERROR`` characters.
        """
        ...

    async def parked(self, *, limit: int = 100) -> list[ParkedEntry]:
        """The parked events, oldest first: at most ``limit`` (1 to 10,000)."""
        ...

    async def requeue(self, seqs: Sequence[int] | None = None) -> int:
        """Put these parked events (all, with ``None``) back in the outbox: how many went.

        For once what refused them is fixed: they go after the events the
        outbox holds, in their order, with their message ids. Seqs not
        parked are passed over. ``UsageError`` while this store holds a claim.
        """
        ...

    async def discard(self, seqs: Sequence[int] | None = None) -> int:
        """Drop these parked events (all, with ``None``) for good: how many went."""
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
    and ``failing`` is how many of the latest ones did (0 when healthy);
    ``parked`` counts the events the bus refused for good.
    """

    published: int = 0
    duplicates: int = 0
    failures: int = 0
    failing: int = 0
    parked: int = 0


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
    short. An event the bus refuses for good (``MessageRefusedError``)
    is not an outage: the events before it are
    published, it is parked in the store (logged as an ERROR naming it),
    and the next pass starts at once with the events after it.

    ``publish_timeout`` is at most an hour (``MAX_TIMEOUT``), as is the
    store's timeout. The claim's hold is 2 x (``publish_timeout`` + 2 x
    ``store.timeout``): after the claim is taken, a pass publishes (all of
    it within ``publish_timeout``) and makes at most two store calls
    (``park``, ``sent``), each waiting at most the store's timeout for its
    database; twice that leaves room for a loaded machine. The hold thus
    always exceeds the store's timeout. A claim the relay does not end
    lapses after it, when another relay may take over.

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
        backoff: Backoff = UNREACHABLE,
        clock: Clock | None = None,
    ) -> None:
        # At most the stores' bound on one claim, as on one fetch (check_limit).
        self._batch = check.whole("batch", batch, minimum=1, maximum=10_000)
        self._interval = check.seconds("interval", interval)
        self._publish_timeout = check_timeout("publish_timeout", publish_timeout)
        self._backoff = check.instance("backoff", backoff, Backoff)
        store_timeout = check_timeout("store.timeout", store.timeout)
        self._hold = 2 * (self._publish_timeout + 2 * store_timeout)
        self._store = store
        self._bus = bus
        self._clock = clock or SystemClock()
        self.statistics = RelayStatistics()
        self._nudged = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

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
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
            loop.call_soon_threadsafe(self._nudged.set)

    async def aclose(self, *, flush: float = 0.0) -> None:
        """Stop, release any claim, and close the store.

        With ``flush`` seconds, first publish what the outbox holds, for at
        most that long and until a pass fails (a service stopping sends its
        last requests' events); what is left stays in the outbox for the
        next relay.
        """
        if self._stopping:
            return
        # Flags as well as cancels, as a subscription does: a client library
        # may swallow a cancellation, and the loop would then go on.
        self._stopping = True
        task, self._task = self._task, None
        try:
            if task is not None:
                await stop(task)
            if flush > 0 and task is not None:
                await self._flush(check.seconds("flush", flush))
        finally:
            await self._store.aclose()

    async def _flush(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                while await self._pass():
                    pass
        except Exception as error:  # noqa: BLE001 (logged by the pass; the events stay in the outbox)
            _log.warning("outbox: not all events went out before stopping: %r", error)

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
                again = await self._pass()
            except Exception:  # noqa: BLE001 (logged by the pass; a dead relay would strand every later event)
                await self._clock.sleep(self._backoff.ceiling(self.statistics.failing))
                continue
            if self.statistics.failing:
                _log.info("outbox: publishing again after %d failures", self.statistics.failing)
                self.statistics.failing = 0
            if not again:
                await self._pause(self._interval)

    async def _pass(self) -> bool:
        """Claim, publish and remove one batch: whether the next pass should start at once.

        On an error, logs it (with the events it concerns) and raises it.
        """
        entries: Sequence[OutboxEntry] = []
        published: Sequence[OutboxEntry] = []
        try:
            entries = await self._store.claim(self._batch, hold=self._hold)
            if not entries:
                return False
            async with asyncio.timeout(self._publish_timeout):
                answers, refusal = await self._publish(entries)
            published = entries[: len(answers)]
            if refusal is not None:
                await self._park(*refusal)
            await self._store.sent(published)
        except BaseException as error:
            # Whatever went wrong (cancellation too), the events stay, and the
            # next pass, this relay's or another's, starts from the oldest.
            await self._release()
            if isinstance(error, Exception):
                self._failed(error, entries, published)
            raise
        self.statistics.published += len(answers)
        self.statistics.duplicates += sum(answer.duplicate for answer in answers)
        return refusal is not None or len(entries) == self._batch

    async def _publish(
        self, entries: Sequence[OutboxEntry]
    ) -> tuple[list[Published], tuple[OutboxEntry, MessageRefusedError] | None]:
        """Publish in order, up to the first entry the bus refuses for good.

        Returns the bus's answers for the entries before that one (all of
        them when none is refused), and the refused entry with its error.
        The refused one is found by halves, each accepted half published
        once: about 2 x log2(batch) publishes, whatever its place. Only a
        ``MessageRefusedError`` is about one message: any other refusal (a
        bus not opened, a token refused) would refuse every event alike, and
        parking on it would empty the outbox into the parked events, so it
        fails the pass, which is tried again.
        """
        messages = [entry.message for entry in entries]
        try:
            with _trace.publishing(messages):
                return await self._bus.publish_batch(messages), None
        except MessageRefusedError as error:
            if len(entries) == 1:
                return [], (entries[0], error)
        half = len(entries) // 2
        first, refusal = await self._publish(entries[:half])
        if refusal is not None:
            return first, refusal
        second, refusal = await self._publish(entries[half:])
        return first + second, refusal

    async def _park(self, entry: OutboxEntry, error: MessageRefusedError) -> None:
        await self._store.park(entry, f"{type(error).__name__}: {error}")
        self.statistics.parked += 1
        _log.error(
            "outbox: the bus refuses event %s (%s) for good (%s: %s); parked it"
            " (the store's parked() lists it), the events after it go on",
            entry.message.id,
            entry.message.topic,
            type(error).__name__,
            error,
        )

    async def _release(self) -> None:
        try:
            await self._store.release()
        except MeshkitError as error:  # the claim lapses on its own after its hold
            _log.debug("outbox: could not release the claim: %s", error)

    def _failed(
        self,
        error: Exception,
        entries: Sequence[OutboxEntry],
        published: Sequence[OutboxEntry],
    ) -> None:
        self.statistics.failures += 1
        self.statistics.failing += 1
        wait = self._backoff.ceiling(self.statistics.failing)
        if published:
            what = (
                f"published {_describe(published)} but cannot remove them from the outbox"
                f" ({type(error).__name__}: {error}); they will be published again"
                " (the bus, or past its window the consumers' inbox, drops the repeats)"
            )
        else:
            what = (
                f"cannot publish {_describe(entries)} ({type(error).__name__}: {error});"
                " they stay in the outbox"
            )
        # A refusal that is not about one message (a bus not opened, a token
        # refused) does not pass with waiting: someone must fix it.
        level = logging.ERROR if isinstance(error, UsageError) else logging.WARNING
        unexpected = not isinstance(error, MeshkitError | TimeoutError)
        _log.log(
            level,
            "outbox: %s, trying again in %.2f s",
            what,
            wait,
            exc_info=error if unexpected else None,
        )

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
