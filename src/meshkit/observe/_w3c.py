"""W3C Trace Context (``traceparent``, ``tracestate``) and W3C Baggage, on bytes.

Pure functions over header values as a proxy receives them (bytes, names
lower-case). What an invalid header does follows the W3C recommendation
(Trace Context, section 3 "Processing model", and 4.3 for versions):

- ``traceparent`` is invalid when its version is ``ff``, when version
  ``00`` has anything after the flags, when a field has the wrong length
  or is not lower-case hex, when the trace id or the parent id is all
  zeros, or when several ``traceparent`` fields disagree. The receiver
  then starts a new trace, and the ``tracestate`` that came with it goes
  too (it described the old trace). A request is never refused for it.
- A later version (``01`` to ``fe``) is read by its first four fields
  when they are well formed and whatever follows begins with ``-``: a
  version may only add fields.
- ``tracestate`` with more than 32 list members, a duplicate key, or a
  key or value outside the grammar is dropped; ``traceparent`` stays.
  Several ``tracestate`` fields are one list, joined by commas.
- ``baggage`` is passed on as it came (a proxy has no reason to change
  it); ``parse_baggage`` and ``format_baggage`` are for code that reads
  or sets entries.

Ids stay as the lower-case hex bytes they travel as, so passing a context
on costs no conversion.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from urllib.parse import quote, unquote

__all__ = [
    "TraceParent",
    "format_baggage",
    "format_traceparent",
    "parse_baggage",
    "parse_traceparent",
    "parse_traceparents",
    "parse_tracestate",
]

TraceParent = tuple[bytes, bytes, bool]  # (trace id, parent id, sampled), ids in hex

_FIELDS = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

MAX_TRACESTATE_MEMBERS = 32
_KEY = re.compile(
    rb"[a-z][a-z0-9_\-*/]{0,255}"  # simple-key
    rb"|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13}"  # multi-tenant-key
)
_VALUE = re.compile(rb"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")

# W3C Baggage, section 3.3.2: at most 64 list members and 8,192 bytes in all.
MAX_BAGGAGE_MEMBERS = 64
MAX_BAGGAGE_BYTES = 8192


def parse_traceparent(value: bytes) -> TraceParent | None:
    """``(trace_id, parent_id, sampled)`` of one ``traceparent`` value; ``None`` if invalid."""
    found = _FIELDS.match(value)
    if found is None:
        return None
    version, trace_id, parent_id, flags = found.groups()
    if version == b"00":
        if len(value) != 55:
            return None
    elif version == b"ff" or (len(value) > 55 and value[55:56] != b"-"):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, int(flags, 16) & 1 == 1


def parse_traceparents(values: Sequence[bytes]) -> TraceParent | None:
    """The context of every ``traceparent`` field a request carried; ``None`` when there
    is none, one is invalid, or they disagree."""
    if not values:
        return None
    first = values[0]
    if any(value != first for value in values[1:]):
        return None
    return parse_traceparent(first)


def format_traceparent(trace_id: bytes, span_id: bytes, *, sampled: bool) -> bytes:
    """A version-00 ``traceparent`` value naming ``span_id`` as the parent."""
    return b"00-%s-%s-%s" % (trace_id, span_id, b"01" if sampled else b"00")


def parse_tracestate(values: Sequence[bytes]) -> bytes | None:
    """The ``tracestate`` fields as one value to pass on; ``None`` when absent or dropped.

    Empty list members are skipped, as the grammar allows them; the
    members' order is kept (it is meaningful: most recent first).
    """
    if not values:
        return None
    members = []
    keys = set()
    for value in values:
        for member in value.split(b","):
            member = member.strip(b" \t")
            if not member:
                continue
            key, equals, member_value = member.partition(b"=")
            if (
                not equals
                or key in keys
                or not _KEY.fullmatch(key)
                or not _VALUE.fullmatch(member_value)
            ):
                return None
            keys.add(key)
            members.append(member)
    if not members or len(members) > MAX_TRACESTATE_MEMBERS:
        return None
    return b",".join(members)


def parse_baggage(value: bytes) -> list[tuple[str, str]] | None:
    """W3C Baggage entries ``(key, value)`` (values percent-decoded, properties
    left out); ``None`` when the value is malformed or over the limits."""
    if len(value) > MAX_BAGGAGE_BYTES:
        return None
    entries = []
    for member in value.split(b","):
        pair = member.split(b";", 1)[0].strip(b" \t")
        if not pair:
            continue
        key, equals, raw = pair.partition(b"=")
        key = key.strip(b" \t")
        if not equals or not key or not _token(key):
            return None
        try:
            entries.append((key.decode("ascii"), unquote(raw.strip(b" \t").decode("ascii"))))
        except UnicodeDecodeError:
            return None
    if len(entries) > MAX_BAGGAGE_MEMBERS:
        return None
    return entries


def format_baggage(entries: Iterable[tuple[str, str]]) -> bytes:
    """A ``baggage`` value for ``entries``; values percent-encoded as W3C Baggage asks."""
    return ",".join(f"{key}={quote(value, safe='')}" for key, value in entries).encode("ascii")


_TOKEN_BYTES = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def _token(key: bytes) -> bool:
    return all(byte in _TOKEN_BYTES for byte in key)
