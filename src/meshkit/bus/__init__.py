"""The event bus: topics, consumer groups, at-least-once delivery, dead letters.

Work in progress (issue 5): the message model and the embedded broker's log
are here; the ``Bus`` interface, the backends and the conformance suite
follow.
"""

from meshkit.bus._model import (
    MAX_HEADERS,
    MAX_PAYLOAD,
    Message,
    check_group,
    check_headers,
    check_message_id,
    check_topic,
    encode_payload,
)

__all__ = [
    "MAX_HEADERS",
    "MAX_PAYLOAD",
    "Message",
    "check_group",
    "check_headers",
    "check_message_id",
    "check_topic",
    "encode_payload",
]
