"""What travels to and from NATS, without I/O: headers, subjects, sizes, the server's answers."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

import msgspec

from meshkit.bus._model import REPLAY_HEADER, Message, Outgoing
from meshkit.errors import EnvironmentFaultError, MessageRefusedError

__all__ = [
    "DELIVERIES",
    "ERROR",
    "GROUP",
    "ID",
    "KEY",
    "MSG_ID",
    "PUBLISHED",
    "TOPIC",
    "AckSubject",
    "Advisory",
    "ApiAnswer",
    "PubAck",
    "Request",
    "decode_advisory",
    "decode_api_answer",
    "decode_pub_ack",
    "decode_text",
    "durable",
    "encode_text",
    "fit_text",
    "message",
    "outgoing_request",
    "parse_ack_subject",
    "read_pub_ack",
    "subject",
    "topic_of",
    "wire_headers",
    "wire_size",
]

ID, KEY = "meshkit-id", "meshkit-key"
GROUP, TOPIC, DELIVERIES = "meshkit-group", "meshkit-topic", "meshkit-deliveries"
ERROR, PUBLISHED = "meshkit-error", "meshkit-published"
MSG_ID = "Nats-Msg-Id"

# A message to send: subject, payload, headers.
Request = tuple[str, bytes, dict[str, str] | None]


# JetStream's error code for a message over the stream's max_msg_size.
_MESSAGE_TOO_LARGE = 10054


class PubAck(msgspec.Struct):
    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


class ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class ApiAnswer(msgspec.Struct):
    """A JetStream API answer: a purge's (``purged``) or a message delete's (``success``)."""

    success: bool = False
    purged: int = 0
    error: ApiError | None = None


class Advisory(msgspec.Struct):
    """The server's advisory that a message reached its last delivery unanswered."""

    stream_seq: int
    deliveries: int


decode_pub_ack = msgspec.json.Decoder(PubAck).decode
decode_api_answer = msgspec.json.Decoder(ApiAnswer).decode
decode_advisory = msgspec.json.Decoder(Advisory).decode


def read_pub_ack(answer: Any, subject: str, *, where: str, stream: str) -> bool:
    """Whether JetStream took a message to ``subject`` for a duplicate, from its ``answer``.

    Raises ``MessageRefusedError`` on ``payload`` if the stream refused it for its size, else
    ``EnvironmentFaultError`` (naming ``where`` and ``stream``) if it did not store it.
    """
    status = (answer.headers or {}).get("Status")
    if status is not None:  # 503: no stream takes the subject
        raise EnvironmentFaultError(
            f"JetStream at {where} did not store a message to {subject}"
            f" (status {status}): is stream {stream} there?"
        )
    try:
        ack = decode_pub_ack(answer.data)
    except msgspec.DecodeError as error:
        raise EnvironmentFaultError(
            f"JetStream at {where} answered a publish with {answer.data[:200]!r}"
        ) from error
    if ack.error is not None and ack.error.get("err_code") == _MESSAGE_TOO_LARGE:
        # The message's fault, not the server's: an outbox parks it rather than
        # retrying it for ever.
        raise MessageRefusedError("payload", f"is larger than stream {stream} takes: {ack.error}")
    if ack.error is not None:
        raise EnvironmentFaultError(
            f"JetStream at {where} refused a message to {subject}: {ack.error}"
        )
    return ack.duplicate


# -- header values ---------------------------------------------------------------------


def encode_text(value: str) -> str:
    """``value`` as a header value NATS carries unchanged (see the package docstring)."""
    if (
        value.isprintable()
        and value
        and not (value[0].isspace() or value[-1].isspace())
        and value[0] != '"'
    ):
        return value
    return json.dumps(value, ensure_ascii=False)  # escapes line breaks; quotes keep the spaces


def decode_text(value: str) -> str:
    if value.startswith('"'):
        with contextlib.suppress(ValueError):
            decoded = json.loads(value)
            if isinstance(decoded, str):
                return decoded
    return value


