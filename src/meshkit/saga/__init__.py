"""Sagas: a business transaction across services, every step undone in reverse if one fails.

Define a ``Saga`` with its steps (``Saga.step``, ``Step.compensate``,
``Saga.local_step``), run it with a ``SagaRunner`` over a store, the saga
log in the service's own database (``SqliteSagaStore``; PostgreSQL in
``meshkit.saga.postgres``). ``advance`` is the pure machine the runner drives.
"""

from meshkit.saga._definition import (
    Saga,
    Step,
    StepContext,
    StepFailed,
    UnknownOutcome,
    outcome,
)
from meshkit.saga._machine import (
    Compensate,
    Failed,
    Finish,
    Resume,
    Retry,
    RunStep,
    Succeeded,
    Transition,
    UndoFailed,
    Undone,
    Unknown,
    Wait,
    advance,
)
from meshkit.saga._model import Failure, Run, Status, StepPlan, StepState
from meshkit.saga._runner import SagaRunner
from meshkit.saga._sqlite import SqliteSagaStore
from meshkit.saga._store import Claimed, SagaStore

__all__ = [
    "Claimed",
    "Compensate",
    "Failed",
    "Failure",
    "Finish",
    "Resume",
    "Retry",
    "Run",
    "RunStep",
    "Saga",
    "SagaRunner",
    "SagaStore",
    "SqliteSagaStore",
    "Status",
    "Step",
    "StepContext",
    "StepFailed",
    "StepPlan",
    "StepState",
    "Succeeded",
    "Transition",
    "UndoFailed",
    "Undone",
    "Unknown",
    "UnknownOutcome",
    "Wait",
    "advance",
    "outcome",
]
