"""meshkit.compose: parts run at once, within one budget, in fake time unless said otherwise."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit import Composition, Part, compose
from meshkit.errors import (
    CompositionError,
    ConfigError,
    DeadlineExceededError,
    InvalidArgumentError,
    PeerError,
    ServiceUnavailableError,
)
from meshkit.policy import DeadlineBudget
from meshkit.service import current_deadline
from meshkit.service._deadline import use_deadline
from meshkit.testing import FakeClock


class Calls:
    """Parts whose calls take fake time, recording when each started, ended or was cancelled."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.cancelled: set[str] = set()

    def answer(self, name: str, value: object, after: float) -> Callable[[], Awaitable[object]]:
        async def call() -> object:
            self.started[name] = self.clock.monotonic()
            try:
                await self.clock.sleep(after)
            except asyncio.CancelledError:
                self.cancelled.add(name)
                raise
            self.ended[name] = self.clock.monotonic()
            return value

        return call

    def fail(self, name: str, error: Exception, after: float) -> Callable[[], Awaitable[object]]:
        async def call() -> object:
            self.started[name] = self.clock.monotonic()
            await self.clock.sleep(after)
            raise error

        return call


def run(main: Callable[[FakeClock, Calls], Awaitable[Any]]) -> Any:
    clock = FakeClock()
    return clock.run(main(clock, Calls(clock)))  # type: ignore[arg-type]


def test_parts_run_at_once() -> None:
    """Three calls of 1 s each end together at 1 s, their values by name in the parts' order."""

    async def main(clock: FakeClock, calls: Calls) -> tuple[float, Composition]:
        result = await compose(
            Part("c", calls.answer("c", 3, after=1.0)),
            Part("a", calls.answer("a", 1, after=0.5)),
            Part("b", calls.answer("b", 2, after=1.0), required=False),
            budget=5.0,
            clock=clock,
        )
        assert calls.started == {"a": 0.0, "b": 0.0, "c": 0.0}
        return clock.monotonic(), result

    ended, result = run(main)
    assert ended == 1.0
    assert list(result.parts.items()) == [("c", 3), ("a", 1), ("b", 2)]
    assert result.missing == {}
    assert not result.partial


def test_a_required_part_that_fails_fails_the_whole_and_cancels_the_rest() -> None:
    """The error names the part and why, comes at the failure's time, and stops the others."""
    unavailable = ServiceUnavailableError("users", "no instance registered")

    async def main(clock: FakeClock, calls: Calls) -> None:
        with pytest.raises(CompositionError) as caught:
            await compose(
                Part("user", calls.fail("user", unavailable, after=0.2)),
                Part("product", calls.answer("product", {}, after=3.0)),
                Part("payment", calls.answer("payment", {}, after=3.0), required=False),
                budget=5.0,
                clock=clock,
            )
        assert clock.monotonic() == 0.2
        assert calls.cancelled == {"product", "payment"}
        error = caught.value
        assert (error.part, error.reason) == ("user", str(unavailable))
        assert str(error) == f"required part 'user' failed: {unavailable}"
        assert error.__cause__ is unavailable
        assert isinstance(error, PeerError)

    run(main)


def test_a_check_refuses_an_answer() -> None:
    """A required part whose check refuses its answer fails with the check's reason."""

    def ok(status: int) -> str | None:
        return None if status == 200 else f"answered {status}"

    async def main(clock: FakeClock, calls: Calls) -> None:
        with pytest.raises(CompositionError, match=r"'user' failed: answered 503$") as caught:
            await compose(
                Part("user", calls.answer("user", 503, after=0.1), check=ok),
                budget=1.0,
                clock=clock,
            )
        assert caught.value.__cause__ is None

    run(main)


def test_an_optional_part_out_of_time_is_missing() -> None:
    """It is cancelled at its own timeout, and the answer says which part and why."""

    async def main(clock: FakeClock, calls: Calls) -> tuple[float, Composition]:
        result = await compose(
            Part("user", calls.answer("user", "ada", after=0.2)),
            Part("payment", calls.answer("payment", {}, after=30.0), timeout=0.5, required=False),
            budget=2.0,
            clock=clock,
        )
        assert calls.cancelled == {"payment"}
        return clock.monotonic(), result

    ended, result = run(main)
    assert ended == 0.5
    assert result.parts == {"user": "ada"}
    assert result.missing == {"payment": "no answer within 0.5s"}
    assert result.partial


