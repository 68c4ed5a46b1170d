"""What a saga run is: its plan, the state of each step, and the run's own state.

A run is a frozen value. The machine (``_machine.advance``) takes one and an
event and returns the next one with the action it announces; the store
writes each new run before the driver carries the action out, so the run
as stored is always the last thing the driver decided, never less.

A step moves through these phases (``undo`` is its compensation)::

    pending ─► started ─┬─► done ─► undoing ─► undone
                 ▲      ├─► waiting ─┘ (the outcome was unknown: try again)
                 └──────┤
                        └─► failed   (a final failure: it did nothing)

A run is ``running`` while it goes forward, ``compensating`` while it
undoes, and ends ``completed`` or ``compensated``. A run that cannot go on
without a person, a compensation that kept failing or a step whose outcome
stayed unknown and that has nothing to undo it, is ``stuck``: it keeps its
place in the log, and ``retry`` sets it going again.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import msgspec

from meshkit.policy import Backoff

__all__ = [
    "ACTIVE",
    "ENDED",
    "Failure",
    "Phase",
    "Run",
    "RunChange",
    "Status",
    "StepPlan",
    "StepState",
]

Status = Literal["running", "compensating", "completed", "compensated", "stuck"]
Phase = Literal["pending", "started", "waiting", "done", "failed", "undoing", "undone"]

# Runs a driver works on, and runs that are over for good.
ACTIVE: Final = frozenset({"running", "compensating"})
ENDED: Final = frozenset({"completed", "compensated"})


class StepPlan(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the machine must know of one step: its name and how often to try it.

    ``attempts`` counts the first try; ``undo_attempts`` likewise for the
    compensation (``None`` when the step has none). ``local`` steps run in
    the store's transaction, so their outcome is never unknown.
    """

    name: str
    attempts: int
    backoff: Backoff
    undo_attempts: int | None
    undo_backoff: Backoff
    local: bool = False


class StepState(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One step of one run, as the log holds it.

    ``attempts`` and ``undo_attempts`` count the attempts started (a crash
    in the middle of one counts); ``result`` is what the action returned
    (as JSON holds it); ``error`` the action's last failure and ``undo_error``
    the compensation's; times are Unix seconds.
    ``granted`` and ``undo_granted`` are the attempts already spent when a
    person last retried the run: each retry gives the step its attempts again.
    """

    phase: Phase = "pending"
    attempts: int = 0
    undo_attempts: int = 0
    result: Any = None
    error: str | None = None
    started: float | None = None
    ended: float | None = None
    undo_started: float | None = None
    undo_ended: float | None = None
    granted: int = 0
    undo_granted: int = 0
    undo_error: str | None = None


class Failure(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Why a run turned back: the step, what it said, and (for a final failure) its status.

    ``final`` is true for a failure the step declared (``StepFailed``): a
    declined card, stock too short. ``status`` and ``data`` are what it
    gave with it (an HTTP status, extension members), for the caller.
    """

    step: str
    detail: str
    final: bool = False
    status: int | None = None
    data: Any = None


class Run(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a saga: ``steps[i]`` is the state of ``plan[i]``.

    ``cursor`` is the step being run, or the one being undone while
    compensating; ``wake`` (Unix seconds) the time before which the next
    attempt must not start; ``failure`` why a run compensates; ``note``
    why it is stuck; ``trace_context`` the W3C trace context it was begun
    in (``traceparent``...), so that its spans join that trace.
    """

    id: str
    saga: str
    plan: tuple[StepPlan, ...]
    status: Status = "running"
    cursor: int = 0
    steps: tuple[StepState, ...] = ()
    input: Any = None
    wake: float = 0.0
    failure: Failure | None = None
    note: str | None = None
    created: float = 0.0
    updated: float = 0.0
    trace_context: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """Completed or compensated: nothing will ever happen to it again."""
        return self.status in ENDED


class RunChange(msgspec.Struct, frozen=True, kw_only=True):
    """A run began (``status`` running) or came to rest (completed, compensated, stuck),
    as instrumentation sees it.

    ``duration`` is the seconds from the run's creation to its rest (0 when
    it began), by the log's times, so a run resumed by another runner is
    timed whole; ``trace_id`` is the sampled span current then, if any.
    """

    saga: str
    run_id: str
    status: Status
    duration: float = 0.0
    trace_id: str | None = None
