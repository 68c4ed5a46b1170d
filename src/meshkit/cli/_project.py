"""``meshkit up`` and ``meshkit status``: run a project and see how it is doing."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from meshkit.cli._app import app, fail
from meshkit.deploy import load_project
from meshkit.deploy._status import StatusReport, collect_status, report_json
from meshkit.deploy._supervisor import Supervisor
from meshkit.errors import ConfigError, EnvironmentFaultError, MeshkitError

Directory = Annotated[Path, typer.Argument(help="The project directory, holding meshkit.toml.")]


@app.command()
def up(directory: Directory = Path()) -> None:
    """Start the control plane and every service of DIRECTORY/meshkit.toml, supervised."""
    try:
        project = load_project(directory)
    except ConfigError as error:
        fail(f"{error}")
    code = asyncio.run(Supervisor(project).run())
    raise typer.Exit(code)


@app.command()
def status(
    directory: Directory = Path(),
    *,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Show every service instance: address, version, health, uptime, restarts."""
    try:
        project = load_project(directory, check_ports=False)
        report = asyncio.run(collect_status(project))
    except EnvironmentFaultError as error:
        fail(f"{error} (is `meshkit up {directory}` running?)", code=1)
    except MeshkitError as error:
        fail(str(error))
    if json:
        sys.stdout.write(report_json(report).decode() + "\n")
        return
    _print_table(report)


def _print_table(report: StatusReport) -> None:
    table = Table("service", "instance", "address", "version", "health", "uptime", "restarts")
    for service in report.services:
        for row in service.instances:
            table.add_row(
                service.name,
                row.id,
                f"{row.host}:{row.port}",
                row.version or "-",
                "[green]healthy" if row.healthy else "[red]down",
                _duration(row.uptime),
                str(row.restarts),
            )
    # Wide enough for instance ids and addresses even when not on a terminal.
    Console(width=max(110, Console().width)).print(table)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
