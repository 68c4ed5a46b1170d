"""The saga run machine: direct cases, and properties over any outcomes and crashes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.errors import UsageError
from meshkit.policy import Backoff
from meshkit.saga import (
    Compensate,
    Failed,
    Finish,
    Resume,
    Retry,
    Run,
    RunStep,
    StepPlan,
    StepState,
    Succeeded,
    Transition,
    UndoFailed,
    Undone,
    Unknown,
    Wait,
    advance,
)

QUICK = Backoff(initial=1.0, maximum=4.0)


def plan(name: str, *, attempts: int = 3, undo: int | None = 3, local: bool = False) -> StepPlan:
    return StepPlan(
        name=name,
        attempts=attempts,
        backoff=QUICK,
        undo_attempts=undo,
        undo_backoff=QUICK,
        local=local,
    )


def fresh(*plans: StepPlan) -> Run:
    return Run(id="r1", saga="s", plan=plans, steps=tuple(StepState() for _ in plans))


def test_a_new_run_starts_its_first_step_and_announces_it() -> None:
    """The first transition marks step 0 started (attempt 1) before asking to run it."""
    run, action = advance(fresh(plan("a"), plan("b")), Resume(), 10.0)
    assert action == RunStep(0, 1)
    assert run.steps[0].phase == "started"
    assert run.steps[0].attempts == 1
    assert run.steps[0].started == 10.0


def test_a_run_whose_steps_succeed_completes_with_their_results() -> None:
    """Each success records the result and starts the next step; the last completes the run."""
    run, _ = advance(fresh(plan("a"), plan("b")), Resume(), 0.0)
    run, action = advance(run, Succeeded({"id": 7}), 1.0)
    assert action == RunStep(1, 1)
    run, action = advance(run, Succeeded(None), 2.0)
    assert action == Finish("completed")
    assert run.status == "completed"
    assert run.steps[0].result == {"id": 7}


def test_a_final_failure_compensates_the_steps_before_it_latest_first() -> None:
    """A StepFailed step is not undone; the done steps are, in reverse order."""
    run, _ = advance(fresh(plan("a"), plan("b"), plan("c")), Resume(), 0.0)
    run, _ = advance(run, Succeeded(1), 0.0)
    run, _ = advance(run, Succeeded(2), 0.0)
    run, action = advance(run, Failed("declined", 402, {"code": "x"}), 0.0)
    assert action == Compensate(1, 1)
    assert run.status == "compensating"
    assert run.failure is not None
    assert (run.failure.step, run.failure.status, run.failure.final) == ("c", 402, True)
    assert run.steps[2].phase == "failed"
    run, action = advance(run, Undone(), 0.0)
    assert action == Compensate(0, 1)
    run, action = advance(run, Undone(), 0.0)
    assert action == Finish("compensated")
    assert [step.phase for step in run.steps] == ["undone", "undone", "failed"]


def test_a_failure_of_the_first_step_ends_compensated_at_once() -> None:
    """Nothing was done, so there is nothing to undo."""
    run, _ = advance(fresh(plan("a"), plan("b")), Resume(), 0.0)
    run, action = advance(run, Failed("out of stock", 409), 0.0)
    assert action == Finish("compensated")


def test_an_unknown_outcome_waits_its_backoff_then_tries_again() -> None:
    """The wait is logged (the run changes), and the retry counts a second attempt."""
    run, _ = advance(fresh(plan("a")), Resume(), 0.0)
    waiting, action = advance(run, Unknown("timed out"), 5.0)
    assert action == Wait(6.0)
    assert waiting.steps[0].phase == "waiting"
    assert advance(waiting, Resume(), 5.5) == Transition(waiting, Wait(6.0))
    run, action = advance(waiting, Resume(), 6.0)
    assert action == RunStep(0, 2)


def test_a_step_whose_outcome_stays_unknown_is_compensated_itself() -> None:
    """It may have happened: its compensation runs, then the earlier steps'."""
    run, _ = advance(fresh(plan("a"), plan("b", attempts=1)), Resume(), 0.0)
    run, _ = advance(run, Succeeded(1), 0.0)
    run, action = advance(run, Unknown("503"), 0.0)
    assert action == Compensate(1, 1)
    assert run.failure is not None
    assert not run.failure.final


