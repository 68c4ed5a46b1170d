"""What travels on the bus: messages, and the names and payloads they carry.

Names are checked the same way for every backend, to the strictest of them:
a topic becomes a NATS subject (dot-separated tokens, no wildcards) and a
Redis key, a group becomes a JetStream durable consumer name (no dots).
Payloads are JSON documents, checked when published, so a consumer never
receives one it cannot parse.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence

import msgspec

from meshkit.bus import _trace
from meshkit.errors import ConfigError, InvalidArgumentError, MessageRefusedError
from meshkit.policy import Backoff, Redelivery

__all__ = [
    "DUPLICATE_WINDOW",
    "MAX_ERROR",
    "MAX_HEADERS",
    "MAX_PAYLOAD",
    "REPLAY_HEADER",
    "UNREACHABLE",
    "DeadLetter",
    "Delivery",
    "GroupInfo",
    "Message",
    "Outgoing",
    "Published",
    "check_group",
    "check_headers",
    "check_letter_ids",
    "check_letter_number",
    "check_limit",
    "check_message_id",
    "check_redelivery",
    "check_topic",
    "checked_outgoing",
    "clip_error",
    "decode_headers",
    "encode_payload",
    "expired_error",
    "outgoing",
]

# NATS's default max_payload is 1 MiB. The payload and its headers must fit in
# it, and so must a dead letter, which adds the bus's own headers and the error
# (at most MAX_ERROR): 16 KiB of the 64 are kept for those.
MAX_PAYLOAD = 1024 * 1024 - 64 * 1024
MAX_HEADERS = 48 * 1024
MAX_ERROR = 4096

_TOPIC = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")
_GROUP = re.compile(r"[a-z0-9][a-z0-9_-]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MESSAGE_ID = re.compile(r"[\x21-\x7e]+")  # visible ASCII: it becomes a NATS header value

# Headers the bus sets itself. A replayed dead letter carries the group it is
# for: every backend hands it to that group only, and the others pass it by.
_RESERVED = "meshkit-"
REPLAY_HEADER = "meshkit-replay-group"

# How long a given message id is remembered: JetStream's default duplicate window.
DUPLICATE_WINDOW = 120.0
# How long the embedded broker and Redis keep a message: seven days, Kafka's
# default retention (log.retention.hours=168), as long as an inbox remembers
# ids. Kept whether or not every group has had it, as Kafka and JetStream's
# max_age keep them: a group gone for good (a `bus tail`, a retired service)
# must not keep the log growing.
MAX_AGE = 7 * 24 * 3600.0


# Waits while a broker (or a service's database) cannot be reached: 0.1 s
# growing to 5 s, so an outage is retried promptly, then without flooding
# the log. No jitter: one subscription or relay retries, not a herd.
UNREACHABLE = Backoff(initial=0.1, maximum=5.0)


def expired_error(ack_wait: float) -> str:
    """The error a delivery whose ack deadline passed is recorded with, on every backend."""
    return f"not acked within ack_wait ({ack_wait:g} s): its consumer stopped or was too slow"


def clip_error(error: str) -> str:
    """A handler's error as a dead letter keeps it: at most ``MAX_ERROR`` characters."""
    return error if len(error) <= MAX_ERROR else error[: MAX_ERROR - 1] + "…"


def check_redelivery(value: object) -> Redelivery:
    if not isinstance(value, Redelivery):
        raise ConfigError("redelivery", f"must be a meshkit.policy.Redelivery, got {value!r}")
    return value


def check_letter_ids(ids: object) -> list[str]:
    """The ids given to ``purge``: a list of strings (one string alone is refused)."""
    if (
        isinstance(ids, str)
        or not isinstance(ids, Sequence)
        or not all(isinstance(i, str) for i in ids)
    ):
        raise InvalidArgumentError("ids", f"must be a list of dead letter ids, got {ids!r}")
    return list(ids)


