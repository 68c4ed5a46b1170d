"""Running a handler over a consumer group's messages: the one driver every backend shares.

A handler that returns acks its message; one that raises fails it, and the
backend delivers it again after the group's backoff or dead-letters it.
Acks are sent in batches: while one batch is on its way, the next gathers,
which is what lets a remote broker keep up (one round trip per batch, not
per message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from meshkit._clock import Clock, SystemClock
from meshkit._tasks import stop
from meshkit.bus import _trace
from meshkit.bus._model import UNREACHABLE, Delivery, Message, check_group, check_topic
from meshkit.bus._protocol import Bus, Consumer
from meshkit.errors import GroupLostError, MeshkitError
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["Handler", "Subscription", "SubscriptionStatistics", "subscribe"]

Handler = Callable[[Message], Awaitable[None]]

_log = logging.getLogger("meshkit.bus")
# How long one fetch waits for messages before asking again.
_POLL = 5.0


@dataclass(slots=True)
class SubscriptionStatistics:
    """Counts since the subscription started (what its metrics read at a scrape).

    ``delivered``: messages fetched; ``handled``: those whose handler
    returned, and ``acked`` the acks the backend took of them; ``failed``:
    handler failures, of which ``dead_lettered`` were a message's last
    delivery (the group's ``max_deliveries``); ``running``: handlers now.
    """

    handled: int = 0
    failed: int = 0
    running: int = 0
    delivered: int = 0
    acked: int = 0
    dead_lettered: int = 0


class Subscription:
    """A handler joined to a group; ``async with subscribe(...)`` starts it and stops it.

    Up to ``concurrency`` messages are handled at once. ``aclose(grace)``
    stops fetching, lets running handlers finish for ``grace`` seconds and
    sends their acks; a handler still running after that is cancelled, and
    its message goes to another member after the group's ack deadline.
    """

    def __init__(
        self,
        bus: Bus,
        topic: str,
        group: str,
        handler: Handler,
        *,
        concurrency: int,
        redelivery: Redelivery,
        clock: Clock,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.topic = check_topic(topic)
        self.group = check_group(group)
        check.whole("concurrency", concurrency, minimum=1)
        self.statistics = SubscriptionStatistics()
        self._bus = bus
        self._handler = handler
        self._concurrency = concurrency
        self._redelivery = redelivery
        self._clock = clock
        self._gate = gate
        self._consumer: Consumer | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()
        self._acks: list[Delivery] = []
        self._acks_waiting = asyncio.Event()
        self._fetching: asyncio.Task[None] | None = None
        self._stopping = False  # no more fetches
        self._handled_all = False  # no more acks to come
        self._acking: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the group and start handling."""
        self._consumer = await self._bus.consumer(
            self.topic, self.group, redelivery=self._redelivery
        )
        self._fetching = asyncio.create_task(self._fetch_loop())
        self._acking = asyncio.create_task(self._ack_loop())

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self, grace: float = 10.0) -> None:
        fetching, self._fetching = self._fetching, None
        if fetching is None:
            return
        # Flags as well as cancels: a cancellation can be lost inside a client
        # library's call (redis-py's reads under Python 3.11's asyncio.timeout
        # turn one into a timeout), and the loop would then go on for ever.
        self._stopping = True
        await stop(fetching)
        if self._running:
            await asyncio.wait(set(self._running), timeout=grace)
        for task in set(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        acking, self._acking = self._acking, None
        assert acking is not None
        assert self._consumer is not None
        self._handled_all = True
        self._acks_waiting.set()  # the ack loop sends what is left, and ends
        await acking
        await self._consumer.aclose()

    # -- fetching and handling --------------------------------------------------------

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            if self._gate is not None and not self._gate.is_set():
                await self._gate.wait()
                continue
            room = self._concurrency - len(self._running)
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            consumer = self._consumer
            assert consumer is not None
            try:
                deliveries = await consumer.fetch(room, wait=_POLL)
            except GroupLostError:
                await self._rejoin(consumer)
                continue
            except Exception as error:  # noqa: BLE001 (a dead loop would stop the group's work)
                failures += 1
                wait = UNREACHABLE.ceiling(failures)
                _log.warning(
                    "%s/%s: cannot fetch (%r); again in %.1f s", self.topic, self.group, error, wait
                )
                await self._clock.sleep(wait)
                continue
            failures = 0
            self.statistics.delivered += len(deliveries)
            traced = _trace.recording()
            for delivery in deliveries:
                task = asyncio.create_task(self._handle(consumer, delivery, traced))
                self._running.add(task)
                task.add_done_callback(self._finished)
            self.statistics.running = len(self._running)

    async def _rejoin(self, lost: Consumer) -> None:
        """The broker does not know the group (it lost the join, or its data): join again."""
        _log.warning("%s/%s: the broker lost the group; joining again", self.topic, self.group)
        try:
            self._consumer = await self._bus.consumer(
                self.topic, self.group, redelivery=self._redelivery
            )
        except MeshkitError as error:  # the next fetch, on the old one, says so again
            _log.warning("%s/%s: cannot join again: %s", self.topic, self.group, error)
            return
        with contextlib.suppress(MeshkitError):
            await lost.aclose()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self.statistics.running = len(self._running)
        self._room.set()

    async def _handle(self, consumer: Consumer, delivery: Delivery, traced: bool) -> None:  # noqa: FBT001
        message = delivery.message
        try:
            with _trace.consuming(message, self.group, recording=traced):
                await self._handler(message)
        except Exception as error:  # noqa: BLE001 (any handler failure fails the message)
            self.statistics.failed += 1
            if message.deliveries >= self._redelivery.max_deliveries:
                self.statistics.dead_lettered += 1
            _log.warning(
                "%s/%s: handler failed on message %s (delivery %d): %r",
                self.topic,
                self.group,
                message.id,
                message.deliveries,
                error,
            )
            try:
                await consumer.fail(delivery, f"{type(error).__name__}: {error}")
            except Exception as unsent:  # noqa: BLE001 (reported below; it comes back anyway)
                # It comes back after the ack deadline and counts as failed then.
                _log.warning(
                    "%s/%s: could not report the failure: %s", self.topic, self.group, unsent
                )
            return
        self.statistics.handled += 1
        self._acks.append(delivery)
        self._acks_waiting.set()

    # -- acks ------------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while self._acks or not self._handled_all:
            await self._acks_waiting.wait()
            await self._send_acks()

    async def _send_acks(self) -> None:
        self._acks_waiting.clear()
        batch, self._acks = self._acks, []
        if not batch:
            return
        assert self._consumer is not None
        try:
            await self._consumer.ack(batch)
            self.statistics.acked += len(batch)
        except Exception as error:  # noqa: BLE001 (the loop must go on sending acks)
            # Not lost: they come back after the ack deadline, and are handled again.
            _log.warning(
                "%s/%s: could not ack %d messages: %s", self.topic, self.group, len(batch), error
            )


def subscribe(
    bus: Bus,
    topic: str,
    group: str,
    handler: Handler,
    *,
    concurrency: int = 10,
    redelivery: Redelivery | None = None,
    clock: Clock | None = None,
    gate: asyncio.Event | None = None,
) -> Subscription:
    """A subscription of ``handler`` to ``topic`` in ``group``: use it as ``async with``.

    ``redelivery`` defaults to ``Redelivery()``: 5 deliveries with waits of
    1, 2, 4 and 8 s, then the dead-letter queue. With a ``gate``, messages
    are fetched only while it is set: nothing is taken (and no ack deadline
    runs) while the handler could not do anything with it.
    """
    return Subscription(
        bus,
        topic,
        group,
        handler,
        concurrency=concurrency,
        redelivery=redelivery or Redelivery(),
        clock=clock or SystemClock(),
        gate=gate,
    )