def test_an_unknown_step_without_compensation_is_stuck() -> None:
    """Nothing can undo it, and nothing says whether it happened: a person must decide."""
    run, _ = advance(fresh(plan("a", attempts=1, undo=None)), Resume(), 0.0)
    run, action = advance(run, Unknown("503"), 0.0)
    assert action == Finish("stuck")
    assert run.note is not None
    assert "no compensation" in run.note


def test_a_local_step_that_keeps_failing_is_not_undone() -> None:
    """Its transaction rolled back each time: the steps before it are undone, it is not."""
    run, _ = advance(fresh(plan("a"), plan("b", attempts=1, undo=None, local=True)), Resume(), 0)
    run, _ = advance(run, Succeeded(1), 0.0)
    run, action = advance(run, Unknown("database locked"), 0.0)
    assert action == Compensate(0, 1)
    assert run.steps[1].phase == "failed"


def test_a_compensation_that_keeps_failing_leaves_the_run_stuck_until_retried() -> None:
    """After its attempts the run is stuck; Retry gives it its attempts again."""
    run, _ = advance(fresh(plan("a", undo=2), plan("b")), Resume(), 0.0)
    run, _ = advance(run, Succeeded(1), 0.0)
    run, action = advance(run, Failed("no"), 0.0)
    assert action == Compensate(0, 1)
    run, action = advance(run, UndoFailed("down"), 0.0)
    assert isinstance(action, Wait)
    run, action = advance(run, Resume(), action.until)
    assert action == Compensate(0, 2)
    run, action = advance(run, UndoFailed("still down"), 9.0)
    assert action == Finish("stuck")
    assert run.status == "stuck"
    run, action = advance(run, Retry(), 10.0)
    assert action == Compensate(0, 3)
    run, action = advance(run, Undone(), 10.0)
    assert action == Finish("compensated")


def test_retrying_a_run_that_is_not_stuck_is_refused() -> None:
    """Retry is for stuck runs only."""
    run, _ = advance(fresh(plan("a")), Resume(), 0.0)
    with pytest.raises(UsageError, match="not stuck"):
        advance(run, Retry(), 0.0)


def test_an_outcome_for_a_waiting_run_is_refused() -> None:
    """The driver may only report the outcome of the action it was given."""
    run, _ = advance(fresh(plan("a")), Resume(), 0.0)
    waiting, _ = advance(run, Unknown("x"), 0.0)
    with pytest.raises(UsageError):
        advance(waiting, Succeeded(1), 0.0)


def test_a_step_found_started_after_a_crash_counts_as_an_unknown_attempt() -> None:
    """Resume of a logged 'started' step: another attempt, after its backoff."""
    run, _ = advance(fresh(plan("a", attempts=2)), Resume(), 0.0)
    run, action = advance(run, Resume(), 0.0)
    assert action == Wait(1.0)
    run, action = advance(run, Resume(), 1.0)
    assert action == RunStep(0, 2)
    run, action = advance(run, Resume(), 2.0)  # crashed again, attempts spent
    assert action == Compensate(0, 1)


# -- properties ------------------------------------------------------------------------

# What happens to one action: "ok", "final" (fails for good, doing nothing),
# "lost" (did it, answer lost), "nothing" (failed without doing it),
# "crash_before"/"crash_after" (the driver dies before or after the effect).
FORWARD = st.sampled_from(["ok", "final", "lost", "nothing", "crash_before", "crash_after"])
BACKWARD = st.sampled_from(["ok", "fail", "crash_before", "crash_after"])


@dataclass
class World:
    """The services' side: each step's effect is keyed, so repeats change nothing."""

    done: set[int] = field(default_factory=set)
    undone: list[int] = field(default_factory=list)
    started: set[int] = field(default_factory=set)
    compensated_calls: set[int] = field(default_factory=set)
    logged_undone: set[int] = field(default_factory=set)

    def act(self, index: int) -> None:
        self.done.add(index)

    def undo(self, index: int) -> None:
        self.compensated_calls.add(index)
        if index in self.done and index not in self.undone:
            self.undone.append(index)


