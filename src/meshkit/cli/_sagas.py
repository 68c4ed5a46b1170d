"""``meshkit sagas``: list a project's saga runs, show one step by step, retry a stuck one.

They ask every instance of the project's services, found in its control
plane's registry, for its ``/-/sagas`` (``meshkit.deploy._sagas``), with
the project's token: the project must be running (``meshkit up``).
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meshkit._clock import SystemClock
from meshkit.cli._app import Json, commands, fail
from meshkit.cli._project import ProjectOption, on_plane
from meshkit.deploy._sagas import Found, SagaClient
from meshkit.saga import Failure, Status
from meshkit.service._saga_api import RunSummary, StepView

T = TypeVar("T")

sagas_app = commands(
    "sagas", "List the project's saga runs, show one step by step, retry a stuck one."
)

StatusOption = Annotated[
    Status | None,
    typer.Option("--status", help="Only the runs in this state.", show_default=False),
]
ServiceOption = Annotated[
    str | None,
    typer.Option("--service", metavar="NAME", help="Ask only this service's instances."),
]
RunId = Annotated[str, typer.Argument(metavar="ID", help="A saga run's id.")]

_STATUS_STYLE = {
    "running": "cyan",
    "compensating": "yellow",
    "stuck": "bold red",
    "completed": "green",
    "compensated": "magenta",
}
_PHASE_STYLE = {
    "pending": "dim",
    "started": "cyan",
    "waiting": "yellow",
    "done": "green",
    "failed": "red",
    "undoing": "yellow",
    "undone": "magenta",
}


def _run(given: Path | None, work: Callable[[SagaClient], Awaitable[T]]) -> T:
    """Run ``work`` with a client of the project's services; a failure is one line."""
    return on_plane(given, lambda url, token: SagaClient(url, token=token), work)


def _console() -> Console:
    # Wide enough for ids and errors even when not on a terminal.
    return Console(width=max(120, Console().width))


@sagas_app.command("list")
def list_runs(
    *,
    status: StatusOption = None,
    service: ServiceOption = None,
    saga: Annotated[
        str | None, typer.Option("--saga", metavar="NAME", help="Only the runs of this saga.")
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=10_000, help="At most this many, newest first.")
    ] = 100,
    json: Json = False,
    project: ProjectOption = None,
) -> None:
    """The saga runs, most recently changed first: service, saga, status, the step it is at,
    and why it turned back or is stuck. Exits 1 when an instance did not answer."""
    listing = _run(
        project, lambda c: c.runs(service=service, status=status, saga=saga, limit=limit)
    )
    for why in listing.unanswered:
        typer.secho(f"meshkit: {why}", err=True, fg=typer.colors.YELLOW)
    if not listing.with_sagas and not listing.unanswered:
        fail(f"service {service!r} runs no sagas" if service else "no service runs sagas")
    if json:
        rows = [_json(name, run) for name, run in listing.runs]
        sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
    elif not listing.runs:
        among = " among the instances that answered" if listing.unanswered else ""
        typer.echo(f"no {status} saga runs{among}" if status else f"no saga runs{among}")
    else:
        _print_runs(listing.runs)
    if listing.unanswered:
        raise typer.Exit(1)  # the list may lack runs: a script must not take it as whole


def _print_runs(runs: Sequence[tuple[str, RunSummary]]) -> None:
    now = SystemClock().time()
    table = Table("run", "service", "saga", "status", "step", "started", "changed", "why")
    for name, run in runs:
        table.add_row(
            escape(run.id),
            name,
            escape(run.saga),
            _status(run.status),
            escape(run.step or "-"),
            _ago(run.created, now),
            _ago(run.updated, now),
            escape(_why(run)),
        )
    _console().print(table)


@sagas_app.command("show")
def show(
    run_id: RunId,
    *,
    service: ServiceOption = None,
    json: Json = False,
    project: ProjectOption = None,
) -> None:
    """One run step by step: each step's action and compensation, their attempts,
    how long they took, and the last error."""
    found = _run(project, lambda c: c.find(run_id, service=service))
    if json:
        sys.stdout.write(msgspec.json.encode(_json(found.service, found.run)).decode() + "\n")
        return
    _print_run(found, SystemClock().time())


