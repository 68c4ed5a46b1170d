"""``meshkit logs`` and ``meshkit traces``: what the control plane keeps of the project's telemetry.

They ask the running project's control plane (``meshkit up``) through its
query API (``meshkit.control._telemetry_api``) with the project's token.
Durations, levels and trace ids are checked here first, with the same
parsers the plane uses, so a typo is one line naming the option.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, TypeVar
from urllib.parse import urlencode

import msgspec
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from meshkit._clock import SystemClock
from meshkit._plane_client import PlaneClient
from meshkit._signals import until_stopped
from meshkit.cli._app import Json, app, fail
from meshkit.cli._project import ProjectOption, on_plane
from meshkit.errors import InvalidArgumentError
from meshkit.observe import (
    LogPage,
    LogView,
    SpanView,
    TraceList,
    TraceSummary,
    TraceView,
    parse_duration,
    parse_level,
)

T = TypeVar("T")

FOLLOW_INTERVAL = 0.5  # seconds between asks while following: new lines show within it
_BAR = 40  # characters of a waterfall's bars
_LEVEL_STYLE = {
    "TRACE": "dim",
    "DEBUG": "dim",
    "WARN": "yellow",
    "ERROR": "red",
    "FATAL": "bold red",
}

Since = Annotated[
    str | None,
    typer.Option(
        "--since",
        metavar="DURATION",
        help="Only the last DURATION: 30s, 10m, 2h, 1d.",
        show_default=False,
    ),
]


@contextlib.asynccontextmanager
async def _connect(url: str, token: str) -> AsyncIterator[PlaneClient]:
    client = PlaneClient(url, token=token)
    try:
        yield client
    finally:
        await client.aclose()


def _run(given: Path | None, work: Callable[[PlaneClient], Awaitable[T]]) -> T:
    return on_plane(given, _connect, work)


def _checked(parse: Callable[[str, str], T], option: str, value: str) -> T:
    try:
        return parse(option, value)
    except InvalidArgumentError as error:
        fail(str(error))


def _trace_id(value: str, option: str) -> str:
    trace_id = value.strip().lower()
    if len(trace_id) != 32 or any(c not in "0123456789abcdef" for c in trace_id):
        fail(f"{option}: must be a trace id of 32 hex digits, got {value!r}")
    if trace_id == "0" * 32:  # W3C Trace Context: all zeros is no trace
        fail(f"{option}: all zeros is not a trace id")
    return trace_id


def _console() -> Console:
    return Console(width=max(120, Console().width), highlight=False)


# -- meshkit logs ------------------------------------------------------------------------


@app.command("logs")
def logs(
    services: Annotated[
        list[str] | None,
        typer.Argument(metavar="SERVICE", help="Only these services' lines.", show_default=False),
    ] = None,
    *,
    level: Annotated[
        str | None,
        typer.Option(
            "--level",
            metavar="LEVEL",
            help="Only this level and above: trace, debug, info, warn, error, fatal.",
            show_default=False,
        ),
    ] = None,
    trace: Annotated[
        str | None,
        typer.Option(
            "--trace", metavar="ID", help="Only the lines of this trace.", show_default=False
        ),
    ] = None,
    since: Since = None,
    grep: Annotated[
        str | None,
        typer.Option(
            "--grep",
            metavar="TEXT",
            help="Only lines containing TEXT (any case).",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", metavar="N", min=1, max=10_000, help="The newest N lines."),
    ] = 100,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Then print new lines as they come, until Ctrl-C."),
    ] = False,
    json: Json = False,
    project: ProjectOption = None,
) -> None:
    """The project's log lines, oldest first: time, level, service, instance, message, trace.

    With --json, one JSON object a line."""
    params: list[tuple[str, str]] = [("service", name) for name in services or []]
    if level is not None:
        params.append(("level", str(_checked(parse_level, "--level", level))))
    if trace is not None:
        params.append(("trace_id", _trace_id(trace, "--trace")))
    if since is not None:
        _checked(parse_duration, "--since", since)
        params.append(("since", since))
    if grep:
        params.append(("grep", grep))

    def show(page: LogPage) -> None:
        for record in page.logs:
            _print_log(record, json=json)
        sys.stdout.flush()

    async def work(client: PlaneClient) -> None:
        page = await _logs(client, [*params, ("limit", str(limit))])
        show(page)
        if not page.logs and not follow and not json:
            typer.echo("no log lines")
        if follow:
            await _follow(client, params, page.cursor, show)

    _run(project, work)


async def _logs(client: PlaneClient, params: list[tuple[str, str]]) -> LogPage:
    page: LogPage = await client.call(
        "GET", f"/v1/query/logs?{urlencode(params)}", kind=LogPage, invalid=_refused
    )
    return page


async def _follow(
    client: PlaneClient,
    params: list[tuple[str, str]],
    cursor: int,
    show: Callable[[LogPage], None],
) -> None:
    """Ask for what came after ``cursor`` again and again, until SIGINT or SIGTERM."""
    clock = SystemClock()

    async def poll() -> None:
        after = cursor
        while True:
            page = await _logs(client, [*params, ("after", str(after)), ("limit", "1000")])
            show(page)
            if page.cursor == after or len(page.logs) < 1000:
                await clock.sleep(FOLLOW_INTERVAL)
            after = page.cursor

    polling = asyncio.ensure_future(poll())
    stopped = asyncio.ensure_future(until_stopped())
    try:
        done, _ = await asyncio.wait((polling, stopped), return_when=asyncio.FIRST_COMPLETED)
        if polling in done:
            polling.result()  # its error, such as the plane gone away
    finally:
        for task in (polling, stopped):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _refused(field: str, detail: str) -> Exception:
    return InvalidArgumentError(field, detail)


def _print_log(record: LogView, *, json: bool) -> None:
    if json:
        sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        return
    when = _local(record.time_ns).strftime("%H:%M:%S.%f")[:-3]
    severity = (record.severity or "-").upper()
    style = _LEVEL_STYLE.get(severity.rstrip("0123456789"), "")
    who = f"{record.service}[{record.instance}]" if record.instance else record.service
    trace = f"  trace={record.trace_id}" if record.trace_id else ""
    level = typer.style(f"{severity:<5}", fg=_color(style)) if style else f"{severity:<5}"
    typer.echo(f"{when} {level} {who}: {record.body}{trace}")


def _local(nanoseconds: int) -> datetime:
    return datetime.fromtimestamp(nanoseconds / 1e9, UTC).astimezone()


def _color(style: str) -> str | None:
    return {"dim": typer.colors.BRIGHT_BLACK, "yellow": typer.colors.YELLOW}.get(
        style, typer.colors.RED
    )


# -- meshkit traces ----------------------------------------------------------------------

traces_app = typer.Typer(
    help="List the project's traces (newest first), or draw one with `meshkit traces show ID`.",
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(traces_app, name="traces")


@traces_app.callback()
def traces(
    context: typer.Context,
    *,
    service: Annotated[
        str | None,
        typer.Option(
            "--service",
            metavar="NAME",
            help="Only traces crossing this service.",
            show_default=False,
        ),
    ] = None,
    errors: Annotated[
        bool, typer.Option("--errors", help="Only traces with a failed span.")
    ] = False,
    min_duration: Annotated[
        str | None,
        typer.Option(
            "--min-duration",
            metavar="DURATION",
            help="Only traces lasting this long: 100ms, 2s.",
            show_default=False,
        ),
    ] = None,
    since: Since = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", min=1, max=1000, help="At most N traces.")
    ] = 50,
    json: Json = False,
    project: ProjectOption = None,
) -> None:
    """The traces, newest first: id, start, duration, spans, root service and operation,
    the services crossed, and whether a span failed."""
    context.obj = project
    if context.invoked_subcommand is not None:
        return
    params: list[tuple[str, str]] = [("limit", str(limit))]
    if service:
        params.append(("service", service))
    if errors:
        params.append(("errors", "true"))
    if min_duration is not None:
        _checked(parse_duration, "--min-duration", min_duration)
        params.append(("min_duration", min_duration))
    if since is not None:
        _checked(parse_duration, "--since", since)
        params.append(("since", since))

    async def work(client: PlaneClient) -> TraceList:
        listing: TraceList = await client.call(
            "GET", f"/v1/query/traces?{urlencode(params)}", kind=TraceList, invalid=_refused
        )
        return listing

    listing = _run(project, work)
    if json:
        sys.stdout.write(msgspec.json.encode(listing.traces).decode() + "\n")
    elif not listing.traces:
        typer.echo("no traces")
    else:
        _print_traces(listing.traces)


@traces_app.command("show")
def show(
    context: typer.Context,
    trace_id: Annotated[str, typer.Argument(metavar="ID", help="A trace id (32 hex digits).")],
    *,
    json: Json = False,
    project: ProjectOption = None,
) -> None:
    """One trace as a waterfall: each span's service, operation, start offset, duration,
    status and a bar, children indented under their parent."""
    wanted = _trace_id(trace_id, "ID")

    async def work(client: PlaneClient) -> TraceView:
        found: TraceView = await client.call("GET", f"/v1/query/traces/{wanted}", kind=TraceView)
        return found

    found = _run(project if project is not None else context.obj, work)
    if json:
        sys.stdout.write(msgspec.json.encode(found).decode() + "\n")
        return
    _print_waterfall(found)


def _print_traces(summaries: list[TraceSummary]) -> None:
    table = Table("started", "duration", "spans", "service", "operation", "services", "")
    # Whole, never folded: it is what `meshkit traces show` and `logs --trace` take.
    table.add_column("trace", no_wrap=True, min_width=32)
    for summary in summaries:
        table.add_row(
            _local(summary.start_ns).strftime("%H:%M:%S"),
            _duration(summary.duration_ns),
            str(summary.spans),
            escape(summary.service),
            escape(summary.name),
            escape(", ".join(summary.services)),
            "[red]error[/]" if summary.error else "",
            summary.trace_id,
        )
    _console().print(table)


def _tree(spans: list[SpanView]) -> list[tuple[int, SpanView]]:
    """``(depth, span)`` in waterfall order: each span after its parent, siblings by start.

    A span whose parent is not kept (not sent, or not yet) is shown as a root."""
    ids = {span.span_id for span in spans}
    children: dict[str, list[SpanView]] = {}
    for span in spans:  # already by start time
        parent = span.parent_span_id if span.parent_span_id in ids else ""
        children.setdefault(parent, []).append(span)
    ordered: list[tuple[int, SpanView]] = []
    stack = [(0, span) for span in reversed(children.get("", []))]
    while stack:
        depth, span = stack.pop()
        ordered.append((depth, span))
        stack.extend((depth + 1, child) for child in reversed(children.get(span.span_id, [])))
    return ordered


def _print_waterfall(trace: TraceView) -> None:
    start = min(span.start_ns for span in trace.spans)
    end = max(span.end_ns for span in trace.spans)
    total = max(1, end - start)
    services = {span.service for span in trace.spans}
    console = _console()
    console.print(
        f"trace {trace.trace_id}: {len(trace.spans)} spans across {len(services)} services"
        f" in {_duration(end - start)}"
    )
    # The bars keep their width and the names their line: what gives way to a
    # narrow terminal is a failed span's message (its own row), which wraps.
    tree = _tree(trace.spans)
    table = Table(
        Column("service", no_wrap=True),
        Column("operation", min_width=max(len("  " * d + s.name) for d, s in tree)),
        Column("start", no_wrap=True),
        Column("duration", no_wrap=True),
        Column("status", no_wrap=True),
        Column("", min_width=_BAR, no_wrap=True),
        box=None,
    )
    for depth, span in tree:
        failed = span.status == "error"
        table.add_row(
            escape(span.service),
            escape("  " * depth + span.name),
            f"+{_duration(span.start_ns - start)}",
            _duration(span.duration_ns),
            "[red]error[/]" if failed else span.status,
            _bar(span.start_ns - start, span.duration_ns, total, "red" if failed else "cyan"),
        )
        if failed and span.status_message:
            # On a line of its own under the operation, where it may wrap.
            said = Text("  " * (depth + 1) + span.status_message, style="red", no_wrap=False)
            table.add_row("", said, "", "", "", "")
    console.print(table)


def _bar(offset: int, duration: int, total: int, style: str) -> Text:
    """The span's place in the trace, ``_BAR`` characters for the whole; at least one."""
    first = min(_BAR - 1, offset * _BAR // total)
    width = max(1, min(_BAR - first, round(duration * _BAR / total)))
    return Text(" " * first) + Text("█" * width, style=style) + Text(" " * (_BAR - first - width))


def _duration(nanoseconds: int) -> str:
    """``850 µs``, ``12.3 ms``, ``2.40 s``."""
    if nanoseconds < 1_000_000:
        return f"{nanoseconds / 1000:.0f} µs"
    if nanoseconds < 1_000_000_000:
        return f"{nanoseconds / 1e6:.1f} ms"
    return f"{nanoseconds / 1e9:.2f} s"
