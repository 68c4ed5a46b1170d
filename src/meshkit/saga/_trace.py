"""The spans of a saga run: one for the run, one per step attempt and compensation.

A run keeps the trace context it was begun in (``Run.trace_context``, in
the saga log), so its spans join the trace of the request that began it,
even when the run is driven later, or by another instance after a crash:
each drive of the run is a ``saga {name}`` span, marked ``resumed`` when
the run was taken back from the log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import propagate
from opentelemetry.trace import Span, Status, StatusCode

from meshkit.observe import tracer
from meshkit.saga._machine import Event, Failed, UndoFailed, Unknown
from meshkit.saga._model import Run

__all__ = ["action_span", "current_context", "ended", "outcome", "run_span"]

_NAME = "meshkit.saga"


def current_context() -> dict[str, str]:
    """The current trace context, as headers to keep with a new run."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextmanager
def run_span(run: Run, *, resumed: bool) -> Iterator[Span]:
    """The span of driving ``run``, in the trace the run was begun in."""
    with tracer(_NAME).start_as_current_span(
        f"saga {run.saga}",
        context=propagate.extract(run.trace_context),
        attributes={
            "meshkit.saga.name": run.saga,
            "meshkit.saga.run_id": run.id,
            "meshkit.saga.resumed": resumed,
        },
    ) as span:
        yield span


def ended(span: Span, run: Run) -> None:
    """Note how the drive left the run: a stuck run is an error of the span."""
    if span.is_recording():
        span.set_attribute("meshkit.saga.status", run.status)
        if run.status == "stuck":
            span.set_status(Status(StatusCode.ERROR, run.note or "stuck"))


@contextmanager
def action_span(run: Run, step: int, attempt: int, *, undo: bool) -> Iterator[Span]:
    """The span of one attempt of a step, or of its compensation."""
    name = run.plan[step].name
    with tracer(_NAME).start_as_current_span(
        f"{'compensate' if undo else 'step'} {name}",
        attributes={
            "meshkit.saga.name": run.saga,
            "meshkit.saga.run_id": run.id,
            "meshkit.saga.step": name,
            "meshkit.saga.attempt": attempt,
        },
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def outcome(span: Span, event: Event) -> None:
    """Note a step's outcome: a failure, an unknown outcome or a failed undo is an error."""
    if span.is_recording() and isinstance(event, Failed | Unknown | UndoFailed):
        detail = event.detail if isinstance(event, Failed) else event.error
        span.set_status(Status(StatusCode.ERROR, detail))
        span.set_attribute("meshkit.saga.outcome", type(event).__name__.lower())
