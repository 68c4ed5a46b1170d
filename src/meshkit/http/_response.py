"""A complete HTTP response, as the client returns it."""

from __future__ import annotations

from typing import Any

import msgspec

from meshkit.errors import ProtocolViolationError


def first_header(headers: list[tuple[bytes, bytes]], name: str) -> str | None:
    """The first value of ``name`` in headers whose names are lower-case, as Latin-1."""
    wanted = name.lower().encode("latin-1")
    for key, value in headers:
        if key == wanted:
            return value.decode("latin-1")
    return None


__all__ = ["Response"]


class Response:
    """Status, headers (lower-cased names, in order) and the whole body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as Latin-1."""
        return first_header(self.headers, name)

    def json(self) -> Any:
        """The body decoded as JSON; ``ProtocolViolationError`` if it is not JSON."""
        try:
            return msgspec.json.decode(self.body)
        except msgspec.DecodeError as error:
            raise ProtocolViolationError(f"response body is not JSON: {error}") from error

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"
