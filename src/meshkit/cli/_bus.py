"""``meshkit bus`` and ``meshkit dlq``: publish, watch, see the groups, handle dead letters.

They talk to the bus of a running project (``meshkit up``): its control
plane's embedded broker, with the project's token.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from meshkit._signals import until_stopped
from meshkit.bus import DeadLetter, GroupInfo, Message, RemoteBus, subscribe
from meshkit.cli._app import Json, commands, fail
from meshkit.cli._project import ProjectOption, on_plane
from meshkit.errors import MeshkitError

T = TypeVar("T")

bus_app = commands("bus", "Publish to and watch the project's event bus, and see its groups.")
dlq_app = commands("dlq", "List, inspect, replay and purge dead letters.")
groups_app = typer.Typer(
    help="Consumer groups: `meshkit bus groups` lists them, `delete` forgets one.",
    rich_markup_mode=None,
    invoke_without_command=True,
)
bus_app.add_typer(groups_app, name="groups")


def _run(given: Path | None, work: Callable[[RemoteBus], Awaitable[T]]) -> T:
    """Run ``work`` against the project's bus; a failure is one line."""
    return on_plane(given, lambda url, token: RemoteBus(url, token=token), work)


@bus_app.command("publish")
def publish(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic, like order.created.")],
    payload: Annotated[
        str, typer.Argument(metavar="PAYLOAD", help="The message: one JSON document.")
    ],
    *,
    key: Annotated[str | None, typer.Option(metavar="KEY", help="Ordering key.")] = None,
    message_id: Annotated[
        str | None, typer.Option("--id", metavar="ID", help="Message id (repeats are dropped).")
    ] = None,
    project: ProjectOption = None,
) -> None:
    """Publish one message; prints its id once it is durable."""
    published = _run(
        project,
        lambda bus: bus.publish(topic, payload.encode(), key=key, message_id=message_id),
    )
    typer.echo(
        f"{published.id}{' (duplicate: not published again)' if published.duplicate else ''}"
    )


@bus_app.command("tail")
def tail(
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="Topic to follow.")],
    *,
    group: Annotated[
        str | None,
        typer.Option(
            metavar="GROUP",
            help="Group to read in (default: a new one, from the earliest message).",
        ),
    ] = None,
    project: ProjectOption = None,
) -> None:
    """Print the topic's messages as JSON lines, oldest kept first, until Ctrl-C or SIGTERM.

    Without --group it reads in a group of its own, deleted when it stops.
    """
    name = group or f"tail-{uuid.uuid4().hex[:12]}"

    async def follow(bus: RemoteBus) -> None:
        async def show(message: Message) -> None:
            line = {
                "id": message.id,
                "topic": message.topic,
                "published": message.published,
                "key": message.key,
                "headers": message.headers,
                "payload": msgspec.Raw(message.payload),
            }
            sys.stdout.write(msgspec.json.encode(line).decode() + "\n")
            sys.stdout.flush()

        typer.echo(
            f"following {topic} in group {name}" + ("" if group else " (deleted on exit)"),
            err=True,
        )
        try:
            async with subscribe(bus, topic, name, show, concurrency=1):
                await until_stopped()
        finally:
            if group is None:  # its own: nothing should keep its place
                with contextlib.suppress(MeshkitError):
                    await bus.delete_group(topic, name)

    _run(project, follow)


def _letter_json(letter: DeadLetter) -> dict[str, object]:
    message = letter.message
    return {
        "id": letter.id,
        "topic": message.topic,
        "group": letter.group,
        "deliveries": letter.deliveries,
        "error": letter.error,
        "failed": letter.failed,
        "message_id": message.id,
        "key": message.key,
        "headers": message.headers,
        "payload": msgspec.Raw(message.payload),
    }


