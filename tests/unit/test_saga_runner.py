"""The saga runner over a real SQLite log: driving, compensating, resuming and taking over."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from meshkit.errors import ConfigError, ConflictError, InvalidArgumentError, NotFoundError
from meshkit.observe import tracer
from meshkit.policy import Backoff
from meshkit.saga import Run, Saga, SagaRunner, SqliteSagaStore, StepContext, StepFailed

QUICK = Backoff(initial=0.01, maximum=0.02)
WITHIN = 10.0


async def until(condition: Callable[[], bool], seconds: float = WITHIN) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (a runner's state: no event to await)
            await asyncio.sleep(0.01)  # noqa: TID251 (polling, bounded by the timeout)


class Calls:
    """What the steps of a test saga were asked to do, in order."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []  # (what, idempotency key)

    def add(self, what: str, ctx: StepContext) -> None:
        self.log.append((what, ctx.idempotency_key))

    def names(self) -> list[str]:
        return [what for what, _ in self.log]


def three_steps(calls: Calls, *, fail_at: str | None = None, undo_attempts: int = 3) -> Saga:
    saga = Saga("three")

    @saga.step(attempts=3, backoff=QUICK)
    async def first(ctx: StepContext) -> dict[str, int]:
        calls.add("first", ctx)
        return {"n": ctx.input["n"] + 1}

    @first.compensate(attempts=undo_attempts, backoff=QUICK)
    async def undo_first(ctx: StepContext) -> None:
        calls.add("undo first", ctx)
        assert ctx.result == {"n": ctx.input["n"] + 1}

    @saga.step(attempts=3, backoff=QUICK)
    async def second(ctx: StepContext) -> int:
        calls.add("second", ctx)
        if fail_at == "second":
            raise StepFailed("declined", status=402, data={"why": "card"})
        return int(ctx.results["first"]["n"]) * 10

    @second.compensate(backoff=QUICK)
    async def undo_second(ctx: StepContext) -> None:
        calls.add("undo second", ctx)

    @saga.step(backoff=QUICK)
    async def third(ctx: StepContext) -> int:
        calls.add("third", ctx)
        if fail_at == "third":
            raise StepFailed("out of stock", status=409)
        return int(ctx.results["second"]) + 1

    return saga


