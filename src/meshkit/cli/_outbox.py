"""``meshkit outbox``: the events a service's outbox parked, because the bus refused them.

They work on the service's own database, not on the bus: ``--sqlite PATH``,
``--postgres DSN``, or ``--service NAME`` for the SQLite database of a
service ``meshkit up`` runs (found in its data directory). Once what
refused an event is fixed (a stream's size limit raised, say), ``requeue``
hands it back to the service's relay.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from meshkit.bus import OutboxStore, ParkedEntry, SqliteOutbox
from meshkit.cli._app import Json, commands, fail
from meshkit.cli._project import ProjectOption, open_project
from meshkit.deploy._state import service_data_dir
from meshkit.errors import EnvironmentFaultError, MeshkitError

T = TypeVar("T")

outbox_app = commands("outbox", "List, requeue and discard the events a service's outbox parked.")

Sqlite = Annotated[
    str | None, typer.Option("--sqlite", metavar="PATH", help="The service's SQLite database file.")
]
Postgres = Annotated[
    str | None,
    typer.Option(
        "--postgres", metavar="DSN", help="The service's PostgreSQL DSN (postgresql://...)."
    ),
]
Service = Annotated[
    str | None,
    typer.Option(
        "--service",
        metavar="NAME",
        help="A service of the project: its SQLite database with an outbox, in its data directory.",
    ),
]


@dataclass(frozen=True, slots=True)
class Database:
    """Where the outbox is, as the options name it: exactly one of the three."""

    sqlite: str | None
    postgres: str | None
    service: str | None
    project: Path | None

    def store(self) -> OutboxStore:
        given = [x for x in (self.sqlite, self.postgres, self.service) if x is not None]
        if len(given) != 1:
            fail("give the service's database: --service NAME, --sqlite PATH or --postgres DSN")
        if self.postgres is not None:
            from meshkit.bus.postgres import PostgresOutbox  # lazily: asyncpg is an extra

            return PostgresOutbox(self.postgres)
        sqlite = self.sqlite if self.sqlite is not None else str(self._service_file())
        if not Path(sqlite).is_file():  # sqlite3 would make an empty one
            fail(f"--sqlite: no database file at {sqlite}")
        return SqliteOutbox(sqlite)

    def _service_file(self) -> Path:
        """The one SQLite file with an outbox in the service's data directory."""
        project = open_project(self.project)
        name = self.service
        assert name is not None
        if name not in project.services:
            known = ", ".join(sorted(project.services)) or "none"
            fail(f"--service: {project.path} has no service {name!r} (it has: {known})")
        directory = service_data_dir(project.data_dir, name)
        found = sorted(p for p in directory.rglob("*") if SqliteOutbox.holds_outbox(p))
        if len(found) == 1:
            return found[0]
        if not found:
            fail(f"--service: no SQLite database with an outbox under {directory}")
        listed = ", ".join(str(p) for p in found)
        return fail(f"--service: {name} has several outboxes, choose with --sqlite: {listed}")


Seqs = Annotated[list[int] | None, typer.Argument(metavar="SEQ", help="Parked events' seqs.")]
Every = Annotated[bool, typer.Option("--all", help="Every parked event.")]


def _run(where: Database, work: Callable[[OutboxStore], Awaitable[T]]) -> T:
    """Run ``work`` on the database's outbox; a failure is one line and exit code 1 or 2."""

    async def main() -> T:
        store = where.store()
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
    service: Service = None,
    sqlite: Sqlite = None,
    postgres: Postgres = None,
    project: ProjectOption = None,
    json: Json = False,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many, oldest first.")] = 100,
) -> None:
    """The parked events, oldest first: seq, topic, message id, when, and why."""
    entries = _run(
        Database(sqlite, postgres, service, project), lambda store: store.parked(limit=limit)
    )
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
    service: Service = None,
    sqlite: Sqlite = None,
    postgres: Postgres = None,
    project: ProjectOption = None,
) -> None:
    """Put parked events back in the outbox, after what it holds, for the relay to publish."""
    chosen = _chosen(seqs, every)
    _say(
        "requeued",
        _run(Database(sqlite, postgres, service, project), lambda store: store.requeue(chosen)),
    )


@outbox_app.command("discard")
def discard(
    seqs: Seqs = None,
    *,
    every: Every = False,
    service: Service = None,
    sqlite: Sqlite = None,
    postgres: Postgres = None,
    project: ProjectOption = None,
) -> None:
    """Drop parked events for good."""
    chosen = _chosen(seqs, every)
    _say(
        "discarded",
        _run(Database(sqlite, postgres, service, project), lambda store: store.discard(chosen)),
    )
