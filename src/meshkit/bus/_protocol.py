"""The interface every bus backend implements, and the conformance suite checks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from meshkit.bus import _trace
from meshkit.bus._model import DeadLetter, Delivery, GroupInfo, Outgoing, Published, outgoing
from meshkit.policy import Redelivery

__all__ = ["Bus", "Consumer", "PublishOne"]


class Consumer(Protocol):
    """One member of a consumer group on one topic.

    Every group receives every message published to its topic; the members
    of a group share them, each message going to one member at a time. A
    delivery not acked or failed within the group's ``ack_wait`` counts as a
    failed delivery and goes to another member. After ``max_deliveries`` the
    message is a dead letter. ``meshkit.bus.subscribe`` drives a consumer
    with a handler; use this interface directly only to build such a driver.

    Errors: ``EnvironmentFaultError`` when the backend cannot be reached;
    ``GroupLostError`` (one of those) when the backend no longer has the
    group (deleted, or its data lost): join it again; ``InvalidArgumentError``
    for a receipt this consumer did not give.
    """

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        """Up to ``limit`` deliveries: at once if any are ready, else the first within ``wait`` s.

        An empty list after ``wait`` is a normal answer.
        """
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """These were handled: none of them is delivered to the group again."""
        ...

    async def fail(self, delivery: Delivery, error: str) -> None:
        """Its handler failed with ``error``: due again after the backoff, or a dead letter."""
        ...

    async def aclose(self) -> None:
        """Stop; deliveries not acked go to other members after their ack deadline."""
        ...


class Bus(Protocol):
    """Topics, consumer groups, at-least-once delivery and a dead-letter queue.

    Errors: ``MessageRefusedError`` for a message the backend will never
    take (a bad topic, header, id or key, a payload that is not JSON or too
    large: nothing of the batch is published); ``ConfigError`` for a bad
    topic or group to join, or a bad option; ``InvalidArgumentError`` for a
    malformed dead letter id; ``EnvironmentFaultError`` when the backend
    cannot be reached; ``NotFoundError`` for a dead letter that is not there.
    """

    async def publish(
        self,
        topic: str,
        payload: object,
        *,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        message_id: str | None = None,
    ) -> Published:
        """Publish one message (see ``outgoing()`` for the checks); returns once it is durable."""
        ...

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Publish in order; returns once every one is durable, one ``Published`` each.

        A message whose given id was published to its topic within the
        backend's duplicate window is not published again
        (``Published.duplicate``).
        """
        ...

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> Consumer:
        """Join ``group`` on ``topic``, creating the group at the earliest retained message.

        ``redelivery`` is the group's policy; the last member to join sets it.
        """
        ...

    async def delete_group(self, topic: str, group: str) -> None:
        """Forget a consumer group: where it stands, what it holds, its waiting retries.

        Its dead letters stay. A member still joined gets ``GroupLostError``
        from its next fetch; joining again starts the group afresh, at the
        earliest message kept. ``NotFoundError`` if there is no such group.
        """
        ...

    async def groups(self) -> list[GroupInfo]:
        """Every consumer group of every topic, sorted by topic then group, with its lag."""
        ...

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters, oldest first."""
        ...

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        """One dead letter by id."""
        ...

    async def replay(self, letter_id: str) -> None:
        """Publish the dead letter again for its group only, and remove it from the queue.

        It is delivered as a new message (``deliveries`` counts from 1) with
        the same id, past the duplicate window.
        """
        ...

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        """Remove these dead letters (all of them with ``None``): how many were removed."""
        ...

    async def aclose(self) -> None:
        """Release connections; nothing published is lost."""
        ...


class _Batches(Protocol):
    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]: ...


class PublishOne:
    """``publish`` for a backend that has ``publish_batch``: the one way every backend does it."""

    async def publish(
        self: _Batches,
        topic: str,
        payload: object,
        *,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        message_id: str | None = None,
    ) -> Published:
        message = outgoing(topic, payload, headers=headers, key=key, message_id=message_id)
        with _trace.publishing([message]):
            return (await self.publish_batch([message]))[0]
