"""RFC 9457 problem details: the one shape of every error meshkit answers over HTTP.

The gateway, the sidecar, the gateway's admin API, the control plane and the
SDK's exception handlers all answer errors as ``application/problem+json``::

    {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no route for /api/nothing",
        "instance": "5f1c0a9e3b-2a",
    }

``type`` is ``about:blank`` (RFC 9457, 4.2.1): meshkit defines no problem
types of its own, so ``title`` is the status's reason phrase and ``detail``
says what went wrong with this request. ``instance`` is the request id
(``X-Request-Id``) where there is one: a relative URI reference that finds
the request in the logs. Two extension members carry what clients act on:

- ``retry_after``: whole seconds, as the ``Retry-After`` header says (429,
  503), for clients that read bodies rather than headers;
- ``errors``: one ``{"field": ..., "detail": ...}`` per invalid input, the
  field a dotted path (``ttl``, ``body.items.0.quantity``).

Clients read any error body with ``Problem.read``, which never fails: a body
that is not a problem becomes one whose detail is the body's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, ClassVar

import msgspec

from meshkit.errors import ConfigError
from meshkit.http._response import Response

__all__ = ["PROBLEM_JSON", "FieldError", "Problem", "encode_problem", "problem_response"]

PROBLEM_JSON = "application/problem+json"
_CONTENT_TYPE = (b"content-type", PROBLEM_JSON.encode("ascii"))
_SHOWN_BODY = 200  # characters of a non-problem body kept as the detail


class FieldError(msgspec.Struct, frozen=True):
    """One invalid input: ``field`` is its dotted path, ``detail`` what is wrong with it."""

    field: str
    detail: str


class _Said(msgspec.Struct, frozen=True):
    """What a problem says, given by position; the rest is keyword-only (``Problem``)."""

    status: int
    detail: str = ""


class Problem(_Said, frozen=True, kw_only=True):
    """An error answer: ``Problem(404, "no route for /x", instance=request_id)``.

    ``status`` must be an error status (400-599); ``title`` defaults to its
    reason phrase in RFC 9110, as RFC 9457 asks of ``about:blank`` problems,
    and ``detail`` to the title. ``extensions`` are further members; they may
    not take a name in ``MEMBERS``. Raises ``ConfigError`` naming the member
    that is wrong.

    A msgspec struct rather than a dataclass: the gateway builds one for every
    request it refuses, and a frozen dataclass is several times slower to make.
    """

    # The members RFC 9457 defines, and the two extensions meshkit defines.
    MEMBERS: ClassVar[frozenset[str]] = frozenset(
        {"type", "title", "status", "detail", "instance", "retry_after", "errors"}
    )

    title: str = ""
    type: str = "about:blank"
    instance: str | None = None
    retry_after: int | None = None
    errors: tuple[FieldError, ...] = ()
    extensions: dict[str, Any] = {}

    def __post_init__(self) -> None:
        if isinstance(self.status, bool) or not isinstance(self.status, int):
            raise ConfigError("status", f"must be an HTTP status, got {self.status!r}")
        if not 400 <= self.status <= 599:
            raise ConfigError("status", f"must be an error status (400-599), got {self.status}")
        if not self.title:
            msgspec.structs.force_setattr(self, "title", _phrase(self.status))
        if not self.detail:
            msgspec.structs.force_setattr(self, "detail", self.title)
        if self.extensions:
            taken = self.MEMBERS.intersection(self.extensions)
            if taken:
                raise ConfigError("extensions", f"may not redefine {', '.join(sorted(taken))}")

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, standard members first; absent members are left out."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.instance is not None:
            body["instance"] = self.instance
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        if self.errors:
            body["errors"] = [{"field": e.field, "detail": e.detail} for e in self.errors]
        body.update(self.extensions)
        return body

    def encode(self) -> bytes:
        """The body of the answer: ``to_dict()`` as JSON."""
        return msgspec.json.encode(self.to_dict())

    @classmethod
    def read(cls, status: int, body: bytes) -> Problem:
        """The problem an error answer of ``status`` carries; never raises.

        A body that is not a problem object (a proxy's HTML page, plain text)
        gives a problem whose ``detail`` is its first 200 characters.
        """
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            data = None
        status = status if 400 <= status <= 599 else 500
        if not isinstance(data, dict):
            text = body[:_SHOWN_BODY].decode("utf-8", "replace").strip()
            return cls(status, text or _phrase(status))
        detail, title = data.get("detail"), data.get("title")
        extensions = {k: v for k, v in data.items() if k not in cls.MEMBERS}
        return cls(
            status,
            detail if isinstance(detail, str) else "",
            title=title if isinstance(title, str) else "",
            type=data["type"] if isinstance(data.get("type"), str) else "about:blank",
            instance=data["instance"] if isinstance(data.get("instance"), str) else None,
            retry_after=_whole(data.get("retry_after")),
            errors=tuple(_field_errors(data.get("errors"))),
            extensions=extensions,
        )

    def summary(self) -> str:
        """One line for a log or an error message: the detail and the fields it names."""
        text = self.detail
        fields = "; ".join(f"{e.field}: {e.detail}" for e in self.errors)
        if fields and fields not in text:
            text = f"{text} ({fields})"
        return text


def encode_problem(
    problem: Problem, headers: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and body of an answer carrying ``problem``, for any server.

    The headers are the content type, then ``headers`` (lower-case names).
    A ``Retry-After`` in seconds among them is repeated as ``retry_after``
    unless the problem has one already; an HTTP-date there (RFC 9110,
    10.2.3) is left to the header.
    """
    extra = list(headers)
    body = problem.to_dict()
    if problem.retry_after is None:
        for name, value in extra:
            if name == b"retry-after" and value.isdigit():
                body["retry_after"] = int(value)
                break
    return [_CONTENT_TYPE, *extra], msgspec.json.encode(body)


def problem_response(problem: Problem, headers: Iterable[tuple[bytes, bytes]] = ()) -> Response:
    """``problem`` as an answer of meshkit's HTTP server, with any further ``headers``."""
    return Response(problem.status, *encode_problem(problem, headers))


# RFC 9110 renamed these; Python's HTTPStatus has the new names only from
# 3.13, and a title must not change with the Python that serves it.
_RENAMED = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


_TITLES = {status.value: status.phrase for status in HTTPStatus} | _RENAMED


def _phrase(status: int) -> str:
    return _TITLES.get(status) or ("Client Error" if status < 500 else "Server Error")


def _whole(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _field_errors(value: object) -> Iterable[FieldError]:
    if not isinstance(value, list):
        return
    for item in value:
        if isinstance(item, dict):
            field, detail = item.get("field"), item.get("detail")
            if isinstance(field, str) and isinstance(detail, str):
                yield FieldError(field, detail)