@st.composite
def plans(draw: st.DrawFn) -> tuple[StepPlan, ...]:
    count = draw(st.integers(min_value=1, max_value=5))
    return tuple(
        plan(
            f"s{index}",
            attempts=draw(st.integers(min_value=1, max_value=3)),
            undo=draw(st.sampled_from([None, 1, 2, 3])),
        )
        for index in range(count)
    )


def drive(transition: Transition, forward: list[str], backward: list[str], world: World) -> Run:
    """Carry out the machine's actions as a driver would, crashing where told to.

    The services keep each step's first answer under its idempotency key:
    once a step took effect, every repeat of it succeeds.
    """
    now = 0.0
    for _ in range(500):
        logged, action = transition  # write-ahead: what is logged is what was decided
        if isinstance(action, Finish):
            return logged
        if isinstance(action, Wait):
            now = action.until
            transition = advance(logged, Resume(), now)
            continue
        if isinstance(action, RunStep):
            world.started.add(action.step)
            outcome = forward.pop(0) if forward else "ok"
            if action.step in world.done and not outcome.startswith("crash"):
                outcome = "ok"  # the first answer, replayed
            if outcome in ("ok", "lost", "crash_after"):
                world.act(action.step)
            if outcome.startswith("crash"):
                transition = advance(logged, Resume(), now)  # a new process reads the log
                continue
            event = {"ok": Succeeded(action.step), "final": Failed("no")}.get(
                outcome, Unknown(outcome)
            )
        else:
            assert isinstance(action, Compensate)
            assert action.step in world.started, "a step that never started is compensated"
            assert action.step not in world.logged_undone, "a step is compensated twice"
            outcome = backward.pop(0) if backward else "ok"
            if outcome in ("ok", "crash_after"):
                world.undo(action.step)
            if outcome.startswith("crash"):
                transition = advance(logged, Resume(), now)
                continue
            event = Undone() if outcome == "ok" else UndoFailed("down")
            if outcome == "ok":
                world.logged_undone.add(action.step)
        transition = advance(logged, event, now)
    raise AssertionError("the run did not finish in 500 actions")


@settings(max_examples=400, deadline=None)
@given(plans(), st.lists(FORWARD, max_size=20), st.lists(BACKWARD, max_size=20))
def test_every_run_completes_or_undoes_every_done_step_once_latest_first(
    steps: tuple[StepPlan, ...], forward: list[str], backward: list[str]
) -> None:
    """Whatever the outcomes and crashes, a run completes, or ends compensated with each
    step that took effect (and can be undone) undone exactly once, in reverse order;
    a stuck run, once retried with everything working, reaches one of those ends."""
    world = World()
    run = drive(advance(fresh(*steps), Resume(), 0.0), forward, backward, world)
    for _ in range(10):
        if run.status != "stuck":
            break
        run = drive(advance(run, Retry(), 0.0), [], [], world)
    assert run.status in ("completed", "compensated")
    if run.status == "completed":
        assert world.done == set(range(len(steps)))
        assert world.undone == []
        return
    undoable = {index for index in world.done if steps[index].undo_attempts is not None}
    assert sorted(world.undone) == sorted(undoable)
    assert world.undone == sorted(world.undone, reverse=True)
    assert world.compensated_calls <= world.started


@settings(max_examples=200, deadline=None)
@given(plans(), st.lists(FORWARD, max_size=20), st.lists(BACKWARD, max_size=20))
def test_a_final_failure_is_never_undone(
    steps: tuple[StepPlan, ...], forward: list[str], backward: list[str]
) -> None:
    """A step that failed for good did nothing: its compensation is never called."""
    world = World()
    run = drive(advance(fresh(*steps), Resume(), 0.0), forward, backward, world)
    for index, state in enumerate(run.steps):
        if state.phase == "failed":
            assert index not in world.compensated_calls
