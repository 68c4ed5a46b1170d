"""The ``Idempotency-Key`` request header (draft-ietf-httpapi-idempotency-key-header).

A client that may send one non-idempotent request twice (a retry after a
lost answer) names it with a key; the server answers a repeat of the key
with its first answer instead of acting again. The draft makes the field an
RFC 8941 Item whose value is a String::

    Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"

so a key is printable ASCII, sent between double quotes with ``"`` and
``\\`` escaped by a backslash (RFC 8941, 3.3.3). meshkit limits a key to
255 characters, as Stripe and most payment APIs do: a UUID or a saga run's
id and step fit with room to spare, and a server can index it.

Both ends use these functions, so the client and the server agree on what a
valid key is: ``idempotency_key_field`` for a client, ``read_idempotency_key``
for a server.
"""

from __future__ import annotations

from meshkit.errors import InvalidArgumentError

__all__ = [
    "IDEMPOTENCY_KEY",
    "MAX_IDEMPOTENCY_KEY",
    "idempotency_key_field",
    "read_idempotency_key",
]

IDEMPOTENCY_KEY = "idempotency-key"  # the field's name, lower-cased as meshkit sends names
MAX_IDEMPOTENCY_KEY = 255

_FIELD = b"idempotency-key"
_PRINTABLE = frozenset(range(0x20, 0x7F))  # RFC 8941's sf-string characters


def idempotency_key_field(key: str) -> tuple[bytes, bytes]:
    """The header that sends ``key``, its value an sf-string.

    Raises ``InvalidArgumentError`` naming ``idempotency_key`` when the key
    is empty, longer than ``MAX_IDEMPOTENCY_KEY`` or not printable ASCII.
    """
    problem = _wrong(key)
    if problem is not None:
        raise InvalidArgumentError("idempotency_key", problem)
    escaped = key.replace("\\", "\\\\").replace('"', '\\"')
    return _FIELD, b'"' + escaped.encode("ascii") + b'"'


def read_idempotency_key(value: str) -> str:
    """The key a received ``Idempotency-Key`` field value carries.

    The value is an sf-string, as the draft says; a bare value, as Stripe's
    clients and ``curl -H`` users send, is taken as the key itself. Raises
    ``InvalidArgumentError`` naming ``Idempotency-Key`` when the value is
    not a valid key in either form.
    """
    value = value.strip(" \t")
    key = _unquote(value) if value.startswith('"') else value
    if key is None:
        raise InvalidArgumentError("Idempotency-Key", "is not a well-formed quoted string")
    problem = _wrong(key)
    if problem is not None:
        raise InvalidArgumentError("Idempotency-Key", problem)
    return key


def _wrong(key: str) -> str | None:
    """What is wrong with ``key``, or None when it is a valid key."""
    if not key:
        return "must not be empty"
    if len(key) > MAX_IDEMPOTENCY_KEY:
        return f"must be at most {MAX_IDEMPOTENCY_KEY} characters, got {len(key)}"
    if not all(ord(c) in _PRINTABLE for c in key):
        return "must be printable ASCII (space to ~)"
    return None


def _unquote(value: str) -> str | None:
    """The string an sf-string holds (RFC 8941, 4.2.5), or None when it is malformed."""
    out: list[str] = []
    chars = iter(value[1:])
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped not in ('"', "\\"):
                return None
            out.append(escaped)
        elif char == '"':
            return "".join(out) if next(chars, None) is None else None
        else:
            out.append(char)
    return None  # no closing quote
