"""Error answers shared by the control plane's APIs: JSON ``{"error": ..., "field": ...}``."""

from __future__ import annotations

import msgspec

from meshkit.http import Response, json_response

__all__ = ["error", "field_of"]


def error(status: int, message: str, field: str | None = None) -> Response:
    body: dict[str, str] = {"error": message}
    if field is not None:
        body["field"] = field
    return json_response(status, body)


def field_of(error: msgspec.ValidationError) -> str | None:
    """The field a msgspec error is about (``... - at `$.port``` -> ``port``)."""
    message = str(error)
    marker = "at `$."
    if marker in message:
        return message.rsplit(marker, 1)[1].rstrip("`").split(".")[0].split("[")[0]
    if "missing required field `" in message:
        return message.split("missing required field `", 1)[1].split("`")[0]
    if "unknown field `" in message:
        return message.split("unknown field `", 1)[1].split("`")[0]
    return None
