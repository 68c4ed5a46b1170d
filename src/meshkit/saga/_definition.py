"""Defining a saga: its steps in order, each with an action and perhaps a compensation.

::

    order = Saga("order")


    @order.step(timeout=2.0)
    async def reserve(ctx: StepContext) -> dict[str, Any]:
        answer = await client.post(
            "inventory", "/reservations", json=..., idempotency_key=ctx.idempotency_key
        )
        return outcome(answer, final=(409,)).json()


    @reserve.compensate
    async def release(ctx: StepContext) -> None: ...


    @order.local_step
    def confirm(tx: sqlite3.Connection, ctx: StepContext) -> None: ...

An action that returns succeeded; its result (anything JSON can hold) is
logged and handed to later steps (``ctx.results["reserve"]``) and to its
compensation (``ctx.result``). One that raises ``StepFailed`` failed for
good and did nothing: the steps before it are compensated, latest first.
Anything else it raises, a timeout included, leaves its outcome unknown:
it is tried again, with the same idempotency key, until its attempts are
spent; then it is compensated too, so its compensation must treat "nothing
to undo" as done. A compensation that raises is tried again; when its
attempts are spent the run is stuck, for a person to retry.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, overload

from meshkit.errors import ConfigError
from meshkit.http import Problem, Response
from meshkit.policy import Backoff
from meshkit.policy import _check as check
from meshkit.saga._model import StepPlan

__all__ = ["Saga", "Step", "StepContext", "StepFailed", "outcome"]

Action = Callable[["StepContext"], Awaitable[Any]]
LocalAction = Callable[[Any, "StepContext"], Any]
Compensation = Callable[["StepContext"], Awaitable[Any]]
EndHook = Callable[[Any, Any], Any]

# Forward steps retry briefly: a step whose outcome stays unknown this long
# is undone. Compensations retry for much longer (about an hour, with the
# backoff capped at a minute): a run only becomes stuck, needing a person,
# when undoing has kept failing through an outage.
_ATTEMPTS = 8
_BACKOFF = Backoff(initial=0.2, maximum=5.0)
_UNDO_ATTEMPTS = 70
_UNDO_BACKOFF = Backoff(initial=0.5, maximum=60.0)


class StepFailed(Exception):  # noqa: N818 (a step's verdict, not a fault of meshkit's)
    """Raised by a step to say it failed for good and did nothing: compensate now.

    ``status`` and ``data`` travel with the run's ``failure`` to whoever
    reads it (an HTTP status such as 402 or 409, a problem's extension
    members).
    """

    def __init__(self, detail: str, *, status: int | None = None, data: Any = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.data = data


def outcome(response: Response, *, final: tuple[int, ...] = ()) -> Response:
    """``response`` if it succeeded (2xx); else raise what it means for a saga step.

    A status in ``final`` raises ``StepFailed`` with the problem's detail
    and members (RFC 9457): the peer refused for good. Any other status
    raises ``UnknownOutcome``: the step is tried again.
    """
    if response.is_success:
        return response
    if response.status_code in final:
        problem = Problem.read(response.status_code, response.body)
        raise StepFailed(problem.detail, status=response.status_code, data=problem.extensions)
    raise UnknownOutcome(f"answered {response.status_code}")


class UnknownOutcome(Exception):  # noqa: N818 (a verdict, like StepFailed)
    """The step's peer answered in a way that says nothing for sure: try again."""


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a step's action or compensation knows of its run.

    ``idempotency_key`` is the same for every attempt of the action (and
    another, the same for every attempt, for the compensation): send it
    with the step's request so a repeat is recognised. ``results`` holds
    the results of the steps done so far; ``result`` is this step's own,
    for its compensation (``None`` if its outcome was never known).
    """

    run_id: str
    saga: str
    step: str
    attempt: int
    idempotency_key: str
    input: Any
    results: Mapping[str, Any]
    result: Any = None
    _after_commit: list[Callable[[], object]] = field(default_factory=list, repr=False)

    def on_commit(self, callback: Callable[[], object]) -> None:
        """In a local step: call ``callback`` once its transaction has committed."""
        self._after_commit.append(callback)


@dataclass(slots=True)
class Step:
    """One step of a saga (made by ``Saga.step`` or ``Saga.local_step``)."""

    name: str
    action: Action | LocalAction
    local: bool
    timeout: float
    attempts: int
    backoff: Backoff
    undo: Compensation | None = None
    undo_timeout: float = 10.0
    undo_attempts: int = _UNDO_ATTEMPTS
    undo_backoff: Backoff = _UNDO_BACKOFF

    @overload
    def compensate(self, function: Compensation) -> Compensation: ...

    @overload
    def compensate(
        self,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
        backoff: Backoff | None = None,
    ) -> Callable[[Compensation], Compensation]: ...

    def compensate(
        self,
        function: Compensation | None = None,
        *,
        timeout: float | None = None,
        attempts: int | None = None,
        backoff: Backoff | None = None,
    ) -> Compensation | Callable[[Compensation], Compensation]:
        """Decorate the step's compensation: an async function of a ``StepContext``."""

        seconds = None if timeout is None else check.seconds("timeout", timeout)
        tries = None if attempts is None else check.whole("attempts", attempts, minimum=1)
        waits = None if backoff is None else check.instance("backoff", backoff, Backoff)

        def register(undo: Compensation) -> Compensation:
            if self.local:
                raise ConfigError("compensate", f"{self.name} is local: it has nothing to undo")
            if self.undo is not None:
                raise ConfigError("compensate", f"{self.name} has a compensation already")
            _check_async("compensation", undo)
            self.undo = undo
            self.undo_timeout = seconds or self.undo_timeout
            self.undo_attempts = tries or self.undo_attempts
            self.undo_backoff = waits or self.undo_backoff
            return undo

        return register(function) if function is not None else register

    def plan(self) -> StepPlan:
        return StepPlan(
            name=self.name,
            attempts=self.attempts,
            backoff=self.backoff,
            undo_attempts=self.undo_attempts if self.undo is not None else None,
            undo_backoff=self.undo_backoff,
            local=self.local,
        )


