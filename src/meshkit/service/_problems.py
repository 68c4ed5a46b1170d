"""Problem details (RFC 9457) for Starlette and FastAPI applications.

A service's errors answer in the shape the gateway, the sidecar and the
control plane use, so a client parses one shape everywhere:

- ``HTTPException(404, "no user 7")`` is a 404 whose ``detail`` is
  ``"no user 7"``; its headers are kept, and a ``Retry-After`` in seconds is
  repeated as ``retry_after``. A mapping as the detail gives extension
  members instead (its ``"detail"``, if a string, is the detail; entries
  named like the problem's own members are left out);
- FastAPI's ``RequestValidationError`` is a 422 whose ``errors`` give each
  invalid input's path (``body.items.0.quantity``) and pydantic's message;
- any other exception is a 500 ``"internal error"``, logged with its
  traceback on the ``meshkit.service`` logger and never sent to the client.

``instance`` is the request's ``X-Request-Id``, which the gateway and the
sidecar set. ``meshkit.Service`` installs these handlers in the Starlette or
FastAPI application it serves unless told not to (``problem_details=False``);
other applications use ``install_problem_handlers(app)`` or
``FastAPI(exception_handlers=problem_handlers())``.

Starlette (and FastAPI) are imported only when handlers are made or run:
they are the application's dependencies, not meshkit's.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from meshkit.errors import ConfigError
from meshkit.http import FieldError, Problem, encode_problem

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = [
    "http_exception_handler",
    "install_problem_handlers",
    "problem_handlers",
    "unhandled_exception_handler",
    "validation_exception_handler",
]

log = logging.getLogger("meshkit.service")

ExceptionHandler = Callable[["Request", Exception], Awaitable["Response"]]

_LISTED = 3  # invalid inputs named in a validation problem's detail; all are in `errors`


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """An ``HTTPException`` as a problem of its status, with its headers."""
    from starlette.exceptions import HTTPException
    from starlette.responses import Response

    if not isinstance(exc, HTTPException):  # registered for it; a misuse is a bug
        raise exc
    if exc.status_code < 400:  # a redirect or a 304 raised as an exception: no problem
        return Response(status_code=exc.status_code, headers=exc.headers)
    detail, extensions = _detail_of(exc.detail)
    problem = Problem(exc.status_code, detail, instance=_request_id(request), extensions=extensions)
    return _answer(problem, exc.headers)


async def validation_exception_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's ``RequestValidationError`` as a 422 listing the invalid inputs' paths."""
    errors = tuple(_field_error(error) for error in getattr(exc, "errors", list)())
    named = "; ".join(f"{e.field}: {e.detail}" for e in errors[:_LISTED])
    more = f" (and {len(errors) - _LISTED} more)" if len(errors) > _LISTED else ""
    problem = Problem(
        422,
        f"the request is not valid: {named}{more}" if errors else "the request is not valid",
        instance=_request_id(request),
        errors=errors,
    )
    return _answer(problem, None)


async def unhandled_exception_handler(request: Request, exc: Exception) -> Response:
    """A 500 that tells the client nothing of the exception, which is logged instead."""
    request_id = _request_id(request)
    log.error(
        "%s %s failed (request %s)",
        request.method,
        request.url.path,
        request_id or "without an id",
        exc_info=exc,
    )
    return _answer(Problem(500, "internal error", instance=request_id), None)


def problem_handlers() -> dict[Any, ExceptionHandler]:
    """The handlers by exception type: for ``FastAPI(exception_handlers=...)`` or Starlette's.

    ``RequestValidationError`` is among them when FastAPI is installed.
    """
    from starlette.exceptions import HTTPException

    handlers: dict[Any, ExceptionHandler] = {
        HTTPException: http_exception_handler,
        Exception: unhandled_exception_handler,
    }
    try:
        from fastapi.exceptions import RequestValidationError
    except ImportError:  # a Starlette application: nothing validates its requests
        return handlers
    handlers[RequestValidationError] = validation_exception_handler
    return handlers


def install_problem_handlers(app: Starlette) -> None:
    """Make ``app`` answer its errors as problem details.

    A handler the application registered itself for one of these exceptions
    (or for status 500, which Starlette treats as ``Exception``) is kept;
    FastAPI's default handlers are replaced. Call it before the application
    serves its first request: Starlette reads its handlers then. Raises
    ``ConfigError`` on ``app`` when it is not a Starlette application.
    """
    if not _is_starlette(app):
        raise ConfigError("app", f"must be a Starlette or FastAPI application, got {app!r}")
    current = app.exception_handlers
    for kind, handler in problem_handlers().items():
        if kind is Exception and 500 in current:
            continue
        if kind not in current or _is_fastapi_default(current[kind]):
            app.add_exception_handler(kind, handler)


def install_if_starlette(app: object) -> None:
    """``install_problem_handlers`` for a Starlette application; any other ASGI app is left be."""
    if _is_starlette(app):
        install_problem_handlers(app)  # type: ignore[arg-type] # checked just above


def _is_starlette(app: object) -> bool:
    # An application can be a Starlette one only once starlette was imported.
    module = sys.modules.get("starlette.applications")
    return module is not None and isinstance(app, module.Starlette)


def _is_fastapi_default(handler: object) -> bool:
    return getattr(handler, "__module__", None) == "fastapi.exception_handlers"


def _request_id(request: Request) -> str | None:
    return request.headers.get("x-request-id")


def _detail_of(detail: object) -> tuple[str, dict[str, Any]]:
    """The detail text and the extension members of an ``HTTPException``'s detail."""
    if isinstance(detail, str):
        return detail, {}
    if isinstance(detail, Mapping) and all(isinstance(key, str) for key in detail):
        text = detail.get("detail")
        members = {k: v for k, v in detail.items() if k not in Problem.MEMBERS}
        return (text if isinstance(text, str) else ""), members
    return str(detail), {}


def _field_error(error: Mapping[str, Any]) -> FieldError:
    location = tuple(error.get("loc", ()))
    if error.get("type") == "json_invalid":
        # FastAPI puts the byte offset where a field path would be ("body", 25).
        at = f" at byte {location[1]}" if len(location) > 1 else ""
        return FieldError("body", f"is not valid JSON{at}")
    path = ".".join(str(part) for part in location) or "request"
    return FieldError(path, str(error.get("msg", "is not valid")))


def _answer(problem: Problem, headers: Mapping[str, str] | None) -> Response:
    from starlette.responses import Response

    given = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    fields, body = encode_problem(problem, given)
    names = {k.decode("latin-1"): v.decode("latin-1") for k, v in fields}
    return Response(body, problem.status, headers=names)