def fit_text(text: str, room: int) -> str:
    """``encode_text`` of the longest start of ``text`` (cut ones end in "…") within ``room`` bytes.

    ``""`` when not even that fits.
    """

    def size(value: str) -> int:
        return len(encode_text(value).encode())

    if size(text) <= room:
        return encode_text(text)
    fits, too_long = 0, len(text)  # a binary search: size grows with the length cut to
    while too_long - fits > 1:
        middle = (fits + too_long) // 2
        if size(text[:middle] + "…") <= room:
            fits = middle
        else:
            too_long = middle
    cut = text[:fits] + "…"
    return encode_text(cut) if size(cut) <= room else ""


def wire_headers(headers: Mapping[str, str], message_id: str, key: str | None) -> dict[str, str]:
    wire = {name: encode_text(value) for name, value in headers.items()}
    wire[ID] = encode_text(message_id)
    if key is not None:
        wire[KEY] = encode_text(key)
    return wire


# nats-server refuses a message whose headers pass 64 KiB, whatever its
# max_payload (JetStream's err_code 10097, "header size exceeds maximum").
MAX_HEADER_BYTES = 64 * 1024


def wire_size(payload: bytes, headers: Mapping[str, str] | None) -> int:
    """Bytes of a message as the server counts them: "NATS/1.0\\r\\n", lines, "\\r\\n"."""
    lines = sum(len(k) + len(v.encode()) + 4 for k, v in (headers or {}).items())
    return len(payload) + (12 + lines if headers else 0)


# -- messages ------------------------------------------------------------------------


def subject(prefix: str, topic: str) -> str:
    return f"{prefix}.msg.{topic}"


def topic_of(prefix: str, subject_: str) -> str | None:
    """The topic of a message subject ``subject()`` made, or ``None`` for another subject."""
    head = f"{prefix}.msg."
    if subject_.startswith(head) and len(subject_) > len(head):
        return subject_[len(head) :]
    return None


def outgoing_request(prefix: str, message: Outgoing) -> Request:
    """The publish of ``message``; a given id is scoped to its topic (see the package docstring)."""
    headers = wire_headers(message.headers, message.id, message.key)
    if message.given_id:
        headers[MSG_ID] = f"{message.topic}/{message.id}"
    return subject(prefix, message.topic), message.payload, headers


def message(
    topic: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    *,
    published: float,
    deliveries: int,
    fallback_id: str,
) -> Message:
    """The message as published, from its NATS headers (JetStream's own are dropped)."""
    found: dict[str, str] = {}
    message_id, key = fallback_id, None
    for name, value in (headers or {}).items():
        lower = name.lower()
        if lower == ID:
            message_id = decode_text(value)
        elif lower == KEY:
            key = decode_text(value)
        elif lower.startswith("nats-") or (lower.startswith("meshkit-") and lower != REPLAY_HEADER):
            continue
        else:
            found[name] = decode_text(value)
    return Message(
        id=message_id,
        topic=topic,
        payload=payload,
        headers=found,
        key=key,
        published=published,
        deliveries=deliveries,
    )


class AckSubject(NamedTuple):
    """What JetStream writes into the reply subject of a delivery."""

    stream: str
    consumer: str
    deliveries: int
    sequence: int  # in the stream
    published_ns: int  # Unix time


def parse_ack_subject(reply: str) -> AckSubject | None:
    """The fields of an ack subject, or ``None`` for one that is not.

    ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>``,
    or the newer form with a domain and an account hash after ``ACK``.
    """
    tokens = reply.split(".")
    if len(tokens) < 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    fields = tokens[2:9] if len(tokens) == 9 else tokens[4:11]
    if len(fields) < 7 or not all(t.isdigit() for t in fields[2:6]):
        return None
    return AckSubject(fields[0], fields[1], int(fields[2]), int(fields[3]), int(fields[5]))


def durable(group: str, topic: str) -> str:
    return f"{group}_{hashlib.blake2b(topic.encode(), digest_size=8).hexdigest()}"
