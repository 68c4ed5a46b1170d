"""What a Service takes from the bus and gives to it: ``@subscribe`` handlers and outbox relays.

Both start once the application is live: its lifespan startup has run, so
the tables an outbox reads exist (a lifespan that records events leaves them
in the outbox, for the relay's first pass). Relays close after the drain, so
that the last requests' events go out; handlers leave their consumer groups
first when it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

from meshkit._clock import Clock
from meshkit.bus import (
    Bus,
    Handler,
    OutboxRelay,
    OutboxStore,
    Subscription,
    check_group,
    check_topic,
    subscribe,
)
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["Wanted", "join", "start_relays"]


class Wanted:
    """A ``@service.subscribe`` handler, joined to its group while the service runs.

    Raises ``ConfigError`` for a bad topic, group, concurrency or redelivery.
    """

    __slots__ = ("concurrency", "group", "handler", "redelivery", "topic")

    def __init__(
        self, topic: str, group: str, handler: Handler, concurrency: int, redelivery: Redelivery
    ) -> None:
        self.topic = check_topic(topic)
        self.group = check_group(group)
        self.handler = handler
        self.concurrency = check.whole("concurrency", concurrency, minimum=1)
        self.redelivery = check.instance("redelivery", redelivery, Redelivery)


async def join(bus: Bus | None, wanted: Sequence[Wanted], *, clock: Clock) -> list[Subscription]:
    """Every wanted handler, joined to its group; none if one fails to join.

    ``bus`` may be ``None`` only when nothing is wanted.
    """
    joined: list[Subscription] = []
    try:
        for one in wanted:
            assert bus is not None  # use_bus refused to go without one
            member = subscribe(
                bus,
                one.topic,
                one.group,
                one.handler,
                concurrency=one.concurrency,
                redelivery=one.redelivery,
                clock=clock,
            )
            await member.start()
            joined.append(member)
    except BaseException:
        await asyncio.gather(*(member.aclose(grace=0) for member in joined))
        raise
    return joined


async def start_relays(
    outboxes: Sequence[OutboxStore],
    bus: Bus,
    *,
    opened: contextlib.AsyncExitStack,
    flush: float,
) -> list[OutboxRelay]:
    """A started relay per outbox, each closed with ``opened`` after flushing for ``flush`` s."""
    relays = []
    for store in outboxes:
        relay = OutboxRelay(store, bus)
        relays.append(relay)
        opened.push_async_callback(relay.aclose, flush=flush)
        await relay.start()
    return relays
