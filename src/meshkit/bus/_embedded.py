"""The embedded broker as a ``Bus`` in the same process (the control plane's own, and tests')."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meshkit._clock import Clock
from meshkit.bus._broker import EmbeddedBroker
from meshkit.bus._model import (
    DUPLICATE_WINDOW,
    MAX_AGE,
    DeadLetter,
    Delivery,
    GroupInfo,
    Outgoing,
    Published,
)
from meshkit.bus._protocol import PublishOne
from meshkit.policy import Redelivery

__all__ = ["EmbeddedBus"]


class EmbeddedBus(PublishOne):
    """A ``Bus`` on an ``EmbeddedBroker`` in this process; services reach it with ``RemoteBus``."""

    def __init__(self, broker: EmbeddedBroker, *, owned: bool = False) -> None:
        self.broker = broker
        self._owned = owned

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Clock | None = None,
        window: float = DUPLICATE_WINDOW,
        max_age: float | None = MAX_AGE,
    ) -> EmbeddedBus:
        """A bus on its own broker at ``path``, closed with the bus (see ``EmbeddedBroker``)."""
        broker = await EmbeddedBroker.open(path, clock=clock, window=window, max_age=max_age)
        return cls(broker, owned=True)

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        return await self.broker.publish(messages)

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> _Consumer:
        await self.broker.join(topic, group, redelivery)
        return _Consumer(self.broker, topic, group)

    async def delete_group(self, topic: str, group: str) -> None:
        await self.broker.delete_group(topic, group)

    async def groups(self) -> list[GroupInfo]:
        return self.broker.groups()

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        return self.broker.dead_letters(limit=limit)

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        return self.broker.dead_letter(letter_id)

    async def replay(self, letter_id: str) -> None:
        await self.broker.replay(letter_id)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        return await self.broker.purge(ids)

    async def aclose(self) -> None:
        if self._owned:
            await self.broker.aclose()


class _Consumer:
    def __init__(self, broker: EmbeddedBroker, topic: str, group: str) -> None:
        self._broker = broker
        self._topic = topic
        self._group = group

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        return await self._broker.fetch(self._topic, self._group, limit=limit, wait=wait)

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        await self._broker.ack(self._topic, self._group, [d.receipt for d in deliveries])

    async def fail(self, delivery: Delivery, error: str) -> None:
        await self._broker.fail(self._topic, self._group, delivery.receipt, error)

    async def aclose(self) -> None:
        pass  # holds nothing: its leases run out on their own
