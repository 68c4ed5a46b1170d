"""A member of a group: pull requests on an inbox of its own, answers confirmed by the server."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from meshkit.bus._model import Delivery, check_limit
from meshkit.bus.nats import _wire as wire
from meshkit.bus.nats._connection import Connection
from meshkit.bus.nats._letters import DeadLetters
from meshkit.errors import (
    EnvironmentFaultError,
    GroupLostError,
    InvalidArgumentError,
    MeshkitError,
    UsageError,
)
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["JetStreamConsumer", "after_failure"]

# The shortest expiry a pull is given (a fetch with wait=0 has it): a pull
# must expire, see JetStreamConsumer._pull.
_SHORTEST_PULL = 0.01


def after_failure(
    redelivery: Redelivery, deliveries: int, *, deadline: float, now: float
) -> float | Literal["late", "bury"]:
    """What a failure reported for the ``deliveries``-th delivery does.

    ``"late"``: nothing, its ack deadline passed and the server has taken it
    back (a NAK now would move the timer of its next delivery, to another
    member). A number: a NAK delayed by that many seconds. ``"bury"``: it was
    the last delivery, so it becomes a dead letter.
    """
    if now > deadline:
        return "late"
    wait = redelivery.after_failure(deliveries)
    return "bury" if wait is None else wait


class JetStreamConsumer:
    """One member of a group: made and started by ``JetStreamBus.consumer``.

    Receipts are ``"{ack subject}|{deadline}"``: the ack subject is the
    handle JetStream gives the delivery, and the deadline (on this
    process's monotonic clock) tells a late answer apart.
    """

    def __init__(
        self,
        connection: Connection,
        *,
        topic: str,
        group: str,
        durable: str,
        redelivery: Redelivery,
    ) -> None:
        self._connection = connection
        self._letters = DeadLetters(connection)
        self._settings = settings = connection.settings
        self._topic = topic
        self._group = group
        self._durable = durable
        self._redelivery = redelivery
        self._client = connection.client
        self._name = f"the member of group {group!r} on {topic!r}"
        self._inbox = connection.new_inbox(self._name, self._delivered)
        self._ready: deque[tuple[Any, float]] = deque()  # (msg, monotonic arrival)
        self._changed = asyncio.Event()
        self._fetching = asyncio.Lock()
        self._advisories: Any = None
        self._closed = False
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{settings.stream}.{durable}"

    async def start(self) -> None:
        """Subscribe; on failure nothing is left subscribed (``EnvironmentFaultError``)."""
        await self._connection.guard("subscribing", self._inbox.start())
        # A member that stops holding a message on its last delivery never
        # answers it: the server gives up on the message and only says so in
        # this advisory, which is core NATS, so nobody keeps it. A queue
        # group, so one member of the group buries it; if none is listening
        # then (no member running), the letter is lost and the message stays
        # in the stream, not delivered again. The server sends the advisory
        # when it would have redelivered the message, which is when a member
        # asks for messages.
        stream = self._settings.stream
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{self._durable}"
        try:
            self._advisories = await self._connection.guard(
                "subscribing",
                self._client.subscribe(
                    subject, queue=f"meshkit-{stream}-{self._durable}", cb=self._expired
                ),
            )
        except BaseException:
            await self._connection.quietly(self._inbox.stop())
            raise

    def _check_open(self) -> None:
        if self._left():
            raise UsageError(f"{self._name} has left")

    def _left(self) -> bool:
        # A call, not the attribute: aclose() sets it while a fetch awaits,
        # which mypy's narrowing of the attribute would not see.
        return self._closed

    def _delivered(self, msg: Any) -> None:
        self._ready.append((msg, self._settings.clock.monotonic()))
        self._changed.set()

    # -- the Consumer protocol ----------------------------------------------------------

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        """See ``Consumer.fetch``; ``[]`` once this member leaves, also for a fetch under way.

        ``GroupLostError`` when the server no longer has the group (it was deleted).
        """
        self._check_open()
        check_limit(limit)
        wait = check.seconds("wait", wait, allow_zero=True)
        clock = self._settings.clock
        async with self._fetching:
            deadline = clock.monotonic() + wait
            while not self._left():
                if len(self._ready) < limit:
                    # One no-wait pull, which nats-server 2.9 holds until the
                    # first message or its expiry (see _pull). A server that
                    # ended it at once when nothing is there (as ADR-13 has it)
                    # would be asked again round this loop until the deadline;
                    # a second pull without no_wait for that case is not made:
                    # 2.9.10 never needs one, and no test could reach it.
                    remaining = max(deadline - clock.monotonic(), _SHORTEST_PULL)
                    await self._pull(limit - len(self._ready), expires=remaining)
                if self._left():
                    break
                found = await self._deliveries(limit)
                if found or clock.monotonic() >= deadline:
                    return found
        return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self._check_open()
        subjects = [self._receipt(delivery)[0] for delivery in deliveries]
        await self._answer(subjects, b"+ACK", "acking")

    async def fail(self, delivery: Delivery, error: str) -> None:
        """Due again after the backoff (a delayed NAK), or buried and acked on the last delivery.

        The backoff is not the consumer's JetStream ``BackOff``: with one set,
        the server times every delivery's redelivery by it in place of
        ``AckWait``, so a healthy handler slower than the first wait (1 s by
        default) would see its message go to another member while it is
        still working. A NAK with a delay (nats-server >= 2.7) only moves the
        failed delivery's own timer, measured against nats-server 2.9.10: due
        again 0.25 s after a 0.25 s NAK, to the millisecond.
        """
        self._check_open()
        subject, deadline, fields = self._receipt(delivery)
        choice = after_failure(
            self._redelivery,
            fields.deliveries,
            deadline=deadline,
            now=self._settings.clock.monotonic(),
        )
        if choice == "late":
            return
        if choice == "bury":
            await self._letters.bury(
                delivery.message,
                group=self._group,
                durable=self._durable,
                deliveries=fields.deliveries,
                error=error,
                sequence=fields.sequence,
            )
            await self._answer([subject], b"+ACK", "acking a dead letter")
            return
        await self._answer([subject], b'-NAK {"delay": %d}' % round(choice * 1e9), "failing")

    async def aclose(self) -> None:
        """Leave; messages not acked go to other members after their ack deadline."""
        self._closed = True
        self._changed.set()  # a fetch under way returns []
        advisories, self._advisories = self._advisories, None
        if advisories is not None:
            await self._connection.quietly(advisories.unsubscribe())
        # Also ends the interest of any pull still open on the server:
        # it delivers to other members, not to this closed inbox.
        await self._connection.quietly(self._inbox.stop())

    # -- pulling ------------------------------------------------------------------------

    async def _pull(self, batch: int, *, expires: float) -> None:
        """Ask for up to ``batch`` messages, within ``expires`` seconds; they go to ``_ready``.

        A no-wait pull, which nats-server 2.9 answers at once with those
        ready (ending the request with a 408), and when none is, with the
        first that comes within ``expires``: the fetch contract in one
        request. Without ``expires`` it would answer at once even with none,
        but a group at its MaxAckPending would hold the request, unanswered,
        until another came. A group near it sends what it has room for and
        keeps the request open: once something came, what came before now is
        taken (``Inbox.flush``) and the rest is left to the request, whose
        later deliveries a fetch takes while their ack deadline holds.
        Returns at once when this member leaves.
        """
        request = {"batch": batch, "expires": round(expires * 1e9), "no_wait": True}
        reply, answer = self._inbox.expect()
        answer.add_done_callback(lambda _: self._changed.set())
        limit = self._settings.timeout + expires
        try:
            await self._connection.guard(
                "fetching",
                self._client.publish(self._next, msgspec.json.encode(request), reply=reply),
            )
            try:
                async with asyncio.timeout(limit):
                    while not (self._ready or answer.done() or self._left()):
                        self._changed.clear()
                        await self._changed.wait()
            except TimeoutError as error:
                raise await self._unanswered(limit) from error
            if self._left():
                return
            status = answer.result() if answer.done() else None
        finally:
            self._inbox.forget(reply)
        if status is not None:
            self._check_status(status)
        else:
            await self._connection.guard(
                "fetching", self._inbox.flush(within=self._settings.timeout)
            )

    async def _unanswered(self, limit: float) -> MeshkitError:
        """Why a pull went unanswered: the group is gone (a pull to it is ignored), or NATS is."""
        where = self._settings.where
        try:
            await self._connection.guard(
                f"reading group {self._group!r} on {self._topic!r}",
                self._connection.js.consumer_info(self._settings.stream, self._durable),
            )
        except EnvironmentFaultError as error:
            if isinstance(error.__cause__, self._connection.nats.NotFoundError):
                return self._gone(error.__cause__)
        return EnvironmentFaultError(
            f"JetStream at {where} did not answer a fetch for group {self._group!r} on"
            f" {self._topic!r} within {limit:.1f} s"
            + ("" if self._client.is_connected else " (not connected)")
        )

    def _gone(self, why: object) -> GroupLostError:
        return GroupLostError(
            f"JetStream at {self._settings.where} no longer has group {self._group!r} on"
            f" {self._topic!r}: {why}"
        )

    def _check_status(self, msg: Any) -> None:
        headers = msg.headers or {}
        status, description = headers.get("Status"), headers.get("Description", "")
        if status in ("404", "408"):  # no messages; request expired
            return
        if status == "409" and description.lower() == "consumer deleted":
            raise self._gone(description)
        raise EnvironmentFaultError(
            f"JetStream at {self._settings.where} refused a fetch for group {self._group!r} on"
            f" {self._topic!r}: {status} {description}"
        )

    async def _deliveries(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` ready messages as deliveries; those for other groups are acked.

        Those whose ack deadline passed while they waited (brought by a pull
        nobody waits for any more) are dropped: the server delivers them again.
        """
        found: list[Delivery] = []
        others: list[str] = []
        ack_wait = self._redelivery.ack_wait
        now = self._settings.clock.monotonic()
        while self._ready and len(found) < limit:
            msg, arrived = self._ready.popleft()
            if arrived + ack_wait <= now:
                continue
            fields = wire.parse_ack_subject(msg.reply)
            if fields is None:
                raise EnvironmentFaultError(
                    f"JetStream at {self._settings.where} delivered a message of {msg.subject}"
                    f" with an ack subject meshkit cannot read: {msg.reply!r}"
                )
            message = wire.message(
                self._topic,
                msg.data,
                msg.headers,
                published=fields.published_ns / 1e9,
                deliveries=fields.deliveries,
                fallback_id=f"nats-{fields.sequence}",
            )
            if not message.for_group(self._group):
                others.append(msg.reply)  # a dead letter replayed to another group
                continue
            found.append(Delivery(message=message, receipt=f"{msg.reply}|{arrived + ack_wait!r}"))
        if others:
            await self._answer(others, b"+ACK", "passing by another group's message")
        return found

    # -- answers ------------------------------------------------------------------------

    def _receipt(self, delivery: Delivery) -> tuple[str, float, wire.AckSubject]:
        """``(ack subject, deadline, its fields)`` from a receipt this consumer gave."""
        subject, _, deadline = delivery.receipt.rpartition("|")
        fields = wire.parse_ack_subject(subject)
        try:
            deadline_at = float(deadline)
        except ValueError:
            fields = None
        if fields is None or (fields.stream, fields.consumer) != (
            self._settings.stream,
            self._durable,
        ):
            raise InvalidArgumentError(
                "receipt", f"is not one this consumer gave: {delivery.receipt!r}"
            )
        return subject, deadline_at, fields

    async def _answer(self, subjects: Sequence[str], verb: bytes, what: str) -> None:
        """Send ``verb`` for each delivery and wait until the server has applied them all.

        With a reply subject JetStream confirms an answer once it has taken
        it; unconfirmed, an ack lost on the way would mean a second delivery.
        """
        if subjects:
            requests = [(s, verb, None) for s in subjects]
            await self._connection.ask(what, requests, inbox=self._inbox)

    # -- the server's max-deliveries advisory -------------------------------------------

    async def _expired(self, msg: Any) -> None:
        await self._letters.bury_expired(
            msg.data,
            topic=self._topic,
            group=self._group,
            durable=self._durable,
            ack_wait=self._redelivery.ack_wait,
        )
