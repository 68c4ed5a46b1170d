"""A service's /-/sagas API over a real SagaRunner and SQLite log, through its ASGI layer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from meshkit import Service
from meshkit.saga import Run, Saga, SagaRunner, SqliteSagaStore, StepContext, StepFailed
from meshkit.service._asgi import MeshASGI
from meshkit.service._saga_api import RunDetail, RunSummary, SagaAPI
from meshkit.testing import FakeClock

TOKEN = "saga-api-token-0123456789abcdef"
AUTH = {"authorization": f"Bearer {TOKEN}"}

transfer = Saga("transfer")


@transfer.step(attempts=1)
async def debit(ctx: StepContext) -> dict[str, Any]:
    return {"debited": ctx.input["amount"]}


@debit.compensate(attempts=1)
async def credit(ctx: StepContext) -> None:
    # Fails its first `undo_failures` attempts: one is enough to leave the run stuck.
    if ctx.attempt <= ctx.input.get("undo_failures", 0):
        raise RuntimeError("the bank is down")


@transfer.step(attempts=1)
async def deliver(ctx: StepContext) -> dict[str, Any]:
    if ctx.input.get("refuse"):
        raise StepFailed("out of stock", status=409)
    return {"delivered": True}


async def app(scope: Any, receive: Any, send: Any) -> None:
    """The application behind the layer: it answers whatever reaches it with 200 "app"."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"app"})


class Runs:
    """Three runs of ``transfer``, ended: completed, compensated, stuck (newest last)."""

    def __init__(self, runner: SagaRunner, completed: Run, compensated: Run, stuck: Run) -> None:
        self.runner = runner
        self.completed = completed
        self.compensated = compensated
        self.stuck = stuck


@pytest.fixture
async def runs(tmp_path: Path) -> AsyncIterator[Runs]:
    async with SagaRunner(SqliteSagaStore(tmp_path / "sagas.sqlite3"), [transfer]) as runner:
        ended = []
        for run_id, given in (
            ("t-completed", {"amount": 5}),
            ("t-compensated", {"amount": 6, "refuse": True}),
            ("t-stuck", {"amount": 7, "refuse": True, "undo_failures": 1}),
        ):
            await runner.begin(transfer, given, run_id=run_id)
            ended.append(await runner.wait(run_id, timeout=10))
        assert [run.status for run in ended] == ["completed", "compensated", "stuck"]
        yield Runs(runner, *ended)


def layer(runners: list[SagaRunner], token: str | None = TOKEN) -> MeshASGI:
    return MeshASGI(app, clock=FakeClock(), sagas=SagaAPI(runners, token=token))