@dlq_app.command("list")
def dlq_list(
    *,
    json: Json = False,
    limit: Annotated[int, typer.Option(metavar="N", help="At most this many, oldest first.")] = 100,
    project: ProjectOption = None,
) -> None:
    """The dead letters, oldest first: id, topic, group, deliveries and the last error."""
    letters = _run(project, lambda bus: bus.dead_letters(limit=limit))
    if json:
        sys.stdout.write(msgspec.json.encode([_letter_json(x) for x in letters]).decode() + "\n")
        return
    if not letters:
        typer.echo("no dead letters")
        return
    table = Table("id", "topic", "group", "deliveries", "failed", "error", "message id")
    for letter in letters:
        failed = datetime.fromtimestamp(letter.failed, UTC).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            letter.id,
            letter.topic,
            letter.group,
            str(letter.deliveries),
            failed,
            letter.error,
            letter.message.id,
        )
    Console(width=max(120, Console().width)).print(table)


@dlq_app.command("show")
def dlq_show(
    letter_id: Annotated[str, typer.Argument(metavar="ID", help="A dead letter's id.")],
    *,
    project: ProjectOption = None,
) -> None:
    """One dead letter as JSON, with its message's payload and headers."""
    letter = _run(project, lambda bus: bus.dead_letter(letter_id))
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(_letter_json(letter))).decode() + "\n")


@dlq_app.command("replay")
def dlq_replay(
    letter_id: Annotated[
        str | None, typer.Argument(metavar="ID", help="A dead letter's id.")
    ] = None,
    *,
    every: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    project: ProjectOption = None,
) -> None:
    """Deliver a dead letter (or all) again to the group that gave up on it."""
    if (letter_id is None) == (not every):
        fail("give one dead letter's ID or --all")

    async def replay(bus: RemoteBus) -> list[str]:
        ids = (
            [letter_id]
            if letter_id is not None
            else [x.id for x in await bus.dead_letters(limit=10_000)]
        )
        for one in ids:
            await bus.replay(one)
        return ids

    replayed = _run(project, replay)
    typer.echo(f"replayed {len(replayed)} dead letter{'s' if len(replayed) != 1 else ''}")


@dlq_app.command("purge")
def dlq_purge(
    letter_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="ID", help="Dead letters to remove."),
    ] = None,
    *,
    every: Annotated[bool, typer.Option("--all", help="Remove every dead letter.")] = False,
    project: ProjectOption = None,
) -> None:
    """Remove dead letters for good: the ones named, or all of them with --all."""
    if bool(letter_ids) == every:
        fail("give the dead letters' IDs, or --all")
    purged = _run(project, lambda bus: bus.purge(None if every else letter_ids))
    typer.echo(f"purged {purged} dead letter{'s' if purged != 1 else ''}")


# -- groups ---------------------------------------------------------------------------


def _group_json(group: GroupInfo) -> dict[str, object]:
    return {"topic": group.topic, "group": group.group, "lag": group.lag, "pending": group.pending}


@groups_app.callback()
def groups(context: typer.Context, *, json: Json = False, project: ProjectOption = None) -> None:
    """Every consumer group on the bus: its topic, lag (messages it was not handed yet)
    and pending (handed out, neither acked nor dead-lettered yet)."""
    if context.invoked_subcommand is not None:
        context.obj = project  # `bus groups -p DIR delete ...` names it here
        return
    found = _run(project, lambda bus: bus.groups())
    if json:
        sys.stdout.write(msgspec.json.encode([_group_json(g) for g in found]).decode() + "\n")
        return
    if not found:
        typer.echo("no consumer groups")
        return
    table = Table("topic", "group", "lag", "pending")
    for group in found:
        lag = "?" if group.lag is None else str(group.lag)
        table.add_row(group.topic, group.group, lag, str(group.pending))
    Console(width=max(100, Console().width)).print(table)


@groups_app.command("delete")
def delete_group(
    context: typer.Context,
    topic: Annotated[str, typer.Argument(metavar="TOPIC", help="The group's topic.")],
    group: Annotated[str, typer.Argument(metavar="GROUP", help="The group.")],
    *,
    project: ProjectOption = None,
) -> None:
    """Forget a group: where it stands and what it holds (its dead letters stay).

    A member still running gets an error on its next fetch; one that joins
    again starts at the earliest message kept.
    """
    given = project if project is not None else context.obj
    _run(given, lambda bus: bus.delete_group(topic, group))
    typer.echo(f"deleted group {group} on {topic}")
