"""API composition: one answer made of several calls run at once, within one budget.

``compose(*parts, budget=...)`` starts every part at once and gives each
until its own deadline: its ``timeout`` from the start, never later than
the end of the budget. The budget is ``budget`` seconds, or the time left
of the request being served (``current_deadline()``), whichever ends
first. A part's calls through ``ServiceClient`` inherit the part's
deadline, so the services it calls are told how long they have.

A part succeeds when its call returns and its ``check``, if it has one,
accepts the answer. It fails when the call raises, the check refuses the
answer, or its deadline passes first (it is then cancelled):

- a required part that fails fails the whole: the parts still running are
  cancelled, and ``CompositionError`` names the part and why;
- an optional part that fails is left out, and ``Composition.missing``
  says why, so the caller can answer with what it has and say what is not
  there (a partial answer, as in Chris Richardson's API composition pattern).

Cancelling the caller cancels every part, waits until they have stopped,
and goes on up: the caller's cancellation is never swallowed.

Time is read and waited on through the injected ``Clock``, not with
``asyncio.timeout`` (which runs on the event loop's time), so the same code
runs in fake time under ``meshkit.testing.FakeClock``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from meshkit._clock import Clock, SystemClock
from meshkit.errors import (
    CompositionError,
    DeadlineExceededError,
    InvalidArgumentError,
    MeshkitError,
)
from meshkit.observe import tracer
from meshkit.policy import DeadlineBudget
from meshkit.policy import _check as validate
from meshkit.service._deadline import current_deadline, use_deadline

__all__ = ["Composition", "Part", "compose"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Part(Generic[T]):
    """One call of a composition, and what it takes for its answer to count.

    ``call`` makes the call when the composition starts (a function of no
    arguments returning an awaitable: ``lambda: client.get("users", path)``).
    ``timeout`` is the most it may take, in seconds from the start; ``None``
    gives it the whole budget. A ``required`` part that fails fails the
    composition; an optional one is left out. ``check``, given the answer,
    returns why it cannot be used (``"answered 503"``), or ``None`` to
    accept it.

    Raises ``ConfigError`` for an empty name or a timeout that is not a
    positive number of seconds.
    """

    name: str
    call: Callable[[], Awaitable[T]]
    _: KW_ONLY
    timeout: float | None = None
    required: bool = True
    check: Callable[[T], str | None] | None = None

    def __post_init__(self) -> None:
        validate.text("name", self.name)
        if self.timeout is not None:
            validate.seconds("timeout", self.timeout)


@dataclass(frozen=True, slots=True)
class Composition:
    """What a composition gathered.

    ``parts`` holds the value of each part that succeeded, by name, in the
    order the parts were given; ``missing`` the reason for each optional
    part that did not. Both are read-only.
    """

    parts: Mapping[str, Any]
    missing: Mapping[str, str]

    @property
    def partial(self) -> bool:
        """Whether some optional part is missing."""
        return bool(self.missing)


async def compose(
    *parts: Part[Any],
    budget: float | None = None,
    clock: Clock | None = None,
) -> Composition:
    """Run ``parts`` at once within the budget; see the module docstring.

    ``budget`` is in seconds from now; without one, the deadline of the
    request being served is the budget, and with both the sooner ends it.

    Raises ``CompositionError`` when a required part fails, once the other
    parts have stopped; ``InvalidArgumentError`` when two parts share a name
    or there is neither a budget nor a request deadline; ``ConfigError`` for
    a budget that is not a positive number of seconds.
    """
    clock = clock or SystemClock()
    _check_names(parts)
    start = clock.monotonic()
    end = _end(start, budget)
    with tracer(_NAME).start_as_current_span(
        "compose", attributes={"meshkit.compose.parts": [part.name for part in parts]}
    ) as span:
        runs = [_Run.start(part, start, end) for part in parts]
        try:
            values, missing = await _settle(runs, clock)
        finally:
            await _stop(runs)
        if missing and span.is_recording():
            span.set_attribute("meshkit.compose.missing", sorted(missing))
    return Composition(
        MappingProxyType({part.name: values[part.name] for part in parts if part.name in values}),
        MappingProxyType({part.name: missing[part.name] for part in parts if part.name in missing}),
    )


_NAME = "meshkit.service"


def _check_names(parts: Iterable[Part[Any]]) -> None:
    seen: set[str] = set()
    for part in parts:
        if part.name in seen:
            raise InvalidArgumentError("parts", f"two parts are named {part.name!r}")
        seen.add(part.name)


def _end(now: float, budget: float | None) -> float:
    """When the composition must be over (monotonic seconds)."""
    ends = []
    if budget is not None:
        ends.append(now + validate.seconds("budget", budget))
    inherited = current_deadline()
    if inherited is not None:
        ends.append(inherited.expires_at - inherited.reserve)
    if not ends:
        raise InvalidArgumentError(
            "budget", "no request deadline is in force here: pass budget= in seconds"
        )
    return min(ends)


class _RefusedError(Exception):
    """A part's check refused its answer: ``reason`` is what the check said."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class _Run:
    """A part in flight: its task, its deadline, and what to say if it passes."""

    part: Part[Any]
    task: asyncio.Task[Any]
    expires_at: float
    too_late: str

    @classmethod
    def start(cls, part: Part[Any], start: float, end: float) -> _Run:
        if part.timeout is not None and start + part.timeout < end:
            expires_at, too_late = start + part.timeout, f"no answer within {part.timeout:g}s"
        else:
            expires_at = end
            too_late = f"no answer before the budget ran out ({max(0.0, end - start):.3g}s)"
        task = asyncio.create_task(_run(part, expires_at), name=f"compose {part.name}")
        return cls(part, task, expires_at, too_late)

    def outcome(self, now: float) -> tuple[Any, str | None, BaseException | None]:
        """``(value, None, None)`` if it succeeded, else ``(None, why, cause)``.

        Called once it is done or its deadline has passed; in the latter
        case it is cancelled here.
        """
        if not self.task.done():
            self.task.cancel()
            return None, self.too_late, None
        if self.task.cancelled():
            return None, "cancelled", None
        error = self.task.exception()
        if error is None:
            return self.task.result(), None, None
        if isinstance(error, DeadlineExceededError) and now >= self.expires_at:
            # The part's own calls keep its deadline too, and may give up a
            # moment before the composition does: the same reason either way.
            return None, self.too_late, error
        return None, _why(error), None if isinstance(error, _RefusedError) else error


