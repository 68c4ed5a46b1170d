"""The root ``meshkit`` command; each feature adds its subcommands here."""

from __future__ import annotations

from typing import Annotated, NoReturn

import typer

import meshkit

app = typer.Typer(
    name="meshkit",
    help="meshkit: a microservices platform for Python.",
    no_args_is_help=True,
    add_completion=False,
    # Plain help, as click prints it: rich markup would take "[gateway]" for a
    # style tag and drop it, and rich's help lists every flag as taking a
    # "<bool>" value.
    rich_markup_mode=None,
    # A crash prints Python's own traceback: a supervised process's output is
    # prefixed line by line, and framed tracebacks become unreadable there.
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:  # noqa: FBT001 (click passes it positionally)
    if value:
        typer.echo(f"meshkit {meshkit.__version__}")
        raise typer.Exit


@app.callback()
def root(
    *,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """meshkit: a microservices platform for Python."""


Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def commands(name: str, help_text: str) -> typer.Typer:
    """A group of subcommands under ``meshkit NAME``, with the root's help settings."""
    group = typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name)
    return group


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with a one-line error, not a traceback."""
    typer.secho(f"meshkit: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="meshkit")  # also under `python -m meshkit`
