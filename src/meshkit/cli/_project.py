"""How every command finds its project: ``--project/-p DIR``, else ``$MESHKIT_PROJECT``,
else the nearest ``meshkit.toml`` in the working directory or its parents.

Git and Cargo look for their roots the same way, so a command run anywhere
inside a project needs no flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from meshkit._env import PROJECT_ENV, read_project
from meshkit.cli._app import fail
from meshkit.control import load_token
from meshkit.deploy import Project, load_project
from meshkit.errors import ConfigError, EnvironmentFaultError, MeshkitError

C = TypeVar("C")
T = TypeVar("T")

__all__ = [
    "FILE",
    "OLD_FORM",
    "ProjectOption",
    "find_project",
    "open_project",
    "positional_alias",
    "project_token",
    "running_hint",
]

FILE = "meshkit.toml"
_HOW = (
    f"give the project with -p DIR (from the repository root: -p examples/shop),"
    f" or set {PROJECT_ENV}"
)

ProjectOption = Annotated[
    Path | None,
    typer.Option(
        "--project",
        "-p",
        metavar="DIR",
        show_default=False,
        help=(
            f"The project directory, holding {FILE}"
            f" (default: ${PROJECT_ENV}, else the nearest {FILE} here or above)."
        ),
    ),
]


def find_project(given: Path | None, *, cwd: Path | None = None) -> tuple[Path, str]:
    """The project's directory, and what named it: ``given`` ("-p"), else
    ``$MESHKIT_PROJECT``, else the nearest directory up with a meshkit.toml ("").

    A path to the file itself stands for its directory. Ends the command
    with a message saying how to name a project when none is found.
    """
    env = None if given is not None else read_project()
    chosen, source = (given, "-p") if given is not None else (env, PROJECT_ENV)
    if chosen is not None:
        return (chosen.parent if chosen.name == FILE and chosen.is_file() else chosen), source
    here = (cwd or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        if (directory / FILE).is_file():
            return directory, ""
    return fail(f"no {FILE} in {here} or any directory above it: {_HOW}")


def open_project(given: Path | None, *, check_ports: bool = False) -> Project:
    """The checked project ``find_project`` finds; a bad one ends the command naming the problem."""
    directory, source = find_project(given)
    try:
        return load_project(directory, check_ports=check_ports)
    except MeshkitError as error:
        hint = "" if (directory / FILE).is_file() else f" (named by {source})"
        fail(f"{error}{hint}")


def project_token(project: Project) -> str:
    """The token of ``project``, which its first ``meshkit up`` made; says so if there is none."""
    try:
        return load_token(project.data_dir, create=False)
    except ConfigError as error:
        fail(f"{error} (has `{running_hint(project)}` run yet?)", code=1)


def running_hint(project: Project) -> str:
    """The command that runs ``project``, as the user would type it from here."""
    try:
        where = project.directory.relative_to(Path.cwd().resolve())
    except ValueError:
        where = project.directory
    return "meshkit up" if where == Path() else f"meshkit up -p {where}"


# ``meshkit up DIR`` was the form before -p: still taken, unlisted in the help.
OLD_FORM = {"allow_extra_args": True}


def positional_alias(context: typer.Context, project: Path | None, command: str) -> Path | None:
    """The project of ``meshkit COMMAND DIR``, the old form, with a note to use ``-p``;
    else ``project``."""
    if not context.args:
        return project
    if len(context.args) > 1:
        fail(f"unexpected arguments: {' '.join(context.args[1:])}")
    directory = Path(context.args[0])
    if project is not None:
        fail(f"give the project once: -p {project} or the old positional {directory}, not both")
    typer.secho(
        f"meshkit: `meshkit {command} DIR` is deprecated; use `meshkit {command} -p {directory}`",
        err=True,
        fg=typer.colors.YELLOW,
    )
    return directory


def on_plane(
    given: Path | None,
    connect: Callable[[str, str], AbstractAsyncContextManager[C]],
    work: Callable[[C], Awaitable[T]],
) -> T:
    """Run ``work`` with a client of the project's control plane (``connect(url, token)``).

    A failure is one line: exit 1 when the plane cannot be reached (with how
    to start the project), 2 for any other meshkit error.
    """
    project = open_project(given)
    token = project_token(project)

    async def main() -> T:
        plane = project.control_plane
        async with connect(f"http://{plane.host}:{plane.port}", token) as client:
            return await work(client)

    try:
        return asyncio.run(main())
    except EnvironmentFaultError as error:
        fail(f"{error} (is `{running_hint(project)}` running?)", code=1)
    except MeshkitError as error:
        fail(str(error))