def test_a_part_that_gives_up_at_its_deadline_is_out_of_time() -> None:
    """A deadline error at the part's deadline reads as its timeout; before it, as itself."""

    async def main(clock: FakeClock, calls: Calls) -> Composition:
        return await compose(
            Part(
                "late",
                calls.fail("late", DeadlineExceededError("gave up"), after=0.5),
                timeout=0.5,
                required=False,
            ),
            Part(
                "early",
                calls.fail("early", DeadlineExceededError("gave up"), after=0.2),
                timeout=0.5,
                required=False,
            ),
            budget=2.0,
            clock=clock,
        )

    assert run(main).missing == {"late": "no answer within 0.5s", "early": "gave up"}


def test_an_optional_part_that_fails_is_missing_with_its_error() -> None:
    """A meshkit error is its own reason; another error is named by its type."""

    async def main(clock: FakeClock, calls: Calls) -> Composition:
        return await compose(
            Part("user", calls.answer("user", "ada", after=0.3)),
            Part("payment", calls.fail("payment", PeerError("reset"), after=0.1), required=False),
            Part("notes", calls.fail("notes", KeyError("id"), after=0.1), required=False),
            budget=2.0,
            clock=clock,
        )

    result = run(main)
    assert result.parts == {"user": "ada"}
    assert result.missing == {"payment": "reset", "notes": "KeyError: 'id'"}


def test_the_budget_bounds_every_part() -> None:
    """Parts without a timeout of their own, or with a longer one, end with the budget."""

    async def main(clock: FakeClock, calls: Calls) -> tuple[float, Composition]:
        result = await compose(
            Part("a", calls.answer("a", 1, after=9.0), required=False),
            Part("b", calls.answer("b", 2, after=9.0), timeout=5.0, required=False),
            Part("c", calls.answer("c", 3, after=0.5), timeout=5.0),
            budget=1.5,
            clock=clock,
        )
        return clock.monotonic(), result

    ended, result = run(main)
    assert ended == 1.5
    assert result.parts == {"c": 3}
    assert result.missing == dict.fromkeys("ab", "no answer before the budget ran out (1.5s)")


def test_a_required_part_out_of_budget_fails_the_whole() -> None:
    """When the budget ends before a required part, the composition fails then."""

    async def main(clock: FakeClock, calls: Calls) -> None:
        with pytest.raises(CompositionError, match="'user' failed: no answer before the budget"):
            await compose(Part("user", calls.answer("user", 1, after=9.0)), budget=1.0, clock=clock)
        assert clock.monotonic() == 1.0

    run(main)


@pytest.mark.parametrize("budget", [None, 5.0])
def test_the_request_deadline_is_the_default_budget(budget: float | None) -> None:
    """With no budget, the request's deadline (less its reserve) ends it; given both, the sooner."""

    async def main(clock: FakeClock, calls: Calls) -> Composition:
        with use_deadline(DeadlineBudget(clock.monotonic() + 1.0, reserve=0.25)):
            result = await compose(
                Part("slow", calls.answer("slow", 1, after=9.0), required=False),
                budget=budget,
                clock=clock,
            )
        assert clock.monotonic() == 0.75
        return result

    assert run(main).missing == {"slow": "no answer before the budget ran out (0.75s)"}


def test_a_part_calls_with_its_own_deadline() -> None:
    """Inside a part, current_deadline() is the part's, so ServiceClient sends it on."""

    async def main(clock: FakeClock, calls: Calls) -> Composition:
        async def deadline() -> float | None:
            current = current_deadline()
            return None if current is None else current.expires_at

        clock.advance(10.0)
        return await compose(
            Part("short", deadline, timeout=0.5),
            Part("whole", deadline),
            budget=2.0,
            clock=clock,
        )

    assert run(main).parts == {"short": 10.5, "whole": 12.0}