def check_letter_number(value: object) -> int:
    """A dead letter id that is a sequence number (the embedded broker's and JetStream's)."""
    if not isinstance(value, str) or not value.isdigit() or len(value) > 18:
        raise InvalidArgumentError("id", f"a dead letter id is a whole number, got {value!r}")
    return int(value)


# Headers as the backends store them: one JSON object of strings.
decode_headers = msgspec.json.Decoder(dict[str, str]).decode


def check_topic(value: object) -> str:
    """A topic: dot-separated words of lower-case letters, digits, ``-`` and ``_``, ≤ 200.

    ``ConfigError`` otherwise: the topics a service subscribes to are part of
    its configuration (``meshkit.toml``, ``@service.subscribe``, a sidecar's
    ``--subscribe``). A message's topic is checked by ``outgoing()``, which
    refuses the message instead.
    """
    if not isinstance(value, str) or len(value) > 200 or _TOPIC.fullmatch(value) is None:
        raise ConfigError(
            "topic",
            "must be dot-separated words of lower-case letters, digits, '-' and '_' "
            f"(like 'order.created'), at most 200 characters, got {value!r}",
        )
    return value


def check_group(value: object) -> str:
    """A consumer group: lower-case letters, digits, ``-`` and ``_``, at most 64; else
    ``ConfigError`` (a group is configured, as a subscription's topic is)."""
    if not isinstance(value, str) or len(value) > 64 or _GROUP.fullmatch(value) is None:
        raise ConfigError(
            "group",
            f"must be lower-case letters, digits, '-' and '_', at most 64, got {value!r}",
        )
    return value


def check_message_id(value: object) -> str:
    if not isinstance(value, str) or len(value) > 128 or _MESSAGE_ID.fullmatch(value) is None:
        raise InvalidArgumentError(
            "message_id", f"must be 1 to 128 visible ASCII characters, got {value!r}"
        )
    return value


def check_headers(value: object) -> dict[str, str]:
    """Headers: names of letters, digits, ``-``, ``_``; printable values; 64 KiB in all (UTF-8)."""
    if not isinstance(value, Mapping):
        raise InvalidArgumentError("headers", f"must map names to strings, got {value!r}")
    size = 0
    for name, text in value.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise InvalidArgumentError(
                "headers", f"a name must be letters, digits, '-', '_': {name!r}"
            )
        if name.lower().startswith(_RESERVED):
            raise InvalidArgumentError(
                "headers", f"names starting {_RESERVED!r} are the bus's: {name!r}"
            )
        if name.lower().startswith("nats-"):  # JetStream acts on these: refused on every backend
            raise InvalidArgumentError("headers", f"names starting 'nats-' are NATS's: {name!r}")
        if not isinstance(text, str) or not text.isprintable():
            raise InvalidArgumentError("headers", f"{name!r} must be printable text, got {text!r}")
        size += len(name) + len(text.encode())
    if size > MAX_HEADERS:
        raise InvalidArgumentError("headers", f"are {size} bytes, more than {MAX_HEADERS}")
    return dict(value)


def check_limit(value: object) -> int:
    """How many messages one fetch or listing may return: 1 to 10,000."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
        raise ConfigError("limit", f"must be a whole number from 1 to 10000, got {value!r}")
    return value


def encode_payload(data: object) -> bytes:
    """The payload as JSON bytes: ``bytes`` are checked to be one JSON document, else encoded.

    Raises ``InvalidArgumentError`` on ``payload`` for bytes that are not
    JSON, a value JSON cannot hold, or a payload over ``MAX_PAYLOAD``.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
        try:
            msgspec.json.decode(payload)
        except msgspec.DecodeError as error:
            raise InvalidArgumentError("payload", f"is not valid JSON: {error}") from None
    else:
        try:
            payload = msgspec.json.encode(data)
        except (TypeError, msgspec.EncodeError) as error:
            raise InvalidArgumentError("payload", f"cannot be encoded as JSON: {error}") from None
    _check_size(payload)
    return payload


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """A checked message on its way to a backend; make one with ``outgoing()``.

    ``given_id``: the publisher chose ``id``, so a repeat of it within the
    backend's window is not published again.
    """

    topic: str
    id: str
    payload: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    key: str | None = None
    given_id: bool = False


