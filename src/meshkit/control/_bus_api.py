"""The control plane's event bus API over HTTP/JSON, served by the embedded broker.

    POST   /v1/bus/publish                        {messages} -> {published: [{id, duplicate}]}
    GET    /v1/bus/groups                         -> {groups: [{topic, group, lag, pending}]}
    POST   /v1/bus/groups/{topic}/{group}         join: {redelivery} -> 204
    DELETE /v1/bus/groups/{topic}/{group}         -> 204
    POST   /v1/bus/groups/{topic}/{group}/fetch   {limit, wait} -> {deliveries: [...]}
    POST   /v1/bus/groups/{topic}/{group}/ack     {receipts: [...]} -> 204
    POST   /v1/bus/groups/{topic}/{group}/fail    {receipt, error} -> 204
    GET    /v1/bus/dead-letters?limit=N           -> {dead_letters: [...]}
    GET    /v1/bus/dead-letters/{id}              -> one dead letter
    POST   /v1/bus/dead-letters/{id}/replay       -> 204
    DELETE /v1/bus/dead-letters                   purge all, or {ids: [...]} -> {purged: N}

Batches and long polls keep round trips few: a publish carries many
messages, an ack many receipts, and a fetch waits up to ``wait`` seconds
(at most 300) for the first message instead of being asked again and
again. A fetch that is given up on by its client still leases what it
found: those deliveries come back after the group's ack deadline. The
token check and the error answers (problem details) are the registry API's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

from meshkit.bus._broker import EmbeddedBroker
from meshkit.bus._model import checked_outgoing
from meshkit.bus._wire import (
    AckBody,
    DeadLetterList,
    FailBody,
    FetchBody,
    GroupList,
    JoinBody,
    PublishBody,
    PublishedList,
    WireDeliveries,
    dead_letter_to_wire,
    delivery_to_wire,
)
from meshkit.control._answers import decode_body, invalid
from meshkit.control._answers import error as error_answer
from meshkit.errors import (
    EnvironmentFaultError,
    GroupLostError,
    InvalidArgumentError,
    NotFoundError,
    UsageError,
)
from meshkit.http import Request, Response

__all__ = ["MAX_FETCH_WAIT", "BusAPI"]

MAX_FETCH_WAIT = 300.0
_NO_CONTENT = Response(204, [], b"")
_encode = msgspec.json.encode


class _Purge(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[str]


def _json(status: int, value: Any) -> Response:
    return Response(status, [(b"content-type", b"application/json")], _encode(value))


class BusAPI:
    """Turns ``/v1/bus/...`` requests into broker calls; ``handle`` is for the plane's router."""

    def __init__(self, broker: EmbeddedBroker) -> None:
        self._broker = broker

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """Route one authorized request; the answer is awaitable for everything that writes."""
        parts = [unquote(part) for part in request.path.split("/")[3:]]  # after /v1/bus/
        method = request.method
        try:
            if parts == ["publish"]:
                return self._post(method, request, self._publish)
            if parts == ["groups"]:
                if method != "GET":
                    return error_answer(405, f"{method} is not allowed here; use GET")
                return _json(200, GroupList(self._broker.groups()))
            if parts[:1] == ["groups"] and len(parts) in (3, 4):
                return self._group(method, request, parts)
            if parts[:1] == ["dead-letters"]:
                return self._dead_letters(method, request, parts[1:])
        except (UsageError, EnvironmentFaultError) as error:
            return _refusal(error)
        return error_answer(404, f"no such endpoint: {request.path}")

    @staticmethod
    def _post(
        method: str, request: Request, call: Callable[[bytes], Awaitable[Response]]
    ) -> Response | Awaitable[Response]:
        if method != "POST":
            return error_answer(405, f"{method} is not allowed here; use POST")
        return _answer(call(request.body))

    # -- publishing and groups ---------------------------------------------------------

    async def _publish(self, body: bytes) -> Response:
        wire = decode_body(PublishBody, body)
        messages = [
            checked_outgoing(
                topic=m.topic,
                id=m.id,
                payload=bytes(m.payload),
                headers=m.headers,
                key=m.key,
                given_id=m.given,
            )
            for m in wire.messages
        ]
        return _json(200, PublishedList(await self._broker.publish(messages)))

    def _group(
        self, method: str, request: Request, parts: list[str]
    ) -> Response | Awaitable[Response]:
        topic, group = parts[1], parts[2]
        if len(parts) == 3 and method == "DELETE":
            return _answer(self._delete(topic, group))
        action = parts[3] if len(parts) == 4 else "join"
        calls: dict[str, Callable[[bytes], Awaitable[Response]]] = {
            "join": lambda body: self._join(topic, group, body),
            "fetch": lambda body: self._fetch(topic, group, body),
            "ack": lambda body: self._ack(topic, group, body),
            "fail": lambda body: self._fail(topic, group, body),
        }
        if action not in calls:
            return error_answer(404, f"no such endpoint: {request.path}")
        return self._post(method, request, calls[action])

    async def _delete(self, topic: str, group: str) -> Response:
        await self._broker.delete_group(topic, group)
        return _NO_CONTENT

    async def _join(self, topic: str, group: str, body: bytes) -> Response:
        await self._broker.join(topic, group, decode_body(JoinBody, body).redelivery)
        return _NO_CONTENT

    async def _fetch(self, topic: str, group: str, body: bytes) -> Response:
        asked = decode_body(FetchBody, body)
        if not 0 <= asked.wait <= MAX_FETCH_WAIT:
            raise InvalidArgumentError(
                "wait", f"must be 0 to {MAX_FETCH_WAIT:g} seconds, got {asked.wait}"
            )
        found = await self._broker.fetch(topic, group, limit=asked.limit, wait=asked.wait)
        return _json(200, WireDeliveries([delivery_to_wire(d) for d in found]))

    async def _ack(self, topic: str, group: str, body: bytes) -> Response:
        await self._broker.ack(topic, group, decode_body(AckBody, body).receipts)
        return _NO_CONTENT

    async def _fail(self, topic: str, group: str, body: bytes) -> Response:
        failure = decode_body(FailBody, body)
        await self._broker.fail(topic, group, failure.receipt, failure.error)
        return _NO_CONTENT

    # -- dead letters --------------------------------------------------------------------

    def _dead_letters(
        self, method: str, request: Request, rest: list[str]
    ) -> Response | Awaitable[Response]:
        if not rest and method == "GET":
            letters = self._broker.dead_letters(limit=_limit(request.query))
            return _json(200, DeadLetterList([dead_letter_to_wire(x) for x in letters]))
        if not rest and method == "DELETE":
            return _answer(self._purge(request.body))
        if len(rest) == 1 and method == "GET":
            return _json(200, dead_letter_to_wire(self._broker.dead_letter(rest[0])))
        if len(rest) == 2 and rest[1] == "replay":
            return self._post(method, request, lambda _: self._replay(rest[0]))
        return error_answer(
            405 if len(rest) <= 1 else 404, f"{method} {request.path} is not served"
        )

    async def _replay(self, letter_id: str) -> Response:
        await self._broker.replay(letter_id)
        return _NO_CONTENT

    async def _purge(self, body: bytes) -> Response:
        ids = decode_body(_Purge, body).ids if body else None
        return _json(200, {"purged": await self._broker.purge(ids)})


def _limit(query: str) -> int:
    params = parse_qs(query)
    unknown = set(params) - {"limit"}
    if unknown:
        raise InvalidArgumentError(sorted(unknown)[0], "is not a parameter here (limit)")
    value = params.get("limit", ["100"])[-1]
    if not value.isdigit():
        raise InvalidArgumentError("limit", f"must be a whole number, got {value!r}")
    return int(value)


async def _answer(call: Awaitable[Response]) -> Response:
    """The call's response, with the bus's errors as HTTP answers."""
    try:
        return await call
    except (UsageError, EnvironmentFaultError) as error:
        return _refusal(error)


def _refusal(error: UsageError | EnvironmentFaultError) -> Response:
    """404 for what is not there (a group a member lost too), 400 naming the field for other
    bad input, 503 for the disk."""
    if isinstance(error, NotFoundError | GroupLostError):
        return error_answer(404, str(error))
    if isinstance(error, InvalidArgumentError):
        return invalid(error)
    if isinstance(error, UsageError):
        return error_answer(400, str(error))
    return error_answer(503, str(error))