def test_cancelling_the_caller_cancels_the_parts_and_goes_on_up() -> None:
    """The caller's cancellation is not swallowed, and no part is left running."""

    async def main(clock: FakeClock, calls: Calls) -> None:
        composing = asyncio.create_task(
            compose(
                Part("a", calls.answer("a", 1, after=5.0)),
                Part("b", calls.answer("b", 2, after=5.0), required=False),
                budget=10.0,
                clock=clock,
            )
        )
        await clock.sleep(1.0)
        composing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await composing
        assert composing.cancelled()
        assert calls.cancelled == {"a", "b"}

    run(main)


def test_a_timeout_around_the_caller_still_works() -> None:
    """asyncio.timeout around compose raises TimeoutError at its own time, parts stopped."""

    async def main(clock: FakeClock, calls: Calls) -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await compose(Part("a", calls.answer("a", 1, after=5.0)), budget=10, clock=clock)
        assert clock.monotonic() == 0.5
        assert calls.cancelled == {"a"}

    run(main)


def test_a_spent_budget_starts_no_call() -> None:
    """A request deadline already passed: every part is out of time, none is called."""

    async def main(clock: FakeClock, calls: Calls) -> Composition:
        with use_deadline(DeadlineBudget(clock.monotonic())):
            return await compose(
                Part("a", calls.answer("a", 1, after=0.1), required=False), clock=clock
            )

    result = run(main)
    assert result.missing == {"a": "no answer before the budget ran out (0s)"}


def test_the_system_clock_by_default() -> None:
    """Without a clock, real time: a call that never answers is cut off at its timeout."""

    async def main() -> Composition:
        async def quick() -> str:
            return "done"

        never = asyncio.Event()
        return await compose(
            Part("quick", quick),
            Part("never", never.wait, timeout=0.02, required=False),
            budget=5.0,
        )

    result = asyncio.run(main())
    assert result.parts == {"quick": "done"}
    assert result.missing == {"never": "no answer within 0.02s"}


def test_bad_arguments_are_refused() -> None:
    """Two parts of one name, no budget at all, or a bad timeout: the caller is told which."""

    async def noop() -> None:
        return None

    async def main() -> None:
        with pytest.raises(InvalidArgumentError, match="two parts are named 'a'"):
            await compose(Part("a", noop), Part("a", noop), budget=1.0)
        with pytest.raises(InvalidArgumentError, match=r"^budget: no request deadline"):
            await compose(Part("a", noop))
        with pytest.raises(ConfigError, match=r"^budget:"):
            await compose(Part("a", noop), budget=0)

    asyncio.run(main())
    with pytest.raises(ConfigError, match=r"^timeout:"):
        Part("a", noop, timeout=-1.0)
    with pytest.raises(ConfigError, match=r"^name:"):
        Part("", noop)


def test_the_result_is_read_only() -> None:
    """Neither the values nor the reasons can be changed once composed."""

    async def main(clock: FakeClock, calls: Calls) -> Composition:
        return await compose(
            Part("a", calls.answer("a", 1, after=0.1)),
            Part("b", calls.answer("b", 2, after=1.0), timeout=0.5, required=False),
            budget=1.0,
            clock=clock,
        )

    result = run(main)
    with pytest.raises(TypeError):
        result.parts["a"] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        result.missing["b"] = "found"  # type: ignore[index]


async def test_a_composition_is_a_span_with_one_child_per_part(
    spans: InMemorySpanExporter,
) -> None:
    async def fine() -> int:
        return 1

    async def broken() -> int:
        raise RuntimeError("down")

    composed = await compose(Part("a", fine), Part("b", broken, required=False), budget=1.0)
    assert composed.missing == {"b": "RuntimeError: down"}
    by_name = {s.name: s for s in spans.get_finished_spans()}
    whole = by_name["compose"]
    assert whole.attributes is not None
    assert whole.attributes["meshkit.compose.missing"] == ("b",)
    for part in ("part a", "part b"):
        assert by_name[part].parent == whole.context
