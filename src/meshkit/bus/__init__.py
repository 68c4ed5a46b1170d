"""The event bus: topics, consumer groups, at-least-once delivery, dead letters.

``Bus`` is the interface. ``RemoteBus`` reaches the embedded broker of a
control plane (what services use by default), ``EmbeddedBus`` runs that
broker in this process, and ``meshkit.bus.nats.JetStreamBus`` and
``meshkit.bus.redis.RedisBus`` put the same interface on NATS JetStream and
Redis Streams. ``subscribe`` runs a handler over a group's messages on any
of them.
"""

from meshkit.bus._embedded import EmbeddedBus
from meshkit.bus._inbox import INBOX_RETENTION
from meshkit.bus._model import (
    MAX_AGE,
    MAX_HEADERS,
    MAX_PAYLOAD,
    REPLAY_HEADER,
    DeadLetter,
    Delivery,
    GroupInfo,
    Message,
    Outgoing,
    Published,
    check_group,
    check_headers,
    check_message_id,
    check_topic,
    encode_payload,
    outgoing,
)
from meshkit.bus._open import open_bus
from meshkit.bus._outbox import (
    OutboxEntry,
    OutboxRelay,
    OutboxStore,
    ParkedEntry,
    RelayStatistics,
)
from meshkit.bus._outbox_sqlite import SqliteInbox, SqliteOutbox
from meshkit.bus._protocol import Bus, Consumer
from meshkit.bus._remote import RemoteBus
from meshkit.bus._subscription import Handler, Subscription, SubscriptionStatistics, subscribe

__all__ = [
    "INBOX_RETENTION",
    "MAX_AGE",
    "MAX_HEADERS",
    "MAX_PAYLOAD",
    "REPLAY_HEADER",
    "Bus",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "EmbeddedBus",
    "GroupInfo",
    "Handler",
    "Message",
    "OutboxEntry",
    "OutboxRelay",
    "OutboxStore",
    "Outgoing",
    "ParkedEntry",
    "Published",
    "RelayStatistics",
    "RemoteBus",
    "SqliteInbox",
    "SqliteOutbox",
    "Subscription",
    "SubscriptionStatistics",
    "check_group",
    "check_headers",
    "check_message_id",
    "check_topic",
    "encode_payload",
    "open_bus",
    "outgoing",
    "subscribe",
]
