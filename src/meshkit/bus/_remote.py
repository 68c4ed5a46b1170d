"""The embedded broker of a control plane, reached over its HTTP API.

This is the bus services use by default: ``meshkit up`` starts the control
plane and hands its children the address and token. Publishes go in batches
of up to 8 MiB a request; fetches are long polls; the subscription driver
sends acks in batches. Failures are translated as the registry client's
are (``meshkit._plane_client``), with two of the bus's own: the plane refusing a
publish (400) refuses its messages (``MessageRefusedError``; the client
builds the request itself, so only a message can be at fault), and a group
it does not know at a fetch, ack or fail (404) is ``GroupLostError``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import msgspec

from meshkit._plane_client import PlaneClient
from meshkit.bus._model import (
    DeadLetter,
    Delivery,
    GroupInfo,
    Outgoing,
    Published,
    check_group,
    check_letter_ids,
    check_letter_number,
    check_limit,
    check_redelivery,
    check_topic,
)
from meshkit.bus._protocol import PublishOne
from meshkit.bus._wire import (
    AckBody,
    DeadLetterList,
    FailBody,
    FetchBody,
    GroupList,
    JoinBody,
    PublishBody,
    PublishedList,
    WireDeadLetter,
    WireDeliveries,
    WireOutgoing,
    dead_letter_from_wire,
    delivery_from_wire,
)
from meshkit.errors import GroupLostError, MessageRefusedError
from meshkit.http import HTTPClient, Timeouts
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["RemoteBus"]

_BATCH_BYTES = 8 * 1024 * 1024  # under the control plane's 10 MiB body limit
_encode = msgspec.json.encode


def _batches(messages: Sequence[Outgoing]) -> Iterator[list[WireOutgoing]]:
    batch: list[WireOutgoing] = []
    size = 0
    for m in messages:
        wire = WireOutgoing(m.topic, m.id, msgspec.Raw(m.payload), m.headers, m.key, m.given_id)
        weight = len(m.payload) + 256 + sum(len(k) + len(v) for k, v in m.headers.items())
        if batch and size + weight > _BATCH_BYTES:
            yield batch
            batch, size = [], 0
        batch.append(wire)
        size += weight
    if batch:
        yield batch


class _Purged(msgspec.Struct):
    purged: int


class RemoteBus(PublishOne):
    """A ``Bus`` on the embedded broker of the control plane at ``url``."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        http: HTTPClient | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.url = url
        self._plane = PlaneClient(url, token=token, http=http, timeouts=timeouts)

    async def __aenter__(self) -> RemoteBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[Published]:
        published: list[Published] = []
        for batch in _batches(messages):
            answer = await self._plane.call(
                "POST",
                "/v1/bus/publish",
                body=_encode(PublishBody(batch)),
                invalid=MessageRefusedError,
                kind=PublishedList,
            )
            published += answer.published
        return published

    async def consumer(self, topic: str, group: str, *, redelivery: Redelivery) -> RemoteConsumer:
        target = f"/v1/bus/groups/{check_topic(topic)}/{check_group(group)}"
        check_redelivery(redelivery)
        await self._plane.call("POST", target, body=_encode(JoinBody(redelivery)), expect=204)
        return RemoteConsumer(self, target)

    async def delete_group(self, topic: str, group: str) -> None:
        target = f"/v1/bus/groups/{check_topic(topic)}/{check_group(group)}"
        await self._plane.call("DELETE", target, expect=204)

    async def groups(self) -> list[GroupInfo]:
        answer: GroupList = await self._plane.call("GET", "/v1/bus/groups", kind=GroupList)
        return answer.groups

    async def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        target = f"/v1/bus/dead-letters?limit={check_limit(limit)}"
        answer = await self._plane.call("GET", target, kind=DeadLetterList)
        return [dead_letter_from_wire(w) for w in answer.dead_letters]

    async def dead_letter(self, letter_id: str) -> DeadLetter:
        target = f"/v1/bus/dead-letters/{check_letter_number(letter_id)}"
        return dead_letter_from_wire(await self._plane.call("GET", target, kind=WireDeadLetter))

    async def replay(self, letter_id: str) -> None:
        target = f"/v1/bus/dead-letters/{check_letter_number(letter_id)}/replay"
        await self._plane.call("POST", target, expect=204)

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        body = (
            b""
            if ids is None
            else _encode({"ids": [str(check_letter_number(i)) for i in check_letter_ids(ids)]})
        )
        answer = await self._plane.call("DELETE", "/v1/bus/dead-letters", body=body, kind=_Purged)
        return int(answer.purged)

    async def aclose(self) -> None:
        await self._plane.aclose()

    # For RemoteConsumer: one client for the bus and its consumers.
    @property
    def plane(self) -> PlaneClient:
        return self._plane


class RemoteConsumer:
    """One member of a group, fetching with long polls from the control plane."""

    def __init__(self, bus: RemoteBus, target: str) -> None:
        self._bus = bus
        self._target = target

    async def fetch(self, limit: int, *, wait: float) -> list[Delivery]:
        body = _encode(FetchBody(check_limit(limit), check.seconds("wait", wait, allow_zero=True)))
        target = f"{self._target}/fetch"
        wire = await self._bus.plane.call(
            "POST", target, body=body, wait=wait, not_found=GroupLostError, kind=WireDeliveries
        )
        return [delivery_from_wire(w) for w in wire.deliveries]

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            body = _encode(AckBody([d.receipt for d in deliveries]))
            await self._bus.plane.call(
                "POST", f"{self._target}/ack", body=body, expect=204, not_found=GroupLostError
            )

    async def fail(self, delivery: Delivery, error: str) -> None:
        body = _encode(FailBody(delivery.receipt, error))
        await self._bus.plane.call(
            "POST", f"{self._target}/fail", body=body, expect=204, not_found=GroupLostError
        )

    async def aclose(self) -> None:
        pass  # holds nothing: its leases run out on the broker