class Saga:
    """A saga named ``name``: steps added in order with ``step`` and ``local_step``.

    ``on_end`` (a decorator) adds local work to the transaction that logs
    the run's end, completed or compensated: the order's final status, say.
    """

    def __init__(self, name: str) -> None:
        self.name = check.text("name", name)
        self.steps: list[Step] = []
        self.end_hook: EndHook | None = None

    @overload
    def step(self, function: Action) -> Step: ...

    @overload
    def step(
        self,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        attempts: int = _ATTEMPTS,
        backoff: Backoff = _BACKOFF,
    ) -> Callable[[Action], Step]: ...

    def step(
        self,
        function: Action | None = None,
        *,
        name: str | None = None,
        timeout: float = 10.0,
        attempts: int = _ATTEMPTS,
        backoff: Backoff = _BACKOFF,
    ) -> Step | Callable[[Action], Step]:
        """Decorate the next step's action: an async function of a ``StepContext``.

        Each attempt may take ``timeout`` seconds; ``attempts`` counts the
        first, with ``backoff`` between them.
        """

        # Checked here, so a bad option is reported where it is written.
        seconds = check.seconds("timeout", timeout)
        tries = check.whole("attempts", attempts, minimum=1)
        waits = check.instance("backoff", backoff, Backoff)

        def register(action: Action) -> Step:
            _check_async("step", action)
            return self._add(
                Step(
                    name=name or action.__name__,
                    action=action,
                    local=False,
                    timeout=seconds,
                    attempts=tries,
                    backoff=waits,
                )
            )

        return register(function) if function is not None else register

    def local_step(
        self, function: LocalAction | None = None, /, *, name: str | None = None, attempts: int = 3
    ) -> Any:
        """Decorate a step whose work is in the service's own database: ``f(tx, ctx)``.

        It runs in the transaction that logs its outcome, so it either did
        its work and is logged done, or did nothing. For SQLite it is a
        plain function (it runs on the log's writer thread); for
        PostgreSQL, a coroutine function of an asyncpg connection.
        """

        tries = check.whole("attempts", attempts, minimum=1)

        def register(action: LocalAction) -> Step:
            return self._add(
                Step(
                    name=name or action.__name__,
                    action=action,
                    local=True,
                    timeout=0.0,
                    attempts=tries,
                    backoff=_BACKOFF,
                )
            )

        return register(function) if function is not None else register

    def on_end(self, hook: EndHook) -> EndHook:
        """Decorate local work ``f(tx, run)`` done in the transaction that logs the run's end."""
        if self.end_hook is not None:
            raise ConfigError("on_end", f"saga {self.name} has an on_end already")
        self.end_hook = hook
        return hook

    def index(self, name: str) -> int:
        for number, step in enumerate(self.steps):
            if step.name == name:
                return number
        raise KeyError(name)

    def _add(self, step: Step) -> Step:
        if any(other.name == step.name for other in self.steps):
            raise ConfigError("name", f"saga {self.name} has a step {step.name!r} already")
        self.steps.append(step)
        return step

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, steps={[step.name for step in self.steps]})"


def _check_async(what: str, function: Callable[..., Any]) -> None:
    if not inspect.iscoroutinefunction(function):
        raise ConfigError(what, f"{getattr(function, '__name__', function)!r} must be async def")