@sagas_app.command("retry")
def retry(run_id: RunId, *, service: ServiceOption = None, project: ProjectOption = None) -> None:
    """Set a stuck run going again: its stuck step gets its attempts again."""
    found = _run(project, lambda c: c.retry(run_id, service=service))
    run = found.run
    typer.echo(
        f"retried saga run {run.id} ({run.saga}) on {found.instances[0].id}: now {run.status};"
        f" follow it with `meshkit sagas show {run.id}`"
    )


# -- output -----------------------------------------------------------------------------


def _json(service: str, run: RunSummary) -> dict[str, Any]:
    data: dict[str, Any] = msgspec.to_builtins(run)
    return {"id": data.pop("id"), "service": service, **data}


def _status(status: str) -> str:
    return f"[{_STATUS_STYLE.get(status, 'default')}]{status}[/]"


def _failed(failure: Failure | None) -> str:
    if failure is None:
        return ""
    return f"{failure.step}: {failure.detail}" + (f" ({failure.status})" if failure.status else "")


def _why(run: RunSummary) -> str:
    """Why a run is stuck, else why it turned back; empty if neither."""
    return run.note or _failed(run.failure)


def _print_run(found: Found, now: float) -> None:
    run = found.run
    console = _console()
    fields = Table.grid(padding=(0, 2))
    fields.add_column(style="bold")
    fields.add_column()
    fields.add_row("run", escape(run.id))
    fields.add_row("saga", f"{escape(run.saga)} (service {found.service})")
    at = f" at step {escape(run.step)}" if run.step else ""
    fields.add_row("status", _status(run.status) + at)
    fields.add_row("started", f"{_ago(run.created, now)}, changed {_ago(run.updated, now)}")
    if run.wake is not None and run.wake > now:
        fields.add_row("next try", f"in {_duration(run.wake - now)}")
    if run.failure is not None:
        fields.add_row("failure", escape(_failed(run.failure)))
    if run.note:
        fields.add_row("stuck", escape(run.note))
    console.print(fields)
    table = Table("step", "part", "phase", "attempts", "took", "last error")
    going = run.status in ("running", "compensating")
    for step in run.steps:
        for row in _step_rows(step, now if going else None):
            table.add_row(*row)
    console.print(table)


def _step_rows(step: StepView, now: float | None) -> list[tuple[str, ...]]:
    """The action's row, then the compensation's once it began; ``now`` if the run goes on."""
    undoing = step.phase in ("undoing", "undone")
    action_phase: str = step.phase
    if undoing:  # the action ended before: done, or its outcome stayed unknown
        action_phase = "unknown" if step.error is not None else "done"
    going = step.phase in ("started", "waiting")
    action_took = _took(step.started, step.duration, now if going else None)
    rows: list[tuple[str, ...]] = [
        (
            escape(step.name),
            "local" if step.local else "action",
            _phase(action_phase),
            str(step.attempts),
            action_took,
            escape(step.error or ""),
        )
    ]
    if undoing or step.undo_attempts:
        going = step.phase == "undoing"
        undo_took = _took(step.undo_started, step.undo_duration, now if going else None)
        rows.append(
            (
                "",
                "compensation",
                _phase(step.phase),
                str(step.undo_attempts),
                undo_took,
                escape(step.undo_error or ""),
            )
        )
    return rows


def _phase(phase: str) -> str:
    return f"[{_PHASE_STYLE.get(phase, 'default')}]{phase}[/]"


def _took(started: float | None, duration: float | None, now: float | None) -> str:
    """How long it took once it ended; while it goes on (``now`` given), how long so far."""
    if duration is not None:
        return _duration(duration)
    if started is not None and now is not None:
        return f"{_duration(max(0.0, now - started))} so far"
    return "-"


def _duration(seconds: float) -> str:
    """``850 ms``, ``2.4 s``, ``3m05s``, ``2h10m``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _ago(then: float, now: float) -> str:
    """How long before ``now``, coarsely: ``just now``, ``12s ago``, ``5m ago``, ``3d ago``."""
    seconds = int(max(0.0, now - then))
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
