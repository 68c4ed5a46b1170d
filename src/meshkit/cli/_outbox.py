"""``meshkit outbox``: the events a service's outbox parked, because the bus refused them.

They work on the service's own database, not on the bus: ``--sqlite PATH``
or ``--postgres DSN``. Once what refused an event is fixed (a stream's size
limit raised, say), ``requeue`` hands it back to the service's relay.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from meshkit.bus import OutboxStore, ParkedEntry, SqliteOutbox
from meshkit.cli._app import app, fail
from meshkit.errors import EnvironmentFaultError, MeshkitError

T = TypeVar("T")

outbox_app = typer.Typer(
    help="List, requeue and discard the events a service's outbox parked.", no_args_is_help=True
)
app.add_typer(outbox_app, name="outbox")

Sqlite = Annotated[str | None, typer.Option("--sqlite", help="The service's SQLite database file.")]
Postgres = Annotated[
    str | None, typer.Option("--postgres", help="The service's PostgreSQL DSN (postgresql://...).")
]
Seqs = Annotated[list[int] | None, typer.Argument(metavar="[SEQ]...", help="Parked events' seqs.")]
Every = Annotated[bool, typer.Option("--all", help="Every parked event.")]


def _store(sqlite: str | None, postgres: str | None) -> OutboxStore:
    if (sqlite is None) == (postgres is None):
        fail("give the service's database: --sqlite PATH or --postgres DSN")
    if sqlite is not None:
        if not Path(sqlite).is_file():  # sqlite3 would make an empty one
            fail(f"--sqlite: no database file at {sqlite}")
        return SqliteOutbox(sqlite)
    from meshkit.bus.postgres import PostgresOutbox  # lazily: asyncpg is an extra

    assert postgres is not None
    return PostgresOutbox(postgres)


def _run(
    sqlite: str | None, postgres: str | None, work: Callable[[OutboxStore], Awaitable[T]]
) -> T:
    """Run ``work`` on the database's outbox; a failure is one line and exit code 1 or 2."""

    async def main() -> T:
        store = _store(sqlite, postgres)
        try:
            return await work(store)
        finally:
            await store.aclose()

    try:
        return asyncio.run(main())
    except EnvironmentFaultError as error:
        fail(str(error), code=1)
    except MeshkitError as error:
        fail(str(error))


def _chosen(seqs: list[int] | None, every: bool) -> list[int] | None:  # noqa: FBT001 (a flag)
    if bool(seqs) == every:
        fail("give the parked events' SEQs, or --all")
    return None if every else seqs


def _entry_json(entry: ParkedEntry) -> dict[str, object]:
    message = entry.message
    return {
        "seq": entry.seq,
        "topic": message.topic,
        "id": message.id,
        "key": message.key,
        "headers": message.headers,
        "error": entry.error,
        "parked": entry.parked,
        "payload": msgspec.Raw(message.payload),
    }


@outbox_app.command("parked")
def parked(
    *,
    sqlite: Sqlite = None,
    postgres: Postgres = None,
    json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    limit: Annotated[int, typer.Option(help="At most this many, oldest first.")] = 100,
) -> None:
    """The parked events, oldest first: seq, topic, message id, when, and why."""
    entries = _run(sqlite, postgres, lambda store: store.parked(limit=limit))
    if json:
        sys.stdout.write(msgspec.json.encode([_entry_json(e) for e in entries]).decode() + "\n")
        return
    if not entries:
        typer.echo("no parked events")
        return
    table = Table("seq", "topic", "message id", "parked", "error")
    for entry in entries:
        when = datetime.fromtimestamp(entry.parked, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(str(entry.seq), entry.message.topic, entry.message.id, when, entry.error)
    Console(width=max(120, Console().width)).print(table)


def _say(done: str, count: int) -> None:
    typer.echo(f"{done} {count} parked event{'s' if count != 1 else ''}")


@outbox_app.command("requeue")
def requeue(
    seqs: Seqs = None,
    *,
    every: Every = False,
    sqlite: Sqlite = None,
    postgres: Postgres = None,
) -> None:
    """Put parked events back in the outbox, after what it holds, for the relay to publish."""
    chosen = _chosen(seqs, every)
    _say("requeued", _run(sqlite, postgres, lambda store: store.requeue(chosen)))


@outbox_app.command("discard")
def discard(
    seqs: Seqs = None,
    *,
    every: Every = False,
    sqlite: Sqlite = None,
    postgres: Postgres = None,
) -> None:
    """Drop parked events for good."""
    chosen = _chosen(seqs, every)
    _say("discarded", _run(sqlite, postgres, lambda store: store.discard(chosen)))
