"""``meshkit deploy SERVICE`` and ``meshkit rollout``: roll out a service's new definition on
the running project, watch it, and steer it.

``deploy`` reads the service's table in ``meshkit.toml`` as it stands now,
compares it with what ``meshkit up`` runs (its process table says), and
asks the control plane for a rollout with the service's strategy (or
``--strategy``); ``meshkit up`` drives it. Then it follows the rollout to
its end (``--detach``: it does not), exit 0 when it completed, 1 when it
rolled back. ``rollout status`` shows the latest rollout of a service;
``rollout promote|pause|resume|abort|undo`` steer the one under way.
"""

from __future__ import annotations

import enum
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.markup import escape

from meshkit._clock import SystemClock
from meshkit._plane_client import PlaneClient
from meshkit.cli._app import Json, app, commands, fail
from meshkit.cli._project import ProjectOption, on_plane, open_project, running_hint
from meshkit.control import RolloutRecord, rollout_trace_id
from meshkit.deploy import ServiceConfig
from meshkit.deploy._state import running_table
from meshkit.errors import ConfigError
from meshkit.policy import (
    COMMANDS,
    BlueGreenConfig,
    CanaryConfig,
    Phase,
    RollingConfig,
    Rollout,
    RolloutConfig,
)

rollout_app = commands(
    "rollout", "Show and steer a service's rollout: status, promote, pause, resume, abort, undo."
)


class Strategy(enum.StrEnum):
    ROLLING = "rolling"
    BLUE_GREEN = "blue-green"
    CANARY = "canary"


_DEFAULTS: dict[Strategy, type[RolloutConfig]] = {
    Strategy.ROLLING: RollingConfig,
    Strategy.BLUE_GREEN: BlueGreenConfig,
    Strategy.CANARY: CanaryConfig,
}
ServiceArgument = Annotated[str, typer.Argument(metavar="SERVICE", help="The service's name.")]


@asynccontextmanager
async def _plane(url: str, token: str) -> AsyncIterator[PlaneClient]:
    client = PlaneClient(url, token=token)
    try:
        yield client
    finally:
        await client.aclose()


@app.command()
def deploy(
    service: ServiceArgument,
    *,
    strategy: Annotated[
        Strategy | None,
        typer.Option(
            "--strategy",
            help="Instead of the service's [services.NAME.deploy] strategy (default: rolling).",
            show_default=False,
        ),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Start the rollout and return; do not follow it.")
    ] = False,
    project: ProjectOption = None,
) -> None:
    """Roll out SERVICE's definition as meshkit.toml now has it, on the running project."""
    loaded = open_project(project)
    new = loaded.services.get(service)
    if new is None:
        fail(f"no service named {service!r} in {loaded.path}")
    table = running_table(loaded.data_dir)
    if table is None:
        fail(f"the project is not running: start it with `{running_hint(loaded)}`", code=1)
    running = table.definitions.get(service)
    if running is None:
        fail(f"{service} is not running in this project: restart `{running_hint(loaded)}`")
    old = msgspec.convert(running, ServiceConfig)
    if old == new:
        fail(f"nothing to roll out: {service} runs what {loaded.path.name} says", code=1)
    config = new.deploy
    if strategy is not None and not isinstance(config, _DEFAULTS[strategy]):
        config = _DEFAULTS[strategy]()
    try:
        rollout = Rollout(
            service=service,
            config=config,
            stable_version=old.version,
            candidate_version=new.version,
            stable_replicas=sum(1 for p in table.processes if p.service == service),
            replicas=new.replicas,
            started_at=SystemClock().time(),
        )
    except ConfigError as error:
        hint = ""
        if not old.version and not isinstance(config, RollingConfig):
            hint = (
                f" ({service} runs without a version: roll its version out first with"
                f" `meshkit deploy {service} --strategy rolling`)"
            )
        fail(f"{error}{hint}")
    body = msgspec.json.encode(
        {
            "rollout": rollout,
            "stable": msgspec.to_builtins(old),
            "candidate": msgspec.to_builtins(new),
        }
    )

    async def start(plane: PlaneClient) -> RolloutRecord:
        created = await plane.call("POST", "/v1/rollouts", body=body, expect=201)
        record = msgspec.convert(created, RolloutRecord)
        if detach:
            return record
        return await _follow(plane, record)

    record = on_plane(project, _plane, start)
    if detach:
        typer.echo(
            f"rollout {record.id} of {service} started; follow it with:"
            f" meshkit rollout status {service} --watch"
        )
        return
    raise typer.Exit(0 if record.rollout.phase is Phase.COMPLETED else 1)


