"""The event bus: topics, consumer groups, at-least-once delivery, dead letters.

``Bus`` is the interface; ``EmbeddedBus`` runs the broker in this process
(the control plane does), and ``subscribe`` runs a handler over a group's
messages on any backend.
"""

from meshkit.bus._embedded import EmbeddedBus
from meshkit.bus._model import (
    MAX_HEADERS,
    MAX_PAYLOAD,
    REPLAY_HEADER,
    DeadLetter,
    Delivery,
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
from meshkit.bus._protocol import Bus, Consumer
from meshkit.bus._subscription import Handler, Subscription, SubscriptionStatistics, subscribe

__all__ = [
    "MAX_HEADERS",
    "MAX_PAYLOAD",
    "REPLAY_HEADER",
    "Bus",
    "Consumer",
    "DeadLetter",
    "Delivery",
    "EmbeddedBus",
    "Handler",
    "Message",
    "Outgoing",
    "Published",
    "Subscription",
    "SubscriptionStatistics",
    "check_group",
    "check_headers",
    "check_message_id",
    "check_topic",
    "encode_payload",
    "outgoing",
    "subscribe",
]
