"""The saga run machine: ``advance(run, event, now)`` returns the next run and what to do.

It never awaits, reads a clock or touches a database: the driver feeds it
the outcome of each action and the time, writes the run it returns, and
only then carries out the action it returns (write-ahead). Because the
run written always announces the action about to happen, a driver that
dies at any point leaves a run from which ``advance(run, Resume(), now)``
picks up correctly:

- a step found ``started`` may or may not have happened. It counts as an
  attempt whose outcome is unknown, and is tried again under its
  idempotency key; when its attempts are spent, it is compensated like
  any step whose outcome stayed unknown (its compensation treats "nothing
  to undo" as done).
- a compensation found ``undoing`` is run again, for the same reason.

Invariants, checked by the property tests: a run ends ``completed``, or
``compensated`` with every step that did something undone exactly once,
latest first; no step is undone that never started; a step that failed
for good (``StepFailed``) is not undone, since it did nothing.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from msgspec.structs import replace

from meshkit.errors import UsageError
from meshkit.saga._model import Failure, Run, StepState

__all__ = [
    "Action",
    "Compensate",
    "Event",
    "Failed",
    "Finish",
    "Resume",
    "Retry",
    "RunStep",
    "Succeeded",
    "Transition",
    "UndoFailed",
    "Undone",
    "Unknown",
    "Wait",
    "advance",
]


# -- events: what the driver tells the machine ---------------------------------------


class Resume(NamedTuple):
    """Decide from the run as it stands: a new run, a wait that ended, a run found after a crash."""


class Succeeded(NamedTuple):
    """The step at the cursor returned ``result`` (JSON's types: ``msgspec.to_builtins``)."""

    result: Any


class Failed(NamedTuple):
    """The step at the cursor failed for good and did nothing (it raised ``StepFailed``)."""

    detail: str
    status: int | None = None
    data: Any = None


class Unknown(NamedTuple):
    """The step at the cursor raised or timed out: it may or may not have happened."""

    error: str


class Undone(NamedTuple):
    """The compensation at the cursor returned."""


class UndoFailed(NamedTuple):
    """The compensation at the cursor raised or timed out."""

    error: str


class Retry(NamedTuple):
    """A person asks a stuck run to go on: its stuck step gets its attempts again."""


Event = Resume | Succeeded | Failed | Unknown | Undone | UndoFailed | Retry


# -- actions: what the machine tells the driver ----------------------------------------


class RunStep(NamedTuple):
    """Run step number ``step``'s action (its ``attempt``-th attempt)."""

    step: int
    attempt: int


class Compensate(NamedTuple):
    """Run step number ``step``'s compensation (its ``attempt``-th attempt)."""

    step: int
    attempt: int


class Wait(NamedTuple):
    """Do nothing before ``until`` (Unix seconds), then advance with ``Resume()``."""

    until: float


class Finish(NamedTuple):
    """Stop driving the run: it is ``completed``, ``compensated`` or ``stuck``."""

    status: str


Action = RunStep | Compensate | Wait | Finish


class Transition(NamedTuple):
    """The run to write, then the action to carry out."""

    run: Run
    action: Action


# -- the machine -----------------------------------------------------------------------


def advance(run: Run, event: Event, now: float) -> Transition:
    """Apply ``event`` to ``run`` at ``now`` (Unix seconds): the run to write and what to do.

    Raises ``UsageError`` for an event that does not fit the run (an
    outcome while the run is waiting, ``Retry`` of a run that is not stuck).
    """
    if isinstance(event, Resume):
        return _decide(run, now)
    if isinstance(event, Retry):
        return _decide(_retried(run), now)
    if run.status not in ("running", "compensating"):
        raise UsageError(f"saga run {run.id} is {run.status}: no {type(event).__name__} expected")
    step = run.steps[run.cursor]
    if run.status == "running":
        if step.phase != "started":
            raise UsageError(f"saga run {run.id}: {type(event).__name__} of a step not started")
        return _forward(run, step, event, now)
    if step.phase != "undoing":
        raise UsageError(f"saga run {run.id}: {type(event).__name__} of a step not undoing")
    return _backward(run, step, event, now)


def _forward(run: Run, step: StepState, event: Event, now: float) -> Transition:
    index = run.cursor
    if isinstance(event, Succeeded):
        done = replace(step, phase="done", result=event.result, error=None, ended=now)
        return _decide(_with(run, index, done, cursor=index + 1, wake=0.0), now)
    if isinstance(event, Failed):
        failed = replace(step, phase="failed", error=event.detail, ended=now)
        failure = Failure(
            step=run.plan[index].name,
            detail=event.detail,
            final=True,
            status=event.status,
            data=event.data,
        )
        turned = _with(run, index, failed, status="compensating", failure=failure, wake=0.0)
        return _decide(turned, now)
    if isinstance(event, Unknown):
        return _unknown(run, step, event.error, now)
    raise UsageError(f"saga run {run.id}: {type(event).__name__} while running a step")


def _backward(run: Run, step: StepState, event: Event, now: float) -> Transition:
    index = run.cursor
    if isinstance(event, Undone):
        undone = replace(step, phase="undone", undo_error=None, undo_ended=now)
        return _decide(_with(run, index, undone, cursor=index - 1, wake=0.0), now)
    if isinstance(event, UndoFailed):
        plan = run.plan[index]
        failing = replace(step, undo_error=event.error)
        limit = (plan.undo_attempts or 0) + _granted(step, undo=True)
        if step.undo_attempts >= limit:
            note = f"{plan.name}: compensation failed {step.undo_attempts} times: {event.error}"
            return _stuck(_with(run, index, failing), note, now)
        wake = now + plan.undo_backoff.ceiling(step.undo_attempts)
        return Transition(_with(run, index, failing, wake=wake, updated=now), Wait(wake))
    raise UsageError(f"saga run {run.id}: {type(event).__name__} while compensating")


def _unknown(run: Run, step: StepState, error: str, now: float) -> Transition:
    """An attempt of the step at the cursor ended without a known outcome."""
    index = run.cursor
    plan = run.plan[index]
    if step.attempts < plan.attempts + _granted(step, undo=False):
        waiting = replace(step, phase="waiting", error=error)
        wake = now + plan.backoff.ceiling(step.attempts)
        return Transition(_with(run, index, waiting, wake=wake, updated=now), Wait(wake))
    failure = Failure(step=plan.name, detail=f"{error} (after {step.attempts} attempts)")
    if plan.local:
        # A local step's transaction rolled back: it did nothing, as a final failure.
        failed = replace(step, phase="failed", error=error, ended=now)
        turned = _with(run, index, failed, status="compensating", failure=failure, wake=0.0)
        return _decide(turned, now)
    if plan.undo_attempts is None:
        note = f"{plan.name}: outcome unknown after {step.attempts} attempts, and no compensation"
        return _stuck(_with(run, index, replace(step, error=error)), note, now)
    # It may have happened: compensate it too (its compensation finds nothing to undo if not).
    unsure = replace(step, phase="started", error=error, ended=now)
    return _decide(_with(run, index, unsure, status="compensating", failure=failure), now)


def _decide(run: Run, now: float) -> Transition:
    """The next action from the run as it stands, with the run that announces it."""
    if run.status in ("completed", "compensated", "stuck"):
        return Transition(run, Finish(run.status))
    if run.status == "running":
        return _next_forward(run, now)
    return _next_backward(run, now)


def _next_forward(run: Run, now: float) -> Transition:
    index = run.cursor
    if index >= len(run.plan):
        return Transition(replace(run, status="completed", updated=now), Finish("completed"))
    step = run.steps[index]
    if step.phase == "started":  # found after a crash: the attempt's outcome is unknown
        return _unknown(run, step, "interrupted", now)
    if step.phase == "waiting" and now < run.wake:
        return Transition(run, Wait(run.wake))
    started = replace(
        step,
        phase="started",
        attempts=step.attempts + 1,
        started=step.started if step.started is not None else now,
    )
    return Transition(
        _with(run, index, started, wake=0.0, updated=now), RunStep(index, started.attempts)
    )


def _next_backward(run: Run, now: float) -> Transition:
    index = _to_undo(run)
    if index < 0:
        return Transition(
            replace(run, status="compensated", cursor=-1, updated=now), Finish("compensated")
        )
    step = run.steps[index]
    plan = run.plan[index]
    if step.phase == "undoing":
        if now < run.wake and index == run.cursor:
            return Transition(run, Wait(run.wake))
        limit = (plan.undo_attempts or 0) + _granted(step, undo=True)
        if step.undo_attempts >= limit:  # found after a crash in its last attempt
            note = f"{plan.name}: compensation interrupted after {step.undo_attempts} attempts"
            return _stuck(replace(run, cursor=index), note, now)
    undoing = replace(
        step,
        phase="undoing",
        undo_attempts=step.undo_attempts + 1,
        undo_started=step.undo_started if step.undo_started is not None else now,
    )
    return Transition(
        _with(run, index, undoing, cursor=index, wake=0.0, updated=now),
        Compensate(index, undoing.undo_attempts),
    )


def _to_undo(run: Run) -> int:
    """The latest step at or before the cursor that may have done something to undo, or -1."""
    for index in range(min(run.cursor, len(run.plan) - 1), -1, -1):
        if run.plan[index].undo_attempts is None:
            continue  # nothing to undo: a read, a local step
        if run.steps[index].phase in ("done", "started", "waiting", "undoing"):
            return index
    return -1


def _retried(run: Run) -> Run:
    """A stuck run set going again: its stuck step gets as many attempts again as at first."""
    if run.status != "stuck":
        raise UsageError(f"saga run {run.id} is {run.status}, not stuck: nothing to retry")
    index = run.cursor
    step = run.steps[index]
    if step.phase == "undoing":
        granted = replace(step, undo_granted=step.undo_attempts)
        return _with(run, index, granted, status="compensating", wake=0.0, note=None)
    # A step whose outcome stayed unknown, with no compensation: try it again.
    granted = replace(step, phase="waiting", granted=step.attempts)
    return _with(run, index, granted, status="running", wake=0.0, note=None)


def _stuck(run: Run, note: str, now: float) -> Transition:
    return Transition(replace(run, status="stuck", note=note, updated=now), Finish("stuck"))


def _granted(step: StepState, *, undo: bool) -> int:
    return step.undo_granted if undo else step.granted


def _with(run: Run, index: int, step: StepState, **changes: Any) -> Run:
    steps = (*run.steps[:index], step, *run.steps[index + 1 :])
    return replace(run, steps=steps, **changes)