async def ask(
    asgi: Any, method: str, path: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.request(method, path, headers=AUTH if headers is None else headers)


def problem(answer: httpx.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = answer.json()
    assert body["status"] == status
    return body


async def test_the_list_summarises_runs_most_recently_changed_first(runs: Runs) -> None:
    """Each run's id, saga, status, current step, times, and why it turned back or stuck."""
    answer = await ask(layer([runs.runner]), "GET", "/-/sagas")
    assert answer.status_code == 200
    listed = msgspec.json.decode(answer.content, type=list[RunSummary])
    assert [run.id for run in listed] == ["t-stuck", "t-compensated", "t-completed"]
    stuck, compensated, completed = listed
    assert (stuck.status, stuck.step) == ("stuck", "debit")
    assert stuck.failure is not None
    assert (stuck.failure.step, stuck.failure.detail, stuck.failure.status) == (
        "deliver",
        "out of stock",
        409,
    )
    assert stuck.note == "debit: compensation failed 1 times: the bank is down"
    assert (compensated.status, compensated.step, compensated.note) == ("compensated", None, None)
    assert (completed.status, completed.step, completed.failure) == ("completed", None, None)
    assert completed.created <= completed.updated


async def test_the_list_is_filtered_by_status_and_saga_and_bounded_by_limit(runs: Runs) -> None:
    """status= and saga= filter, limit= keeps the most recent; empty values count as unset."""
    asgi = layer([runs.runner])
    stuck = (await ask(asgi, "GET", "/-/sagas?status=stuck")).json()
    assert [run["id"] for run in stuck] == ["t-stuck"]
    assert (await ask(asgi, "GET", "/-/sagas?saga=refund")).json() == []
    latest = (await ask(asgi, "GET", "/-/sagas?limit=1&status=&saga=transfer")).json()
    assert [run["id"] for run in latest] == ["t-stuck"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("limit=10001", "limit"),
        ("state=stuck", "state"),
    ],
)
async def test_a_bad_query_is_a_400_naming_the_parameter(
    runs: Runs, query: str, field: str
) -> None:
    body = problem(await ask(layer([runs.runner]), "GET", f"/-/sagas?{query}"), 400)
    assert [error["field"] for error in body["errors"]] == [field]


async def test_a_run_is_shown_step_by_step(runs: Runs) -> None:
    """Each step's phase, attempts of its action and of its compensation, times and last error."""
    answer = await ask(layer([runs.runner]), "GET", "/-/sagas/t-stuck")
    assert answer.status_code == 200
    run = msgspec.json.decode(answer.content, type=RunDetail)
    assert (run.id, run.status, run.step) == ("t-stuck", "stuck", "debit")
    assert run.input == {"amount": 7, "refuse": True, "undo_failures": 1}
    debited, delivered = run.steps
    assert (debited.name, debited.phase, debited.compensable) == ("debit", "undoing", True)
    assert (debited.attempts, debited.undo_attempts) == (1, 1)
    assert debited.result == {"debited": 7}
    assert debited.undo_error == "the bank is down"
    assert debited.duration is not None
    assert debited.duration >= 0
    assert debited.undo_started is not None
    assert debited.undo_duration is None  # it never ended
    assert (delivered.phase, delivered.attempts, delivered.error) == ("failed", 1, "out of stock")
    assert (delivered.undo_attempts, delivered.undo_started) == (0, None)


async def test_a_stuck_run_is_retried_and_compensates(runs: Runs) -> None:
    """The retry answers the run going again; its compensation's second attempt succeeds."""
    asgi = layer([runs.runner])
    answer = await ask(asgi, "POST", "/-/sagas/t-stuck/retry")
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "compensating"
    ended = await runs.runner.wait("t-stuck", timeout=10)
    assert ended.status == "compensated"
    assert ended.steps[0].undo_attempts == 2
    shown = (await ask(asgi, "GET", "/-/sagas/t-stuck")).json()
    assert shown["steps"][0]["phase"] == "undone"
    assert shown["steps"][0]["undo_duration"] >= 0


async def test_retry_refuses_a_run_not_stuck_and_an_unknown_one(runs: Runs) -> None:
    asgi = layer([runs.runner])
    body = problem(await ask(asgi, "POST", "/-/sagas/t-completed/retry"), 409)
    assert "not stuck" in body["detail"]
    assert (
        "t-nothing" in problem(await ask(asgi, "POST", "/-/sagas/t-nothing/retry"), 404)["detail"]
    )
    assert "t-nothing" in problem(await ask(asgi, "GET", "/-/sagas/t-nothing"), 404)["detail"]


async def test_wrong_methods_and_paths_are_problems(runs: Runs) -> None:
    asgi = layer([runs.runner])
    refused = await ask(asgi, "GET", "/-/sagas/t-stuck/retry")
    problem(refused, 405)
    assert refused.headers["allow"] == "POST"
    assert (await ask(asgi, "DELETE", "/-/sagas/t-stuck")).headers["allow"] == "GET"
    problem(await ask(asgi, "GET", "/-/sagas/t-stuck/steps"), 404)
    assert (await ask(asgi, "GET", "/-/sagasx")).text == "app"  # not ours: the app's


async def test_the_token_is_required_when_the_service_has_one(runs: Runs) -> None:
    """No header, another scheme or another token: 401 with a Bearer challenge."""
    asgi = layer([runs.runner])
    for headers in ({}, {"authorization": f"Basic {TOKEN}"}, {"authorization": "Bearer nope"}):
        refused = await ask(asgi, "GET", "/-/sagas", headers)
        problem(refused, 401)
        assert refused.headers["www-authenticate"] == 'Bearer realm="meshkit"'
    scheme_any_case = {"authorization": f"bEaReR {TOKEN}"}
    assert (await ask(asgi, "GET", "/-/sagas", scheme_any_case)).status_code == 200
    open_service = layer([runs.runner], token=None)
    assert (await ask(open_service, "GET", "/-/sagas", {})).status_code == 200


async def test_a_service_without_sagas_answers_404_saying_so(tmp_path: Path) -> None:
    """Its 404 carries runs_sagas: false, for clients asking every instance of a project."""
    plain = Service(app, name="plain", registry="http://127.0.0.1:1", token=TOKEN)
    body = problem(await ask(plain._asgi, "GET", "/-/sagas"), 404)
    assert body["runs_sagas"] is False
    problem(await ask(plain._asgi, "GET", "/-/sagas", {}), 401)  # the token before anything


async def test_a_service_answers_for_the_runners_it_adds(tmp_path: Path) -> None:
    """add_sagas after the Service is built: /-/sagas lists that runner's runs."""
    service = Service(app, name="shop", registry="http://127.0.0.1:1", token=TOKEN)
    runner = service.add_sagas(SqliteSagaStore(tmp_path / "sagas.sqlite3"), transfer)
    async with runner:
        await runner.begin(transfer, {"amount": 1}, run_id="t-1")
        await runner.wait("t-1", timeout=10)
        listed = (await ask(service._asgi, "GET", "/-/sagas")).json()
    assert [(run["id"], run["status"]) for run in listed] == [("t-1", "completed")]
