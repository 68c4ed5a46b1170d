"""What travels on the bus: messages, and the names and payloads they carry.

Names are checked the same way for every backend, to the strictest of them:
a topic becomes a NATS subject (dot-separated tokens, no wildcards) and a
Redis key, a group becomes a JetStream durable consumer name (no dots).
Payloads are JSON documents, checked when published, so a consumer never
receives one it cannot parse.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import msgspec

from meshkit.errors import ConfigError

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

# NATS's default max_payload is 1 MiB; the payload and its headers must fit in it.
MAX_PAYLOAD = 1024 * 1024 - 64 * 1024
MAX_HEADERS = 64 * 1024

_TOPIC = re.compile(r"[a-z0-9][a-z0-9_-]*(\.[a-z0-9][a-z0-9_-]*)*")
_GROUP = re.compile(r"[a-z0-9][a-z0-9_-]*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_MESSAGE_ID = re.compile(r"[\x21-\x7e]+")  # visible ASCII: it becomes a NATS header value


def check_topic(value: object) -> str:
    """A topic: dot-separated words of lower-case letters, digits, ``-`` and ``_``, ≤ 200."""
    if not isinstance(value, str) or len(value) > 200 or _TOPIC.fullmatch(value) is None:
        raise ConfigError(
            "topic",
            "must be dot-separated words of lower-case letters, digits, '-' and '_' "
            f"(like 'order.created'), at most 200 characters, got {value!r}",
        )
    return value


def check_group(value: object) -> str:
    """A consumer group: lower-case letters, digits, ``-`` and ``_``, at most 64."""
    if not isinstance(value, str) or len(value) > 64 or _GROUP.fullmatch(value) is None:
        raise ConfigError(
            "group",
            f"must be lower-case letters, digits, '-' and '_', at most 64, got {value!r}",
        )
    return value


def check_message_id(value: object) -> str:
    if not isinstance(value, str) or len(value) > 128 or _MESSAGE_ID.fullmatch(value) is None:
        raise ConfigError("message_id", f"must be 1 to 128 visible ASCII characters, got {value!r}")
    return value


def check_headers(value: object) -> dict[str, str]:
    """Headers: names of letters, digits, ``-``, ``_``; values of printable text; 64 KiB in all."""
    if not isinstance(value, Mapping):
        raise ConfigError("headers", f"must map names to strings, got {value!r}")
    size = 0
    for name, text in value.items():
        if not isinstance(name, str) or _HEADER_NAME.fullmatch(name) is None:
            raise ConfigError("headers", f"a name must be letters, digits, '-', '_': {name!r}")
        if not isinstance(text, str) or not text.isprintable():
            raise ConfigError("headers", f"{name!r} must be printable text, got {text!r}")
        size += len(name) + len(text)
    if size > MAX_HEADERS:
        raise ConfigError("headers", f"are {size} characters, more than {MAX_HEADERS}")
    return dict(value)


def encode_payload(data: object) -> bytes:
    """The payload as JSON bytes: ``bytes`` are checked to be one JSON document, else encoded.

    Raises ``ConfigError`` for bytes that are not JSON, a value JSON cannot
    hold, or a payload over ``MAX_PAYLOAD``.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
        try:
            msgspec.json.decode(payload)
        except msgspec.DecodeError as error:
            raise ConfigError("payload", f"is not valid JSON: {error}") from None
    else:
        try:
            payload = msgspec.json.encode(data)
        except (TypeError, msgspec.EncodeError) as error:
            raise ConfigError("payload", f"cannot be encoded as JSON: {error}") from None
    if len(payload) > MAX_PAYLOAD:
        raise ConfigError("payload", f"is {len(payload)} bytes, more than {MAX_PAYLOAD}")
    return payload


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
    sequence: int = 0
    published: float = 0.0
    deliveries: int = 1

    def json(self) -> object:
        return msgspec.json.decode(self.payload)