async def _follow(plane: PlaneClient, record: RolloutRecord) -> RolloutRecord:
    """Print the rollout's history as it grows, until it has finished; the last record."""
    console, clock = Console(highlight=False), SystemClock()
    shown = 0
    while True:
        for line in record.history[shown:]:
            console.print(f"{_clock(line.at)}  {escape(line.text)}")
        shown = len(record.history)
        if record.rollout.phase.finished:
            return record
        await clock.sleep(0.5)
        answer = await plane.call("GET", f"/v1/rollouts/{record.id}")
        record = msgspec.convert(answer, RolloutRecord)


@rollout_app.command("status")
def status(
    service: ServiceArgument,
    *,
    watch: Annotated[
        bool, typer.Option("--watch", help="Follow the rollout until it has finished.")
    ] = False,
    as_json: Json = False,
    project: ProjectOption = None,
) -> None:
    """The latest rollout of SERVICE: its step, traffic, analyses and history."""

    async def show(plane: PlaneClient) -> None:
        answer = await plane.call("GET", f"/v1/rollouts?service={service}&limit=1")
        found = msgspec.convert(answer["rollouts"], list[RolloutRecord])
        if not found:
            fail(f"{service} has never been rolled out", code=1)
        record = found[0]
        if as_json:
            sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
            return
        _print(record)
        if watch and not record.rollout.phase.finished:
            await _follow(plane, record)

    on_plane(project, _plane, show)


def _command(name: str) -> None:
    def steer(service: ServiceArgument, project: ProjectOption = None) -> None:
        async def send(plane: PlaneClient) -> dict[str, Any]:
            answer: dict[str, Any] = await plane.call("POST", f"/v1/rollouts/{service}/{name}")
            return answer

        record = msgspec.convert(on_plane(project, _plane, send), RolloutRecord)
        asked = f"{name} requested"
        start = max(i for i, line in enumerate(record.history) if line.text == asked)
        for line in record.history[start:]:
            typer.echo(f"rollout {record.id} of {service}: {line.text}")

    steer.__doc__ = {
        "promote": "Skip what is left: a canary's steps, a blue-green's checks or wait.",
        "pause": "Hold SERVICE's rollout where it is.",
        "resume": "Go on with a paused rollout.",
        "abort": "Roll SERVICE back to what it ran before the rollout.",
        "undo": "Switch a blue-green rollout back at once; else, as abort.",
    }[name]
    rollout_app.command(name)(steer)


for _name in COMMANDS:
    _command(_name)


def _print(record: RolloutRecord) -> None:
    console = Console(highlight=False)
    rollout = record.rollout
    state = rollout.phase.value + (" (paused)" if rollout.paused else "")
    console.print(
        f"rollout {record.id} of {rollout.service}: {rollout.strategy},"
        f" {rollout.stable_version or '-'} -> {rollout.candidate_version or '-'}, [bold]{state}[/]"
    )
    if isinstance(rollout.config, CanaryConfig) and rollout.step >= 0:
        steps = rollout.config.steps
        done = rollout.step + (1 if rollout.phase is not Phase.PROGRESSING else 0)
        bar = "#" * done + "." * (len(steps) - done)
        shares = ", ".join(f"{s}%" for s in steps)
        console.print(escape(f"steps  [{bar}] {done}/{len(steps)}: {shares}"))
    traffic = "no split" if rollout.weight is None else f"{rollout.weight}% to the candidate"
    console.print(f"traffic  {traffic}")
    for analysis in rollout.analyses[-3:]:
        verdict = "passed" if analysis.passed else "failed: " + "; ".join(analysis.reasons())
        canary = analysis.canary
        console.print(
            f"analysis {_clock(analysis.at)}  {canary.requests} requests,"
            f" {canary.failures} failed: {escape(verdict)}"
        )
    if rollout.reason:
        console.print(f"reason  {escape(rollout.reason)}")
    console.print(f"trace  {rollout_trace_id(record)} (meshkit traces show ID)")
    for line in record.history:
        console.print(f"  {_clock(line.at)}  {escape(line.text)}")


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))
