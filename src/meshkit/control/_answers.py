"""Error answers shared by the control plane's APIs: problem details (RFC 9457).

A refusal of bad input is a 400 whose ``errors`` name the field, so the
client (``meshkit._plane_client``) raises ``InvalidArgumentError`` (or what
its caller asks for) on that same field.
"""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from meshkit.errors import InvalidArgumentError
from meshkit.http import FieldError, Problem, Response, problem_response

__all__ = ["body_error", "decode_body", "error", "invalid"]

B = TypeVar("B")

# What names a field in msgspec's messages, beside the path after " - at `$".
_NAMED = re.compile(r"(?:missing required|unknown) field `([^`]*)`")
_PATH_PARTS = re.compile(r"[.\[\]]+")


def error(status: int, message: str, *headers: tuple[bytes, bytes]) -> Response:
    """An answer of ``status`` whose detail is ``message``, with any further ``headers``."""
    return problem_response(Problem(status, message), headers)


def invalid(error: InvalidArgumentError) -> Response:
    """A 400 for ``error``, its key and problem in ``errors``."""
    field = FieldError(error.key, error.problem)
    return problem_response(Problem(400, str(error), errors=(field,)))


def body_error(error: msgspec.ValidationError) -> InvalidArgumentError:
    """``error`` as an ``InvalidArgumentError`` on the dotted path of the field it is about.

    ``Expected `int`, got `str` - at `$.items[0].quantity``` is about
    ``items.0.quantity``; a missing or unknown field is named in the message.
    The key is ``body`` when msgspec names no field.
    """
    problem, _, at = str(error).partition(" - at `$")
    parts = [part for part in _PATH_PARTS.split(at.rstrip("`")) if part]
    named = _NAMED.search(problem)
    if named is not None:
        parts.append(named.group(1))
    return InvalidArgumentError(".".join(parts) or "body", problem)


def decode_body(kind: type[B], body: bytes) -> B:
    """A JSON request body as ``kind``, or an ``InvalidArgumentError`` naming what is wrong."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as error:
        raise body_error(error) from None
    except msgspec.DecodeError as error:
        raise InvalidArgumentError("body", f"is not valid JSON: {error}") from None
