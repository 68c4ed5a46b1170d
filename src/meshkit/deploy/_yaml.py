"""YAML for Kubernetes manifests: plain dicts, lists and scalars, written in block style.

meshkit has no YAML library among its dependencies, and writing what
``meshkit manifests`` produces needs only a small part of YAML: block
mappings and sequences, and scalars that can never be read back as
anything else. Strings are double-quoted (so ``"on"``, ``"1.0"`` and
``"null"`` stay strings under YAML 1.1 readers, as Kubernetes' are), except
names and paths that cannot be read as anything else (``Deployment``,
``app.kubernetes.io/name``, ``/data``), which are plain, and a multi-line
string, which a literal block (``|``) keeps exactly: how a ConfigMap's file
reads best.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["dump_all"]

# Text no YAML 1.1 reader takes for anything but a string, except the words below.
_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_./-]*")
# Words a YAML 1.1 reader takes for booleans or null, even as keys (compared in lower case).
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
_INDENT = "  "
_EOL = "\n"


def dump_all(documents: Iterable[Mapping[str, Any]]) -> str:
    """The documents as one YAML stream, each after a ``---`` line."""
    return "".join(
        f"---\n{_block(document, 0) if document else '{}' + _EOL}" for document in documents
    )


def _block(value: Any, depth: int) -> str:
    """``value`` (a non-empty mapping or sequence) as lines indented ``depth`` levels."""
    pad = _INDENT * depth
    lines = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            lines.append(f"{pad}{_key(key)}:{_after_colon(item, depth)}")
    else:
        for item in value:
            if _is_nested(item):
                # The item's first line shares the "- " line; the rest line up under it.
                nested = _block(item, depth + 1)
                lines.append(f"{pad}- {nested[len(pad) + len(_INDENT) :].removesuffix(_EOL)}")
            else:
                lines.append(f"{pad}-{_after_colon(item, depth)}")
    return _EOL.join(lines) + _EOL


def _after_colon(item: Any, depth: int) -> str:
    """What follows ``key:`` or ``-``: a scalar on the same line, or a block below it."""
    if _is_nested(item):
        return _EOL + _block(item, depth + 1).removesuffix(_EOL)
    return " " + _scalar(item, depth + 1)


def _is_nested(value: Any) -> bool:
    return isinstance(value, Mapping | list | tuple) and len(value) > 0


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a manifest's keys are strings, not {key!r}")
    return _string(key)


def _scalar(value: Any, depth: int) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a manifest holds finite numbers, not {value!r}")
        written = repr(value)
        # YAML 1.1 reads 1e-05 as a string: its floats have a point.
        return written if "." in written or "e" not in written else written.replace("e", ".0e")
    if isinstance(value, str):
        literal = _literal(value, depth)
        return _string(value) if literal is None else literal
    if isinstance(value, Mapping):
        return "{}"
    if isinstance(value, Sequence):
        return "[]"
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _literal(text: str, depth: int) -> str | None:
    """``text`` as a literal block (``|``), or ``None`` when a quoted string is safer.

    A literal block keeps every character as it is, but cannot hold
    characters YAML does not print, and would read a line of spaces, or a
    first line that begins with one, differently.
    """
    if "\n" not in text:
        return None
    lines = text.split("\n")
    body = lines[:-1] if text.endswith("\n") else lines
    first = next((line for line in body if line), None)
    if (
        first is None
        or first.startswith(" ")
        or any((line and not line.strip(" ")) or not line.isprintable() for line in body)
    ):
        return None
    # Chomping: "-" drops the end of line, "" keeps one, "+" keeps them all.
    chomp = "-" if not text.endswith("\n") else ("+" if text.endswith("\n\n") else "")
    pad = _INDENT * depth
    return f"|{chomp}\n" + "\n".join(pad + line if line else "" for line in body)


# Characters a YAML stream may not hold as they are (YAML 1.2, 5.1: c-printable),
# and line breaks that would fold a double-quoted string.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\ufeff\ufffe\uffff]")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _string(text: str) -> str:
    """``text`` plain when it reads back as this string, else double-quoted."""
    if _PLAIN.fullmatch(text) and text.lower() not in _RESERVED:
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    def escape(match: re.Match[str]) -> str:
        char = match.group()
        return _ESCAPES.get(char) or f"\\u{ord(char):04x}"

    return '"' + re.sub('["\\\\]|' + _UNPRINTABLE.pattern, escape, text) + '"'
