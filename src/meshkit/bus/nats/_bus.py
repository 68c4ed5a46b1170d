"""``JetStreamBus``: the bus's API over one connection, its groups and its dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from meshkit import _net
from meshkit._clock import Clock, SystemClock
from meshkit.bus._model import (
    DeadLetter,
    GroupInfo,
    Outgoing,
    Published,
    check_group,
    check_redelivery,
    check_topic,
)
from meshkit.bus._protocol import PublishOne
from meshkit.bus.nats import _wire as wire
from meshkit.bus.nats._connection import (
    Connection,
    Nats,
    Settings,
    check_prefix,
    check_url,
    connect,
)
from meshkit.bus.nats._consumer import JetStreamConsumer
from meshkit.bus.nats._letters import ROOM, DeadLetters
from meshkit.errors import EnvironmentFaultError, NotFoundError, UsageError
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["JetStreamBus"]


class JetStreamBus(PublishOne):
    """A ``Bus`` on the NATS server at ``url``, with JetStream enabled (``nats-server -js``).

    ``await JetStreamBus.open(url)``, or ``async with JetStreamBus(url) as bus``;
    both create the two streams or bring their settings up to date.
    ``prefix`` names them, so buses with different prefixes share nothing.
    ``max_age`` bounds how long messages are kept (``None``: until removed
    by other limits), and with them their ids (the duplicate window is
    120 s or ``max_age`` if shorter); dead letters are kept until replayed
    or purged. ``timeout`` bounds each call to the server, ``connect_timeout``
    the first connection; after that the client reconnects for as long as it
    takes, and calls made meanwhile fail with ``EnvironmentFaultError``.
    Messages name the URL with its password hidden.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        prefix: str = "meshkit",
        max_age: float | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        self.url = check_url(url)
        self.prefix = check_prefix(prefix)
        self._settings = Settings(
            url=url,
            where=_net.redacted(url),
            prefix=prefix,
            max_age=None if max_age is None else check.seconds("max_age", max_age),
            timeout=check.seconds("timeout", timeout),
            connect_timeout=check.seconds("connect_timeout", connect_timeout),
            clock=clock or SystemClock(),
        )
        self.stream = self._settings.stream
        self.dead_letter_stream = self._settings.dead_letter_stream
        self._nats = Nats()
        self._connecting = asyncio.Lock()
        self._connection: Connection | None = None

    @classmethod
    async def open(cls, url: str = "nats://127.0.0.1:4222", **options: Any) -> JetStreamBus:
        """A connected bus, with the options of the class; close it with ``aclose()``."""
        bus = cls(url, **options)
        await bus.connect()
        return bus

    async def __aenter__(self) -> JetStreamBus:
        await self.connect()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def connect(self) -> None:
        """Connect and set up the streams; does nothing when connected already."""
        async with self._connecting:
            if self._connection is None:
                self._connection = await connect(self._settings, self._nats)

    async def aclose(self) -> None:
        """Close the connection: calls still waiting for the server raise ``UsageError``."""
        async with self._connecting:
            connection, self._connection = self._connection, None
        if connection is not None:
            await connection.aclose()

    def _connected(self) -> Connection:
        if self._connection is None:
            raise UsageError("the JetStreamBus is not connected: open() it first")
        return self._connection

    # -- publishing -----------------------------------------------------------------------

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Publish in order: all sent, then every PubAck awaited together.

        When it raises ``EnvironmentFaultError``, some of the messages may
        have been stored: publish them again with their ids (``given_id``)
        to have each once. A message must leave room in the server's
        ``max_payload`` for its dead letter's own headers (``MessageRefusedError``).
        """
        requests = [wire.outgoing_request(self.prefix, message) for message in messages]
        duplicates = await self._connected().store("publishing", requests, room=ROOM)
        return [
            Published(id=message.id, duplicate=duplicate)
            for message, duplicate in zip(messages, duplicates, strict=True)
        ]

    # -- groups ---------------------------------------------------------------------------

    async def consumer(
        self, topic: str, group: str, *, redelivery: Redelivery
    ) -> JetStreamConsumer:
        check_topic(topic)
        check_group(group)
        check_redelivery(redelivery)
        connection = self._connected()
        durable = wire.durable(group, topic)
        # Deliberately no BackOff: see JetStreamConsumer.fail.
        config = self._nats.api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"meshkit group {group} on topic {topic}",
            filter_subject=wire.subject(self.prefix, topic),
            deliver_policy="all",
            ack_policy="explicit",
            ack_wait=redelivery.ack_wait,
            max_deliver=redelivery.max_deliveries,
        )
        await connection.guard(
            f"joining group {group!r} on {topic!r}",
            connection.js.add_consumer(self.stream, config),
        )
        consumer = JetStreamConsumer(
            connection, topic=topic, group=group, durable=durable, redelivery=redelivery
        )
        try:
            await consumer.start()
        except BaseException:
            await consumer.aclose()
            raise
        return consumer

    async def delete_group(self, topic: str, group: str) -> None:
        connection = self._connected()
        durable = wire.durable(check_group(group), check_topic(topic))
        try:
            await connection.guard(
                f"deleting group {group!r} on {topic!r}",
                connection.js.delete_consumer(self.stream, durable),
            )
        except EnvironmentFaultError as error:
            if isinstance(error.__cause__, connection.nats.NotFoundError):
                raise NotFoundError(f"no group {group!r} on topic {topic!r}") from error
            raise

    async def groups(self) -> list[GroupInfo]:
        """The stream's consumers that are meshkit groups: ``num_pending`` is the lag,
        ``num_ack_pending`` what members hold or will be given again."""
        connection = self._connected()
        found: list[GroupInfo] = []
        offset = 0
        while True:  # the server answers at most 256 consumers a request
            page = await connection.guard(
                "listing groups", connection.js.consumers_info(self.stream, offset or None)
            )
            found += (g for info in page if (g := self._group_info(info)) is not None)
            if not page:
                return sorted(found, key=lambda g: (g.topic, g.group))
            offset += len(page)

    def _group_info(self, info: Any) -> GroupInfo | None:
        """``info`` (a nats-py ``ConsumerInfo``) as a group, or ``None`` if meshkit did not
        make it: its subject and durable name must be the ones ``consumer`` gives."""
        config = info.config
        topic = wire.topic_of(self.prefix, config.filter_subject or "")
        group = (config.durable_name or "").rpartition("_")[0]
        if topic is None or not group or config.durable_name != wire.durable(group, topic):
            return None
        return GroupInfo(
            topic=topic,
            group=group,
            lag=info.num_pending or 0,
            pending=info.num_ack_pending or 0,
        )

    # -- dead letters ---------------------------------------------------------------------

    def _dead_letters(self) -> DeadLetters:
        return DeadLetters(self._connected())

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        return await self._dead_letters().oldest(limit)

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        return await self._dead_letters().letter(letter_id)

    async def replay(self, letter_id: str) -> None:
        """Publish the letter again for its group only, then remove it (see ``Bus.replay``).

        Two replays of one letter at the same moment may both publish it
        (delivery is at least once in any case).
        """
        await self._dead_letters().replay(letter_id)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        return await self._dead_letters().purge(ids)
