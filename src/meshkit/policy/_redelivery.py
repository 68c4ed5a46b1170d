"""When a message whose handler failed is delivered again, and when it becomes a dead letter.

The same schedule holds on every bus backend: the embedded broker and the
Redis backend apply it themselves, and on NATS JetStream the consumer gets
``MaxDeliver`` and ``AckWait`` while each failure is a NAK delayed by the
wait (not the consumer's ``BackOff``, which would replace ``AckWait`` as the
timer of every delivery). The waits have no jitter, so that every backend
waits the same; jitter matters less here than for retries of calls anyway:
a redelivery is one message coming back, not many clients at once.
"""

from __future__ import annotations

import msgspec

from meshkit.errors import ConfigError, UsageError
from meshkit.policy import _check as check
from meshkit.policy._retry import Backoff

__all__ = ["Redelivery"]


def _default_backoff() -> Backoff:
    return Backoff(initial=1.0, maximum=60.0)


class Redelivery(msgspec.Struct, frozen=True, kw_only=True):
    """How often a message is delivered to a group before it is a dead letter.

    ``max_deliveries`` counts the first delivery. Five, with waits of 1, 2, 4
    and 8 s between them, takes a message that always fails to the dead-letter
    queue in about 15 s: long enough to ride out a restart of what the handler
    depends on, short enough that a poison message is seen where it can be
    inspected instead of being retried for minutes (Azure Service Bus gives
    up after 10 deliveries, RabbitMQ's quorum queues after 20).
    ``ack_wait`` is how long a delivery may go unanswered before it counts
    as failed (a consumer that died holding it): JetStream's default, 30 s.
    """

    max_deliveries: int = 5
    backoff: Backoff = msgspec.field(default_factory=_default_backoff)
    ack_wait: float = 30.0

    def __post_init__(self) -> None:
        check.whole("max_deliveries", self.max_deliveries, minimum=1)
        check.seconds("ack_wait", self.ack_wait)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError("backoff", f"must be a Backoff, got {self.backoff!r}")

    def after_failure(self, deliveries: int) -> float | None:
        """The wait after the ``deliveries``-th delivery failed; ``None``: it is a dead letter."""
        if deliveries < 1:
            raise UsageError(f"deliveries are counted from 1, got {deliveries}")
        if deliveries >= self.max_deliveries:
            return None
        return self.backoff.ceiling(deliveries)

    def schedule(self) -> list[float]:
        """Every wait in order, from the first failure on: ``max_deliveries - 1`` of them."""
        return [self.backoff.ceiling(n) for n in range(1, self.max_deliveries)]