async def _run(part: Part[T], expires_at: float) -> T:
    # The task runs in a copy of the caller's context: the part's deadline
    # becomes current for it alone, and reaches the services it calls; its
    # span is a child of the composition's.
    with (
        tracer(_NAME).start_as_current_span(
            f"part {part.name}", attributes={"meshkit.compose.required": part.required}
        ),
        use_deadline(DeadlineBudget(expires_at)),
    ):
        answer = await part.call()
        if part.check is not None:
            refusal = part.check(answer)
            if refusal is not None:
                raise _RefusedError(refusal)
    return answer


def _why(error: BaseException) -> str:
    if isinstance(error, _RefusedError):
        return error.reason
    said = str(error)
    if isinstance(error, MeshkitError) and said:
        return said  # meshkit's messages name what failed already
    return f"{type(error).__name__}: {said}" if said else type(error).__name__


async def _settle(runs: list[_Run], clock: Clock) -> tuple[dict[str, Any], dict[str, str]]:
    """Wait for each run until it is done or its deadline passes; values and reasons by name."""
    values: dict[str, Any] = {}
    missing: dict[str, str] = {}
    pending = list(runs)
    while pending:
        now = clock.monotonic()
        for run in [r for r in pending if r.task.done() or r.expires_at <= now]:
            pending.remove(run)
            value, why, cause = run.outcome(now)
            if why is None:
                values[run.part.name] = value
            elif run.part.required:
                raise CompositionError(run.part.name, why) from cause
            else:
                missing[run.part.name] = why
        if pending:
            wake = min(run.expires_at for run in pending)
            await _first_of([run.task for run in pending], clock.sleep(wake - now))
    return values, missing


async def _first_of(tasks: list[asyncio.Task[Any]], sleep: Awaitable[None]) -> None:
    """Until one of ``tasks`` is done or ``sleep`` ends."""
    timer = asyncio.ensure_future(sleep)
    try:
        await asyncio.wait([*tasks, timer], return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if timer.done() and not timer.cancelled():
        timer.result()  # a clock that cannot sleep raises here, not in a busy loop


async def _stop(runs: list[_Run]) -> None:
    """Cancel the runs still going and wait until every one has stopped.

    ``asyncio.wait`` raises the caller's own cancellation, if one comes
    while it waits, and leaves the tasks' outcomes alone.
    """
    running = [run.task for run in runs if not run.task.done()]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for run in runs:
        if run.task.done() and not run.task.cancelled():
            # Read, so that a part failing after the composition was decided
            # is not reported as an exception nobody retrieved.
            run.task.exception()
