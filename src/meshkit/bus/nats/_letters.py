"""Dead letters: a stream with one message per letter, each letter's id its sequence there."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from meshkit.bus._model import (
    REPLAY_HEADER,
    DeadLetter,
    Message,
    check_letter_ids,
    check_letter_number,
    check_limit,
    clip_error,
    expired_error,
)
from meshkit.bus.nats import _wire as wire
from meshkit.bus.nats._connection import Connection
from meshkit.errors import EnvironmentFaultError, MeshkitError, NotFoundError

__all__ = ["ROOM", "DeadLetters"]

_log = logging.getLogger("meshkit.bus")

# What a message must leave free of the server's max_payload, so that it fits
# again as a dead letter, replayed and buried once more: the bus's own headers
# take at most 600 bytes there (a group of 64, a topic of 200, the consumer's
# name of 81, counts of 20 digits), the replay header 90; the rest is for the
# error, which is cut to fit. Only messages whose headers JSON-encoding grew
# (see the package docstring) ever come this close.
ROOM = 1024
# "no message found": a letter removed already.
_NO_MESSAGE = 10057


class DeadLetters:
    """The dead-letter queue of one bus, and the letters its groups bury."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._settings = connection.settings

    async def bury(
        self,
        message: Message,
        *,
        group: str,
        durable: str,
        deliveries: int,
        error: str,
        sequence: int,
    ) -> None:
        """Store ``message`` (stream sequence ``sequence``) as a dead letter of ``group``.

        Its ``Nats-Msg-Id`` names the group's consumer ``durable`` and the
        sequence, so the same message buried twice within the window (a
        failure reported and, its ack lost, the server's max-deliveries
        advisory) is one letter. The error is clipped to ``MAX_ERROR``
        characters, and further to what the server's ``max_payload`` and its
        limit on headers leave.
        """
        headers = wire.wire_headers(message.headers, message.id, message.key)
        headers |= {
            wire.GROUP: group,
            wire.TOPIC: message.topic,
            wire.DELIVERIES: str(deliveries),
            wire.PUBLISHED: repr(message.published),
            wire.MSG_ID: f"{durable}/{sequence}",
        }
        line = len(wire.ERROR) + 4  # the error's own header line: ": " and "\r\n"
        room = (
            min(
                self._connection.client.max_payload - wire.wire_size(message.payload, headers),
                wire.MAX_HEADER_BYTES - wire.wire_size(b"", headers),
            )
            - line
        )
        headers[wire.ERROR] = wire.fit_text(clip_error(error), room)
        subject = f"{self._settings.prefix}.dlq.{group}.{message.topic}"
        await self._connection.store("storing a dead letter", [(subject, message.payload, headers)])

    async def bury_expired(
        self, advisory: bytes, *, topic: str, group: str, durable: str, ack_wait: float
    ) -> None:
        """Bury the message of the server's max-deliveries ``advisory``; failures are logged."""
        try:
            event = wire.decode_advisory(advisory)
        except msgspec.DecodeError:
            _log.warning("%s/%s: unreadable advisory %r", topic, group, advisory[:200])
            return
        try:
            message = await self.stored(event.stream_seq, deliveries=event.deliveries)
            if message is None or not message.for_group(group):
                return  # gone from the stream (max_age), or not this group's
            await self.bury(
                message,
                group=group,
                durable=durable,
                deliveries=event.deliveries,
                error=expired_error(ack_wait),
                sequence=event.stream_seq,
            )
        except MeshkitError as error:
            _log.warning(
                "%s/%s: message %d reached its last delivery unanswered, and could not be"
                " stored as a dead letter: %s",
                topic,
                group,
                event.stream_seq,
                error,
            )

    async def stored(self, sequence: int, *, deliveries: int) -> Message | None:
        """The message at ``sequence`` in the message stream, if it is still there."""
        raw = await self._get(self._settings.stream, sequence)
        if raw is None:
            return None
        return wire.message(
            raw.subject.removeprefix(f"{self._settings.prefix}.msg."),
            raw.data or b"",
            raw.headers,
            published=raw.time.timestamp() if raw.time is not None else 0.0,
            deliveries=deliveries,
            fallback_id=f"nats-{sequence}",
        )

    # -- the queue --------------------------------------------------------------------

    async def oldest(self, limit: int) -> list[DeadLetter]:
        check_limit(limit)
        letters: list[DeadLetter] = []
        sequence = 1
        # One direct get per letter, each the first at or after a sequence:
        # removed letters leave gaps, which this steps over.
        while len(letters) < limit:
            raw = await self._get(
                self._settings.dead_letter_stream,
                sequence,
                first_of=f"{self._settings.prefix}.dlq.>",
            )
            if raw is None:
                break
            letters.append(self._letter(raw))
            sequence = raw.seq + 1
        return letters

    async def letter(self, letter_id: str) -> DeadLetter:
        sequence = check_letter_number(letter_id)
        raw = await self._get(self._settings.dead_letter_stream, sequence) if sequence else None
        if raw is None:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")
        return self._letter(raw)

    async def replay(self, letter_id: str) -> None:
        """Publish the letter again for its group, then remove it.

        Without ``Nats-Msg-Id``: the original id may still be in the
        duplicate window. Two replays of one letter at the same moment may
        both publish it (delivery is at least once in any case).
        """
        letter = await self.letter(letter_id)
        message = letter.message
        headers = wire.wire_headers(
            {**message.headers, REPLAY_HEADER: letter.group}, message.id, message.key
        )
        request = (wire.subject(self._settings.prefix, message.topic), message.payload, headers)
        await self._connection.store("replaying a dead letter", [request])
        await self.delete([int(letter_id)])

    async def purge(self, ids: Sequence[str] | None) -> int:
        """Remove these letters, or all of them: how many were there."""
        if ids is None:
            subject = f"$JS.API.STREAM.PURGE.{self._settings.dead_letter_stream}"
            [raw] = await self._connection.ask("purging dead letters", [(subject, b"{}", None)])
            return self._answer(raw, "a purge").purged
        return await self.delete([check_letter_number(i) for i in check_letter_ids(ids)])

    async def delete(self, sequences: Sequence[int]) -> int:
        """Remove the letters at ``sequences``, in one batch: how many were there."""
        if not sequences:
            return 0
        subject = f"$JS.API.STREAM.MSG.DELETE.{self._settings.dead_letter_stream}"
        requests = [(subject, msgspec.json.encode({"seq": n}), None) for n in sequences]
        answers = await self._connection.ask("removing dead letters", requests)
        removed = 0
        for raw in answers:
            answer = self._answer(raw, "removing a dead letter", allow=_NO_MESSAGE)
            removed += answer.success
        return removed

    def _answer(self, raw: Any, what: str, *, allow: int | None = None) -> wire.ApiAnswer:
        """The JetStream API's answer to ``what``; an error other than ``allow`` raises."""
        where = self._settings.where
        try:
            answer = wire.decode_api_answer(raw.data)
        except msgspec.DecodeError as error:
            raise EnvironmentFaultError(
                f"JetStream at {where} answered {what} with {raw.data[:200]!r}"
            ) from error
        if answer.error is not None and answer.error.err_code != allow:
            raise EnvironmentFaultError(
                f"JetStream at {where}: {what} failed: {answer.error.description}"
                f" (code {answer.error.code}, {answer.error.err_code})"
            )
        return answer

    def _letter(self, raw: Any) -> DeadLetter:
        headers: Mapping[str, str] = raw.headers or {}
        topic = wire.decode_text(headers.get(wire.TOPIC, ""))
        try:
            deliveries = int(headers.get(wire.DELIVERIES, "0"))
            published = float(headers.get(wire.PUBLISHED, "0"))
        except ValueError:
            deliveries, published = 0, 0.0
        message = wire.message(
            topic,
            raw.data or b"",
            headers,
            published=published,
            deliveries=deliveries,
            fallback_id=f"nats-dlq-{raw.seq}",
        )
        return DeadLetter(
            id=str(raw.seq),
            group=wire.decode_text(headers.get(wire.GROUP, "")),
            message=message,
            deliveries=deliveries,
            error=wire.decode_text(headers.get(wire.ERROR, "")),
            failed=raw.time.timestamp() if raw.time is not None else 0.0,
        )

    async def _get(self, stream: str, sequence: int, *, first_of: str | None = None) -> Any:
        """The stored message at ``sequence`` (or the first of subjects ``first_of`` from there).

        ``None`` when there is none.
        """
        connection = self._connection
        call = connection.js.get_msg(
            stream, seq=sequence, subject=first_of, next=first_of is not None, direct=True
        )
        try:
            return await connection.guard(f"reading {stream} at {sequence}", call)
        except EnvironmentFaultError as error:
            if isinstance(error.__cause__, connection.nats.NotFoundError):
                return None
            raise