@pytest.fixture
async def runner_for(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[SagaRunner] = []

    async def make(
        *sagas: Saga, owner: str = "a", lease: float = 5.0, scan: float | None = None
    ) -> SagaRunner:
        store = SqliteSagaStore(tmp_path / "log.db")
        runner = SagaRunner(store, sagas, owner=owner, lease=lease, scan=scan or lease / 4)
        await runner.start()
        made.append(runner)
        return runner

    yield make
    for runner in made:
        await runner.aclose()


async def test_a_run_completes_each_step_seeing_the_results_before_it(runner_for: Any) -> None:
    """Input and results flow forward; the log holds each step done with its result."""
    calls = Calls()
    runner = await runner_for(three_steps(calls))
    run = await runner.begin("three", {"n": 1})
    ended = await runner.wait(run.id, WITHIN)
    assert ended.status == "completed"
    assert [step.result for step in ended.steps] == [{"n": 2}, 20, 21]
    assert calls.names() == ["first", "second", "third"]
    assert (await runner.get(run.id)) == ended


async def test_a_final_failure_undoes_the_done_steps_latest_first(runner_for: Any) -> None:
    """The failing step is not undone; the others are, in reverse, each with a key of its own."""
    calls = Calls()
    runner = await runner_for(three_steps(calls, fail_at="third"))
    run = await runner.begin("three", {"n": 1})
    ended = await runner.wait(run.id, WITHIN)
    assert ended.status == "compensated"
    assert ended.failure is not None
    assert (ended.failure.step, ended.failure.detail, ended.failure.status) == (
        "third",
        "out of stock",
        409,
    )
    assert calls.names() == ["first", "second", "third", "undo second", "undo first"]
    keys = dict(calls.log[::-1])
    assert keys["undo first"] == f"{run.id}:first:undo"
    assert keys["first"] == f"{run.id}:first"


async def test_an_unknown_outcome_is_retried_under_the_same_key(runner_for: Any) -> None:
    """A step that raises is tried again; every attempt carries the one key."""
    saga = Saga("flaky")
    keys: list[str] = []

    @saga.step(attempts=5, backoff=QUICK)
    async def flaky(ctx: StepContext) -> str:
        keys.append(ctx.idempotency_key)
        if ctx.attempt < 3:
            raise ConnectionError("reset")
        return "ok"

    runner = await runner_for(saga)
    ended = await runner.wait((await runner.begin(saga)).id, WITHIN)
    assert ended.status == "completed"
    assert ended.steps[0].attempts == 3
    assert len(set(keys)) == 1
    assert len(keys) == 3


async def test_a_step_that_runs_past_its_timeout_is_an_unknown_outcome(runner_for: Any) -> None:
    """The timeout cancels the attempt; the step is tried again, then undone when spent."""
    saga = Saga("slow")
    undone = asyncio.Event()

    @saga.step(timeout=0.05, attempts=2, backoff=QUICK)
    async def slow(ctx: StepContext) -> None:
        await asyncio.Event().wait()

    @slow.compensate
    async def undo(ctx: StepContext) -> None:
        undone.set()

    runner = await runner_for(saga)
    ended = await runner.wait((await runner.begin(saga)).id, WITHIN)
    assert ended.status == "compensated"
    assert ended.failure is not None
    assert "timed out after 0.05 s (after 2 attempts)" in ended.failure.detail
    assert undone.is_set()


async def test_a_compensation_that_keeps_failing_is_stuck_until_retried(runner_for: Any) -> None:
    """Stuck after its attempts; retry sets it going; retrying what is not stuck is refused."""
    calls = Calls()
    broken = True
    saga = three_steps(calls, fail_at="second", undo_attempts=2)

    @saga.step
    async def unused(ctx: StepContext) -> None: ...

    original = saga.steps[0].undo
    assert original is not None

    async def undo_first(ctx: StepContext) -> None:
        if broken:
            raise RuntimeError("inventory is down")
        await original(ctx)

    saga.steps[0].undo = undo_first
    runner = await runner_for(saga)
    run = await runner.begin(saga, {"n": 1})
    stuck = await runner.wait(run.id, WITHIN)
    assert stuck.status == "stuck"
    assert stuck.note is not None
    assert "inventory is down" in stuck.note
    assert [r.id for r in await runner.runs(status="stuck")] == [run.id]
    broken = False
    retried = await runner.retry(run.id)
    assert retried.status == "compensating"
    ended = await runner.wait(run.id, WITHIN)
    assert ended.status == "compensated"
    assert ended.steps[0].undo_attempts == 3
    with pytest.raises(ConflictError, match="not stuck"):
        await runner.retry(run.id)
    with pytest.raises(NotFoundError):
        await runner.retry("no-such-run")


async def test_local_work_commits_with_the_run_or_not_at_all(
    runner_for: Any, tmp_path: Path
) -> None:
    """begin's local work and a local step's rows commit with their log entries."""
    saga = Saga("local")
    committed: list[int] = []
    failures = [RuntimeError("first try fails")]

    @saga.local_step(attempts=2)
    def write(tx: sqlite3.Connection, ctx: StepContext) -> int:
        tx.execute("INSERT INTO things VALUES (?)", (ctx.input["id"] * 10,))
        if failures:
            raise failures.pop()
        ctx.on_commit(lambda: committed.append(ctx.input["id"]))
        return 7

    @saga.on_end
    def ended(tx: sqlite3.Connection, run: Run) -> None:
        tx.execute("INSERT INTO things VALUES (?)", (-1 if run.status == "completed" else -2,))

    with sqlite3.connect(tmp_path / "log.db") as db:
        db.execute("CREATE TABLE things (value INTEGER)")
    runner = await runner_for(saga)

    def record(tx: sqlite3.Connection) -> dict[str, int]:
        tx.execute("INSERT INTO things VALUES (1)")
        return {"id": 5}

    run = await runner.begin(saga, local=record)
    assert run.input == {"id": 5}
    ended_run = await runner.wait(run.id, WITHIN)
    assert ended_run.status == "completed"
    assert ended_run.steps[0].attempts == 2
    assert committed == [5]
    with sqlite3.connect(tmp_path / "log.db") as db:
        values = [row[0] for row in db.execute("SELECT value FROM things ORDER BY rowid")]
    assert values == [1, 50, -1]  # the failed attempt's row was rolled back

    def refuse(tx: sqlite3.Connection) -> None:
        tx.execute("INSERT INTO things VALUES (2)")
        raise ValueError("no such user")

    with pytest.raises(ValueError, match="no such user"):
        await runner.begin(saga, local=refuse)
    assert len(await runner.runs()) == 1
    with sqlite3.connect(tmp_path / "log.db") as db:
        assert db.execute("SELECT count(*) FROM things WHERE value = 2").fetchone() == (0,)


async def test_a_restarted_runner_takes_its_runs_back_at_once(runner_for: Any) -> None:
    """Closed mid-step (as a crash would leave it), its run is resumed by its successor."""
    saga = Saga("blocking")
    gate = asyncio.Event()
    keys: list[str] = []

    @saga.step(backoff=QUICK)
    async def wait_for_gate(ctx: StepContext) -> None:
        keys.append(ctx.idempotency_key)
        await gate.wait()

    first = await runner_for(saga, owner="orders-1", lease=60.0)
    run = await first.begin(saga)
    await until(lambda: len(keys) == 1)
    await first.aclose()
    gate.set()
    second = await runner_for(saga, owner="orders-1", lease=60.0)
    ended = await second.wait(run.id, WITHIN)
    assert ended.status == "completed"
    assert ended.steps[0].attempts == 2
    assert keys == [f"{run.id}:wait_for_gate"] * 2


async def test_another_runner_takes_over_once_the_lease_lapses(runner_for: Any) -> None:
    """A runner that stops renewing loses its runs to another; its own late write is refused."""
    saga = Saga("handover")
    gate = asyncio.Event()
    drivers: list[str] = []

    @saga.step(backoff=QUICK)
    async def step(ctx: StepContext) -> None:
        drivers.append(ctx.step)
        await gate.wait()

    hung = await runner_for(saga, owner="orders-1", lease=0.4)
    run = await hung.begin(saga)
    for loop in hung._loops:  # it hangs: it renews nothing, scans nothing
        loop.cancel()
    other = await runner_for(saga, owner="orders-2", lease=0.4)
    await until(lambda: other.driving == 1)
    await until(lambda: len(drivers) == 2)  # it runs the step again, under its key
    gate.set()
    ended = await other.wait(run.id, WITHIN)
    assert ended.status == "completed"
    await until(lambda: hung.driving == 0)  # its write was fenced off: it let go
    assert (await other.get(run.id)) == ended


async def test_a_runner_that_stops_hands_its_runs_over_at_once(runner_for: Any) -> None:
    """Closed mid-step (a service draining), its lease ends: another takes the run long
    before the lease would have lapsed."""
    saga = Saga("drained")
    gate = asyncio.Event()
    entered: list[str] = []

    @saga.step(backoff=QUICK)
    async def step(ctx: StepContext) -> None:
        entered.append(ctx.idempotency_key)
        await gate.wait()

    leaving = await runner_for(saga, owner="orders-1", lease=60.0)
    staying = await runner_for(saga, owner="orders-2", lease=60.0, scan=0.1)
    run = await leaving.begin(saga)
    await until(lambda: len(entered) == 1)
    await leaving.aclose()
    gate.set()
    await until(lambda: len(entered) == 2)  # well inside the 60 s lease
    ended = await staying.wait(run.id, WITHIN)
    assert ended.status == "completed"


async def test_a_run_does_not_inherit_the_caller_s_context(runner_for: Any) -> None:
    """A request's deadline (any context variable) stays with the request, not its saga."""
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")
    seen: list[str] = []
    saga = Saga("context")

    @saga.step
    async def look(ctx: StepContext) -> None:
        seen.append(marker.get())

    runner = await runner_for(saga)
    marker.set("the request's")
    await runner.wait((await runner.begin(saga)).id, WITHIN)
    assert seen == ["unset"]


async def test_an_input_json_cannot_hold_is_refused(runner_for: Any) -> None:
    """The error names the input, and nothing is logged."""
    saga = Saga("any")

    @saga.step
    async def only(ctx: StepContext) -> None: ...

    runner = await runner_for(saga)
    with pytest.raises(InvalidArgumentError, match="input"):
        await runner.begin(saga, {"when": object()})
    with pytest.raises(InvalidArgumentError, match="saga"):
        await runner.begin("unknown")
    assert await runner.runs() == []


async def test_an_on_end_that_fails_is_tried_again_without_running_steps_again(
    runner_for: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end is decided: only the hook is tried again, the step runs once."""
    monkeypatch.setattr("meshkit.saga._runner._END_BACKOFF", QUICK)
    saga = Saga("ending")
    ran: list[str] = []
    hooks: list[str] = []

    @saga.step
    async def charge(ctx: StepContext) -> None:
        ran.append("charge")

    @charge.compensate
    async def refund(ctx: StepContext) -> None:
        ran.append("refund")

    @saga.on_end
    def settle(tx: sqlite3.Connection, run: Run) -> None:
        hooks.append(run.status)
        if len(hooks) < 3:
            raise RuntimeError("the orders table is locked")

    runner = await runner_for(saga)
    ended = await runner.wait((await runner.begin(saga)).id, WITHIN)
    assert ended.status == "completed"
    assert ran == ["charge"]
    assert hooks == ["completed"] * 3


async def test_a_run_taken_back_logs_its_next_attempt_before_making_it(
    runner_for: Any,
) -> None:
    """A compensation interrupted by crashes counts each attempt, so it ends stuck."""
    saga = Saga("crashing")
    entered: list[int] = []

    @saga.step
    async def act(ctx: StepContext) -> None: ...

    @act.compensate(attempts=2, backoff=QUICK)
    async def undo(ctx: StepContext) -> None:
        entered.append(ctx.attempt)
        await asyncio.Event().wait()  # the process dies in here

    @saga.step
    async def fail(ctx: StepContext) -> None:
        raise StepFailed("no")

    first = await runner_for(saga, owner="orders-1", lease=60.0)
    run = await first.begin(saga)
    await until(lambda: entered == [1])
    await first.aclose()
    second = await runner_for(saga, owner="orders-1", lease=60.0)
    await until(lambda: entered == [1, 2])
    logged = await second.get(run.id)
    assert logged is not None
    assert logged.steps[0].undo_attempts == 2
    await second.aclose()
    third = await runner_for(saga, owner="orders-1", lease=60.0)
    stuck = await third.wait(run.id, WITHIN)
    assert stuck.status == "stuck"
    assert entered == [1, 2]


async def test_a_run_that_cannot_be_read_is_passed_over(runner_for: Any, tmp_path: Path) -> None:
    """A row from a newer meshkit does not stop the runner taking over the others."""
    saga = Saga("readable")
    gate = asyncio.Event()
    entered: list[str] = []

    @saga.step
    async def act(ctx: StepContext) -> None:
        entered.append(ctx.run_id)
        await gate.wait()

    gone = await runner_for(saga, owner="gone", lease=60.0)
    left = await gone.begin(saga)
    await until(lambda: entered == [left.id])
    await gone.aclose()  # its run's lease ends: for the next runner to claim
    with sqlite3.connect(tmp_path / "log.db") as db:
        db.execute(
            "INSERT INTO meshkit_saga_runs VALUES ('odd', 'readable', 'running', 'gone', 0, 1, 0,"
            ' \'{"id": "odd", "status": "paused"}\')'
        )
    gate.set()
    runner = await runner_for(saga, owner="here", lease=5.0)
    assert (await runner.wait(left.id, WITHIN)).status == "completed"
    with sqlite3.connect(tmp_path / "log.db") as db:
        odd = db.execute("SELECT owner, version FROM meshkit_saga_runs WHERE id = 'odd'")
        assert odd.fetchone() == ("gone", 1)  # left as it was, unclaimed


async def test_a_local_step_s_step_failed_is_a_final_failure(runner_for: Any) -> None:
    """StepFailed from a local step compensates at once, with its status."""
    saga = Saga("local-refusal")
    undone: list[str] = []

    @saga.step
    async def first(ctx: StepContext) -> None: ...

    @first.compensate
    async def undo(ctx: StepContext) -> None:
        undone.append("first")

    @saga.local_step
    def check(tx: sqlite3.Connection, ctx: StepContext) -> None:
        raise StepFailed("over the limit", status=409)

    runner = await runner_for(saga)
    ended = await runner.wait((await runner.begin(saga)).id, WITHIN)
    assert ended.status == "compensated"
    assert ended.failure is not None
    assert (ended.failure.final, ended.failure.status) == (True, 409)
    assert ended.steps[1].attempts == 1
    assert undone == ["first"]


def test_async_local_work_is_refused_for_a_sqlite_log(tmp_path: Path) -> None:
    """SQLite runs local work on its writer thread: a coroutine function is a ConfigError."""
    saga = Saga("async-local")

    @saga.local_step
    async def write(tx: sqlite3.Connection, ctx: StepContext) -> None: ...

    with pytest.raises(ConfigError, match="plain def"):
        SagaRunner(SqliteSagaStore(tmp_path / "log.db"), [saga])


async def test_a_runs_spans_join_the_trace_it_was_begun_in(
    runner_for: Any, spans: InMemorySpanExporter
) -> None:
    """A saga span under the request's, and a span per step and compensation under it."""
    calls = Calls()
    runner = await runner_for(three_steps(calls, fail_at="third"))
    with tracer("test").start_as_current_span("POST /orders") as request:
        run = await runner.begin("three", {"n": 1})
    assert (await runner.wait(run.id, WITHIN)).status == "compensated"
    await until(lambda: any(s.name == "saga three" for s in spans.get_finished_spans()))
    by_name = {s.name: s for s in spans.get_finished_spans()}
    whole = by_name["saga three"]
    assert whole.parent is not None
    assert whole.parent.span_id == request.get_span_context().span_id
    assert whole.context is not None
    names = [s.name for s in spans.get_finished_spans() if s.parent == whole.context]
    assert names == [
        "step first",
        "step second",
        "step third",
        "compensate second",
        "compensate first",
    ]
    assert by_name["step third"].status.status_code == StatusCode.ERROR
    assert by_name["step first"].status.status_code == StatusCode.UNSET
