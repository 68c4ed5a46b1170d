"""``meshkit up``, ``status``, ``down`` and ``reset``: run a project, see it, stop it, wipe it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meshkit.cli._app import Json, app, fail
from meshkit.cli._project import (
    OLD_FORM,
    ProjectOption,
    open_project,
    positional_alias,
    project_token,
    running_hint,
)
from meshkit.deploy import Project
from meshkit.deploy._state import running_table
from meshkit.deploy._status import InstanceStatus, StatusReport, collect_status, report_json
from meshkit.deploy._stop import DEFAULT_TIMEOUT, stop_project
from meshkit.deploy._supervisor import Supervisor
from meshkit.errors import EnvironmentFaultError, MeshkitError


@app.command(context_settings=OLD_FORM)
def up(context: typer.Context, *, project: ProjectOption = None) -> None:
    """Start the control plane, every service and the gateway of a project, supervised.

    Ctrl-C (or `meshkit down` from another terminal) stops everything.
    """
    given = positional_alias(context, project, "up")
    running = running_table(open_project(given).data_dir)
    if running is not None:
        fail(f"already running (pid {running.supervisor_pid}); `meshkit down` stops it", code=1)
    # Read again, now checking that its ports are free.
    code = asyncio.run(Supervisor(open_project(given, check_ports=True)).run())
    raise typer.Exit(code)


@app.command(context_settings=OLD_FORM)
def status(context: typer.Context, *, project: ProjectOption = None, json: Json = False) -> None:
    """Show the control plane, the gateway and every service instance: address, version,
    health, uptime, restarts."""
    found = open_project(positional_alias(context, project, "status"))
    project_token(found)  # a project that never ran: say so, and how to run it
    try:
        report = asyncio.run(collect_status(found))
    except EnvironmentFaultError as error:
        fail(f"{error} (is `{running_hint(found)}` running?)", code=1)
    except MeshkitError as error:
        fail(str(error))
    if json:
        sys.stdout.write(report_json(report).decode() + "\n")
        return
    _print_table(report)


@app.command()
def down(
    *,
    project: ProjectOption = None,
    timeout: Annotated[
        float,
        typer.Option(metavar="SECONDS", help="Seconds to wait for everything to stop.", min=1.0),
    ] = DEFAULT_TIMEOUT,
) -> None:
    """Stop a project that `meshkit up` runs in another terminal, as Ctrl-C there would.

    Waits until the supervisor and every process it ran are gone. Exit code
    1 if the project is not running, or if something is still running when
    the wait ends.
    """
    found = open_project(project)
    report = asyncio.run(stop_project(found.data_dir, within=timeout))
    if report is None:
        fail(f"{found.directory} is not running: nothing to stop", code=1)
    names = ", ".join(p.id for p in report.processes) or "no processes"
    if report.left:
        pids = " ".join(str(pid) for pid in report.left)
        fail(f"still running after {timeout:g}s: pid {pids} (asked to stop: {names})", code=1)
    count = len(report.processes)
    typer.echo(f"stopped {found.directory}: {names} ({count} process{'es' if count != 1 else ''})")


@app.command()
def reset(
    *,
    project: ProjectOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a project's data directory: the registry, the bus and every service's database.

    Refused while the project runs (stop it with `meshkit down`).
    """
    found = open_project(project)
    data_dir = found.data_dir
    _refuse_if_running(found)
    if found.directory.is_relative_to(data_dir):
        fail(f"data_dir {data_dir} holds the project itself: delete what you mean by hand")
    if not data_dir.exists():
        typer.echo(f"nothing to reset: {data_dir} does not exist")
        return
    if not yes:
        if not sys.stdin.isatty():
            fail(f"this deletes {data_dir}: confirm with --yes")
        typer.confirm(f"Delete {data_dir} and everything in it?", abort=True)
    try:
        shutil.rmtree(data_dir)
    except OSError as error:
        fail(f"cannot delete {data_dir}: {error}", code=1)
    typer.echo(f"deleted {data_dir}")


def _refuse_if_running(project: Project) -> None:
    running = running_table(project.data_dir)
    if running is not None:
        fail(
            f"{project.directory} is running (pid {running.supervisor_pid}):"
            " stop it first with `meshkit down`",
            code=1,
        )
    cp = project.control_plane
    try:
        with socket.create_connection((cp.host, cp.port), timeout=1.0):
            answered = True
    except OSError:
        answered = False
    if answered:  # a control plane started by hand, not by `meshkit up`
        fail(
            f"something listens on {cp.host}:{cp.port}, the project's control plane port:"
            " stop it before deleting the project's data",
            code=1,
        )


def _print_table(report: StatusReport) -> None:
    table = Table("service", "instance", "address", "version", "health", "uptime", "restarts")
    rows = [("control plane", report.control_plane)]
    if report.gateway is not None:
        rows.append(("gateway", report.gateway))
    rows += [(service.name, row) for service in report.services for row in service.instances]
    for name, row in rows:
        table.add_row(*_cells(name, row))
    # Wide enough for instance ids and addresses even when not on a terminal.
    Console(width=max(110, Console().width)).print(table)


def _cells(name: str, row: InstanceStatus) -> tuple[str, ...]:
    return (
        name,
        row.id,
        f"{row.host}:{row.port}",
        row.version or "-",
        "[green]healthy" if row.healthy else "[red]down",
        _duration(row.uptime),
        str(row.restarts),
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