def outgoing(
    topic: str,
    payload: object,
    *,
    headers: Mapping[str, str] | None = None,
    key: str | None = None,
    message_id: str | None = None,
) -> Outgoing:
    """Check a message to publish; raises ``MessageRefusedError`` naming the first bad field.

    Without ``message_id`` the message gets a random one, and is never taken
    for a repeat. The current trace context, if any, goes into the headers.
    """
    with _refusing():
        checked = {} if headers is None else check_headers(headers)
        encoded = encode_payload(payload)
    _trace.inject(checked, topic)
    return checked_outgoing(
        topic=topic,
        id=uuid.uuid4().hex if message_id is None else message_id,
        payload=encoded,
        headers=checked,
        key=key,
        given_id=message_id is not None,
    )


def checked_outgoing(
    *,
    topic: object,
    id: object,  # noqa: A002 (the field's name)
    payload: bytes,
    headers: object,
    key: object,
    given_id: bool,
) -> Outgoing:
    """An ``Outgoing`` from parts that may come from anywhere (a client over HTTP): all checked.

    ``payload`` must already be one JSON document; only its size is checked
    here. Raises ``MessageRefusedError`` naming the first bad field.
    """
    with _refusing():
        _check_size(payload)
        return Outgoing(
            topic=check_topic(topic),
            id=check_message_id(id),
            payload=payload,
            headers=check_headers(headers),
            key=None if key is None else _check_key(key),
            given_id=given_id,
        )


@contextlib.contextmanager
def _refusing() -> Iterator[None]:
    """A bad field of a message refuses the message: ``MessageRefusedError``, same key."""
    try:
        yield
    except InvalidArgumentError as error:
        raise MessageRefusedError(error.key, error.problem) from None


def _check_size(payload: bytes) -> None:
    if len(payload) > MAX_PAYLOAD:
        raise InvalidArgumentError("payload", f"is {len(payload)} bytes, more than {MAX_PAYLOAD}")


def _check_key(value: object) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 256:
        raise InvalidArgumentError("key", f"must be 1 to 256 characters, got {value!r}")
    return value


class Published(msgspec.Struct, frozen=True, kw_only=True):
    """A publish the backend has made durable. ``duplicate``: its id was seen within the window."""

    id: str
    duplicate: bool = False


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One message as a handler receives it.

    ``deliveries`` counts this delivery (1 the first time). ``published`` is
    Unix time in seconds. ``payload`` is JSON; ``json()`` decodes it.
    """

    id: str
    topic: str
    payload: bytes
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    key: str | None = None
    published: float = 0.0
    deliveries: int = 1

    def json(self) -> object:
        return msgspec.json.decode(self.payload)

    def for_group(self, group: str) -> bool:
        """Whether ``group`` handles it: yes, unless it is a dead letter replayed to another."""
        replay = self.headers.get(REPLAY_HEADER)
        return replay is None or replay == group


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """A message handed to one member of a group, until it acks or fails it.

    ``receipt`` is the backend's handle for the ack: opaque to everyone else.
    """

    message: Message
    receipt: str


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """A message a group gave up on after ``deliveries`` deliveries; ``error`` is the last one."""

    id: str
    group: str
    message: Message
    deliveries: int
    error: str
    failed: float  # Unix time

    @property
    def topic(self) -> str:
        return self.message.topic


class GroupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One consumer group on one topic, as ``Bus.groups`` lists it.

    ``lag``: messages of the topic the group has not been handed yet
    (``None`` where the backend cannot tell, as Redis after a trim).
    ``pending``: messages handed to a member and neither acked nor given up
    on: in flight, or waiting to be delivered again.
    """

    topic: str
    group: str
    lag: int | None
    pending: int
