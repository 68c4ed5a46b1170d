"""A service's saga runs over HTTP, answered by the service's ASGI layer itself.

    GET  /-/sagas?status=S&saga=NAME&limit=N  -> [run summary], most recently changed first
    GET  /-/sagas/{id}                         -> the run, step by step
    POST /-/sagas/{id}/retry                   -> the stuck run set going again (200, the run)

``meshkit sagas`` reads these on every instance of a project's services,
and so will the dashboard. A service given a token (``Service(token=...)``,
``MESHKIT_TOKEN`` under ``meshkit up``) asks for ``Authorization: Bearer
<token>``, the control plane's rule (``meshkit.http.bearer_authorized``),
and answers 401 without it: runs hold the services' inputs and results.

Errors are problem details (RFC 9457): 400 naming the bad parameter in
``errors``, 404 for an unknown run, 409 to retry a run that is not stuck,
503 when the saga log cannot be read. A 404 says ``runs_sagas``: true for
an unknown run of a service that runs sagas, false from one that runs
none, so a client asking every instance tells the two apart (and any other
404, from an app behind a sidecar say, from both).

The run's shape on the wire is ``RunSummary`` and ``RunDetail``: the
server encodes them and clients decode them, so the two cannot drift.
Times are Unix seconds, durations seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final
from urllib.parse import parse_qs

import msgspec

from meshkit.errors import (
    ConflictError,
    EnvironmentFaultError,
    InvalidArgumentError,
    MeshkitError,
    NotFoundError,
    UsageError,
)
from meshkit.http import (
    BEARER_CHALLENGE,
    FieldError,
    Problem,
    Response,
    bearer_authorized,
    json_response,
    problem_response,
)
from meshkit.policy import _check as check
from meshkit.saga import Failure, Run, SagaRunner, Status, StepPlan, StepState
from meshkit.saga._model import Phase
from meshkit.saga._store import check_status

__all__ = ["PREFIX", "RunDetail", "RunSummary", "SagaAPI", "StepView", "detail", "summary"]

PREFIX: Final = "/-/sagas"
NO_SAGAS: Final = "runs_sagas"  # the member of the 404 of a service that runs no sagas
MAX_LIMIT: Final = 10_000  # what a store lists at most in one call

_log = logging.getLogger("meshkit.service")
_PARAMETERS = ("status", "saga", "limit")


class StepView(msgspec.Struct, frozen=True, kw_only=True):
    """One step of a run: its action's attempts and times, then its compensation's.

    ``compensable`` says whether it has a compensation; ``duration`` is
    ``ended - started`` once the action ended (null before), from its first
    attempt to its last; ``undo_duration`` likewise for the compensation.
    """

    name: str
    phase: Phase
    local: bool
    compensable: bool
    attempts: int
    undo_attempts: int
    started: float | None = None
    ended: float | None = None
    duration: float | None = None
    undo_started: float | None = None
    undo_ended: float | None = None
    undo_duration: float | None = None
    error: str | None = None
    undo_error: str | None = None
    result: Any = None


class RunSummary(msgspec.Struct, frozen=True, kw_only=True):
    """A run in a listing: ``step`` is the step it runs or undoes now (null once it ended)."""

    id: str
    saga: str
    status: Status
    step: str | None
    created: float
    updated: float
    failure: Failure | None = None
    note: str | None = None


class RunDetail(RunSummary, frozen=True, kw_only=True):
    """A run in full: its input, when it next wakes (null if it is not waiting), its steps."""

    input: Any = None
    wake: float | None = None
    steps: tuple[StepView, ...] = ()


def _current(run: Run) -> str | None:
    if run.ended or not 0 <= run.cursor < len(run.plan):
        return None
    return run.plan[run.cursor].name


def summary(run: Run) -> RunSummary:
    return RunSummary(
        id=run.id,
        saga=run.saga,
        status=run.status,
        step=_current(run),
        created=run.created,
        updated=run.updated,
        failure=run.failure,
        note=run.note,
    )


def _lasted(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _step(plan: StepPlan, state: StepState) -> StepView:
    return StepView(
        name=plan.name,
        phase=state.phase,
        local=plan.local,
        compensable=plan.undo_attempts is not None,
        attempts=state.attempts,
        undo_attempts=state.undo_attempts,
        started=state.started,
        ended=state.ended,
        duration=_lasted(state.started, state.ended),
        undo_started=state.undo_started,
        undo_ended=state.undo_ended,
        undo_duration=_lasted(state.undo_started, state.undo_ended),
        error=state.error,
        undo_error=state.undo_error,
        result=state.result,
    )


def detail(run: Run) -> RunDetail:
    return RunDetail(
        **msgspec.structs.asdict(summary(run)),
        input=run.input,
        wake=run.wake or None,
        steps=tuple(_step(p, s) for p, s in zip(run.plan, run.steps, strict=True)),
    )


class SagaAPI:
    """Answers ``/-/sagas`` for ``runners``, asking for ``token`` if there is one.

    ``runners`` is read on each request, so a list the service still adds
    to (``Service.add_sagas``) may be given.
    """

    def __init__(self, runners: Sequence[SagaRunner], *, token: str | None) -> None:
        self._runners = runners
        self._token = token.encode() if token else None

    async def answer(
        self, method: str, path: str, query: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> Response:
        """The answer to a request for ``path``, which is ``PREFIX`` or below it."""
        if self._token is not None and not bearer_authorized(headers, self._token):
            return _problem(
                Problem(401, "a valid 'Authorization: Bearer <token>' header is required"),
                BEARER_CHALLENGE,
            )
        if not self._runners:
            return _problem(
                Problem(404, "this service runs no sagas", extensions={NO_SAGAS: False})
            )
        rest = path[len(PREFIX) :].strip("/")
        run_id, _, action = rest.partition("/")
        call: Callable[[], Awaitable[Response]]
        if not rest:
            allowed, call = "GET", lambda: self._list(query)
        elif not action:
            allowed, call = "GET", lambda: self._show(run_id)
        elif action == "retry":
            allowed, call = "POST", lambda: self._retry(run_id)
        else:
            return _problem(Problem(404, f"no such endpoint: {path}"))
        if method != allowed:
            refused = Problem(405, f"{method} is not allowed here; use {allowed}")
            return _problem(refused, (b"allow", allowed.encode()))
        try:
            return await call()
        except InvalidArgumentError as error:
            field = FieldError(error.key, error.problem)
            return _problem(Problem(400, str(error), errors=(field,)))
        except NotFoundError as error:
            return _problem(Problem(404, str(error), extensions={NO_SAGAS: True}))
        except ConflictError as error:
            return _problem(Problem(409, str(error)))
        except (EnvironmentFaultError, UsageError) as error:
            # The log cannot be read, or is closed because the service is stopping.
            return _problem(Problem(503, str(error)))
        except MeshkitError:
            _log.exception("saga API: %s %s failed", method, path)
            return _problem(Problem(500, "internal error"))

    async def _list(self, query: str) -> Response:
        status, saga, limit = _listing(query)
        found: dict[str, Run] = {}
        for runner in self._runners:
            for run in await runner.runs(status=status, saga=saga, limit=limit):
                kept = found.get(run.id)  # two runners may share a store
                if kept is None or run.updated > kept.updated:
                    found[run.id] = run
        runs = sorted(found.values(), key=lambda run: run.updated, reverse=True)[:limit]
        return json_response(200, [summary(run) for run in runs])

    async def _show(self, run_id: str) -> Response:
        for runner in self._runners:
            run = await runner.get(run_id)
            if run is not None:
                return json_response(200, detail(run))
        raise NotFoundError(f"no saga run {run_id!r}")

    async def _retry(self, run_id: str) -> Response:
        found = False
        for runner in self._runners:
            run = await runner.get(run_id)
            if run is None:
                continue
            found = True
            if run.saga in runner.sagas:  # only a runner that defines the saga can drive it
                return json_response(200, detail(await runner.retry(run_id)))
        if found:
            raise ConflictError(f"saga run {run_id}: its saga is not defined in this service")
        raise NotFoundError(f"no saga run {run_id!r}")


def _listing(query: str) -> tuple[Status | None, str | None, int]:
    """``status``, ``saga`` and ``limit`` of a listing; an empty value counts as not given."""
    params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = sorted(set(params) - set(_PARAMETERS))
    if unknown:
        raise InvalidArgumentError(
            unknown[0], f"is not a parameter here ({', '.join(_PARAMETERS)})"
        )
    status = check_status(params.get("status") or None)
    raw = params.get("limit") or "100"
    if not raw.isdigit():
        raise InvalidArgumentError("limit", f"must be a whole number, got {raw!r}")
    limit = check.whole("limit", int(raw), minimum=1, maximum=MAX_LIMIT)
    return status, params.get("saga") or None, limit


def _problem(problem: Problem, *headers: tuple[bytes, bytes]) -> Response:
    return problem_response(problem, headers)
