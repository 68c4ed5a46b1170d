"""The server span of each request a Service answers (OpenTelemetry's HTTP conventions).

The span continues the caller's W3C trace context (``traceparent``,
``tracestate``, ``baggage``; an invalid one starts a new trace, as the
propagator reads it) and is named by the route template the application
matched (``GET /orders/{order_id}``), never by the raw path, which would
make one name per order. Without a tracer provider set up, the caller's
context is still made current, so the calls the handler makes carry the
trace on, and nothing is recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from meshkit.observe import tracer

__all__ = [
    "answered",
    "attempt_span",
    "failed",
    "name_by_route",
    "recording_send",
    "server_span",
    "trace_fields",
    "wanted_headers",
]

Scope = MutableMapping[str, Any]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_TRACE_HEADERS = (b"traceparent", b"tracestate", b"baggage")
_NAME = "meshkit.service"


def wanted_headers(headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """The trace context fields of an ASGI header list, for a propagator.

    Several ``traceparent`` fields that disagree are no context at all
    (W3C Trace Context, 3.2: a vendor must not guess which one is right).
    """
    found: dict[str, str] = {}
    for name, value in headers:
        if name in _TRACE_HEADERS:
            key = name.decode("latin-1")
            text = value.decode("latin-1")
            if key in found:
                if key == "traceparent" and found[key] != text:
                    return {}
                found[key] = f"{found[key]},{text}"  # list-valued fields combine (RFC 9110)
            else:
                found[key] = text
    if "traceparent" in found and "," in found["traceparent"]:
        found["traceparent"] = found["traceparent"].split(",", 1)[0]  # the same value repeated
    return found


def server_span(scope: Scope) -> Any:
    """A context manager: the request's server span, current while the app runs.

    FastAPI (0.16x) traces requests itself when OpenTelemetry is installed:
    a server span and three more per request (dependencies, endpoint,
    serialization). The key it marks excluded requests with tells it this
    one is traced already, so a request is one span whatever the framework.
    """
    scope["fastapi.telemetry"] = None
    method = scope["method"]
    caller = propagate.extract(wanted_headers(scope["headers"]))
    parent = trace.get_current_span(caller)
    if _unsampled(parent):
        # The caller chose not to record this trace: carry its context on,
        # making no span (the SDK's non-recording span costs four times more).
        return trace.use_span(parent)
    return tracer(_NAME).start_as_current_span(
        method,
        context=caller,
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
        },
        record_exception=False,
        set_status_on_exception=False,
    )


def recording_send(send: Send, span: trace.Span) -> Send:
    """``send``, noting the response's status on ``span``."""

    async def sending(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status = message["status"]
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
                span.set_attribute("error.type", str(status))
        await send(message)

    return sending


def name_by_route(span: trace.Span, scope: Scope) -> None:
    """Rename the span by the route template the application matched, when it says one."""
    route = getattr(scope.get("route"), "path", None)
    if isinstance(route, str):
        span.update_name(f"{scope['method']} {route}")
        span.set_attribute("http.route", route)


def failed(span: trace.Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute("error.type", type(error).__qualname__)


# -- the client side ------------------------------------------------------------


def attempt_span(target: str, method: str, host: str, port: int, url: str, resend: int) -> Any:
    """A context manager: the client span of one attempt at calling ``target`` (a service,
    or a host outside the mesh); each resend is a span of its own, counted by
    ``http.request.resend_count``, as OpenTelemetry's HTTP conventions have it.

    Under a parent that is not sampled, no span is made: the parent's
    context goes on as it came (``trace_fields``), as a span the sampler
    would drop anyway would send it, for a sixth of the cost.
    """
    current = trace.get_current_span()
    if _unsampled(current):
        return contextlib.nullcontext(current)
    attributes: dict[str, str | int] = {
        "peer.service": target,
        "http.request.method": method,
        "server.address": host,
        "server.port": port,
        "url.full": url,
    }
    if resend:
        attributes["http.request.resend_count"] = resend
    return tracer(_NAME).start_as_current_span(
        f"{method} {target}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    )


def _unsampled(span: trace.Span) -> bool:
    """A valid context whose trace is not recorded (the sampled flag off)."""
    context = span.get_span_context()
    return context.is_valid and not context.trace_flags.sampled


def trace_fields() -> list[tuple[bytes, bytes]]:
    """The current context as ``traceparent``, ``tracestate`` and ``baggage`` fields."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in carrier.items()]


def answered(span: trace.Span, status: int) -> None:
    """Note a response's status on a client span: a 4xx or 5xx is an error there."""
    if span.is_recording():
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))
