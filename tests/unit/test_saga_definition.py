"""Defining sagas: steps, compensations, and what a step's answer means."""

from __future__ import annotations

import pytest

from meshkit.errors import ConfigError
from meshkit.http import Problem, Response
from meshkit.saga import Saga, SagaRunner, SqliteSagaStore, StepContext, StepFailed, outcome
from meshkit.saga._definition import UnknownOutcome


def answer(status: int, body: bytes = b"{}") -> Response:
    return Response(status, [(b"content-type", b"application/json")], body)


def test_a_success_is_returned_as_it_is() -> None:
    """2xx: the response itself, for the step to read."""
    ok = answer(201, b'{"id": 7}')
    assert outcome(ok, final=(409,)) is ok


def test_a_final_status_is_a_step_failure_with_the_problem_s_members() -> None:
    """A 409 named final raises StepFailed with the detail, the status and the members."""
    body = Problem(409, "not enough stock", extensions={"short": [1]}).encode()
    with pytest.raises(StepFailed) as failed:
        outcome(answer(409, body), final=(409, 402))
    assert (failed.value.detail, failed.value.status) == ("not enough stock", 409)
    assert failed.value.data == {"short": [1]}


@pytest.mark.parametrize("status", [500, 503, 429, 409])
def test_any_other_status_is_an_unknown_outcome(status: int) -> None:
    """Not named final: the step is tried again."""
    with pytest.raises(UnknownOutcome, match=str(status)):
        outcome(answer(status), final=(402,))


def test_steps_must_be_async_and_named_once() -> None:
    """A plain function or a second step of one name is refused when the saga is defined."""
    saga = Saga("s")

    def plain(ctx: StepContext) -> None: ...

    with pytest.raises(ConfigError, match="async def"):
        saga.step(plain)  # type: ignore[arg-type]

    @saga.step
    async def twice(ctx: StepContext) -> None: ...

    with pytest.raises(ConfigError, match="already"):

        @saga.step(name="twice")
        async def again(ctx: StepContext) -> None: ...


def test_a_step_has_one_compensation_and_a_local_step_none() -> None:
    """Compensating twice, or a local step, is refused."""
    saga = Saga("s")

    @saga.step
    async def act(ctx: StepContext) -> None: ...

    @act.compensate
    async def undo(ctx: StepContext) -> None: ...

    with pytest.raises(ConfigError, match="already"):
        act.compensate(undo)

    @saga.local_step
    def write(tx: object, ctx: StepContext) -> None: ...

    with pytest.raises(ConfigError, match="local"):
        write.compensate(undo)


@pytest.mark.parametrize(
    ("options", "key"),
    [({"timeout": 0}, "timeout"), ({"attempts": 0}, "attempts"), ({"backoff": 1}, "backoff")],
)
def test_bad_step_options_name_the_option(options: dict[str, object], key: str) -> None:
    """Each bad option is a ConfigError naming it."""
    with pytest.raises(ConfigError) as refused:
        Saga("s").step(**options)  # type: ignore[call-overload]
    assert refused.value.key == key


def test_a_runner_refuses_an_empty_saga_and_two_of_one_name(tmp_path: object) -> None:
    """Both are mistakes of the definition, found when the runner is made."""
    store = SqliteSagaStore(f"{tmp_path}/log.db")
    with pytest.raises(ConfigError, match="no steps"):
        SagaRunner(store, [Saga("empty")])
    saga = Saga("twice")

    @saga.step
    async def act(ctx: StepContext) -> None: ...

    with pytest.raises(ConfigError, match="two sagas"):
        SagaRunner(store, [saga, saga])
