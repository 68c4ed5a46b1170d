"""The embedded broker's HTTP/JSON bodies, shared by the control plane and ``RemoteBus``.

Payloads travel as raw JSON inside the body (``msgspec.Raw``): no base64, no
second encoding, and decoding the body checks that each payload is JSON.
"""

from __future__ import annotations

import msgspec

from meshkit.bus._model import DeadLetter, Delivery, GroupInfo, Message, Published
from meshkit.policy import Redelivery

__all__ = [
    "AckBody",
    "DeadLetterList",
    "FailBody",
    "FetchBody",
    "GroupList",
    "JoinBody",
    "PublishBody",
    "PublishedList",
    "WireDeadLetter",
    "WireDeliveries",
    "WireDelivery",
    "WireOutgoing",
    "dead_letter_from_wire",
    "dead_letter_to_wire",
    "delivery_from_wire",
    "delivery_to_wire",
]


class WireOutgoing(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    id: str
    payload: msgspec.Raw
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    key: str | None = None
    given: bool = False


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    messages: list[WireOutgoing]


class PublishedList(msgspec.Struct):
    published: list[Published]


class JoinBody(msgspec.Struct, forbid_unknown_fields=True):
    redelivery: Redelivery


class FetchBody(msgspec.Struct, forbid_unknown_fields=True):
    limit: int
    wait: float


class AckBody(msgspec.Struct, forbid_unknown_fields=True):
    receipts: list[str]


class FailBody(msgspec.Struct, forbid_unknown_fields=True):
    receipt: str
    error: str


class WireDelivery(msgspec.Struct):
    receipt: str
    id: str
    topic: str
    payload: msgspec.Raw
    headers: dict[str, str]
    key: str | None
    published: float
    deliveries: int


class WireDeliveries(msgspec.Struct):
    deliveries: list[WireDelivery]


class WireDeadLetter(msgspec.Struct):
    id: str
    group: str
    topic: str
    message_id: str
    payload: msgspec.Raw
    headers: dict[str, str]
    key: str | None
    published: float
    deliveries: int
    error: str
    failed: float


class GroupList(msgspec.Struct):
    groups: list[GroupInfo]


class DeadLetterList(msgspec.Struct):
    dead_letters: list[WireDeadLetter]


def delivery_to_wire(delivery: Delivery) -> WireDelivery:
    m = delivery.message
    return WireDelivery(
        delivery.receipt,
        m.id,
        m.topic,
        msgspec.Raw(m.payload),
        m.headers,
        m.key,
        m.published,
        m.deliveries,
    )


def delivery_from_wire(wire: WireDelivery) -> Delivery:
    message = Message(
        id=wire.id,
        topic=wire.topic,
        payload=bytes(wire.payload),
        headers=wire.headers,
        key=wire.key,
        published=wire.published,
        deliveries=wire.deliveries,
    )
    return Delivery(message=message, receipt=wire.receipt)


def dead_letter_to_wire(letter: DeadLetter) -> WireDeadLetter:
    m = letter.message
    return WireDeadLetter(
        id=letter.id,
        group=letter.group,
        topic=m.topic,
        message_id=m.id,
        payload=msgspec.Raw(m.payload),
        headers=m.headers,
        key=m.key,
        published=m.published,
        deliveries=letter.deliveries,
        error=letter.error,
        failed=letter.failed,
    )


def dead_letter_from_wire(wire: WireDeadLetter) -> DeadLetter:
    message = Message(
        id=wire.message_id,
        topic=wire.topic,
        payload=bytes(wire.payload),
        headers=wire.headers,
        key=wire.key,
        published=wire.published,
        deliveries=wire.deliveries,
    )
    return DeadLetter(
        id=wire.id,
        group=wire.group,
        message=message,
        deliveries=wire.deliveries,
        error=wire.error,
        failed=wire.failed,
    )
