"""A complete HTTP response, as the client returns it."""

from __future__ import annotations

import codecs
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


def _charset(content_type: str | None) -> str:
    """The ``charset`` parameter of a Content-Type, if Python knows it; else UTF-8."""
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"')
            try:
                return codecs.lookup(charset).name
            except LookupError:
                break
    return "utf-8"


class Response:
    """Status, headers (lower-cased names, in order) and the whole body.

    It also answers to httpx's names (``status_code``, ``is_success``,
    ``text``, ``json()``), so code written against httpx reads it unchanged.
    """

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

    @property
    def status_code(self) -> int:
        """``status``, by httpx's name."""
        return self.status

    @property
    def is_success(self) -> bool:
        """``ok``, by httpx's name: a 2xx status."""
        return self.ok

    @property
    def text(self) -> str:
        """The body decoded by the Content-Type's charset (UTF-8 when it names none).

        Undecodable bytes become U+FFFD, as httpx decodes them: reading a
        peer's text never fails.
        """
        return self.body.decode(_charset(self.header("content-type")), errors="replace")

    def __repr__(self) -> str:
        return f"<Response {self.status} {len(self.body)} bytes>"
