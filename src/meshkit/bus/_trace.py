"""W3C trace context in message headers, through OpenTelemetry when it is installed.

A publish carries the publisher's current context (``traceparent`` and
``tracestate``, W3C Trace Context); a handler runs in a consumer span that
continues it. Without ``opentelemetry-api`` (``pip install 'meshkit[otel]'``)
both are no-ops: the bus never needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshkit.bus._model import Message

__all__ = ["consuming", "inject"]


@cache
def _otel() -> tuple[ModuleType, ModuleType] | None:
    try:
        from opentelemetry import propagate, trace
    except ImportError:
        return None
    return propagate, trace


def inject(headers: dict[str, str]) -> None:
    """Add the current trace context to ``headers``, unless they carry one already."""
    otel = _otel()
    if otel is not None and "traceparent" not in headers:
        otel[0].inject(headers)


@contextlib.contextmanager
def consuming(message: Message, group: str) -> Iterator[None]:
    """A consumer span for handling ``message``, child of the context it was published in."""
    otel = _otel()
    if otel is None:
        yield
        return
    propagate, trace = otel
    tracer = trace.get_tracer("meshkit.bus")
    with tracer.start_as_current_span(
        f"process {message.topic}",
        context=propagate.extract(message.headers),
        kind=trace.SpanKind.CONSUMER,
        attributes={
            # OpenTelemetry's semantic conventions for messaging spans.
            "messaging.system": "meshkit",
            "messaging.operation.type": "process",
            "messaging.destination.name": message.topic,
            "messaging.consumer.group.name": group,
            "messaging.message.id": message.id,
            "messaging.message.delivery_count": message.deliveries,
        },
    ):
        yield
