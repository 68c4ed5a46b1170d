"""``meshkit serve`` and ``meshkit control-plane``: run one process of the mesh."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from meshkit.cli._app import app, fail
from meshkit.control import DEFAULT_PORT, PLANE_SERVICE, ControlPlane, load_token, token_path
from meshkit.errors import MeshkitError
from meshkit.observe import (
    DEFAULT_MAX_AGE,
    DEFAULT_MAX_SIZE,
    Retention,
    StoreHandler,
    console_handler,
    parse_duration,
    parse_size,
)
from meshkit.service import Service


def load_target(target: str) -> Any:
    """The object named by ``module:attribute``, importing from the working directory."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        fail(f"expected MODULE:ATTRIBUTE (such as orders.app:service), got {target!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        fail(f"cannot import {module_name!r}: {error}")
    except MeshkitError as error:  # a Service built at import time, with a bad setting
        fail(f"{module_name}: {error}")
    try:
        return getattr(module, attribute)
    except AttributeError:
        fail(f"module {module_name!r} has no attribute {attribute!r}")


@app.command()
def serve(
    target: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:ATTRIBUTE", help="A meshkit.Service or an ASGI app, like orders:app."
        ),
    ],
    name: Annotated[
        str | None, typer.Option(metavar="NAME", help="Service name (default: $MESHKIT_SERVICE).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(metavar="PORT", help="Port (default: $MESHKIT_PORT or a free one)."),
    ] = None,
) -> None:
    """Serve an application as a service instance: registered, discoverable, drained on SIGTERM."""
    loaded = load_target(target)
    try:
        if isinstance(loaded, Service):
            if name or port:
                fail("--name and --port apply to a bare ASGI app; configure the Service instead")
            service = loaded
        elif callable(loaded):
            service = Service(loaded, name=name, port=port)
        else:
            fail(f"{target} is neither a meshkit.Service nor an ASGI application")
        service.run()
    except MeshkitError as error:
        fail(str(error))


@app.command("control-plane")
def control_plane(
    data_dir: Annotated[
        Path, typer.Option(metavar="DIR", help="Where the registry and the token live.")
    ] = Path(".meshkit"),
    host: Annotated[str, typer.Option(metavar="HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Port to listen on.")] = DEFAULT_PORT,
    retention: Annotated[
        str, typer.Option(metavar="DURATION", help="Keep spans and logs this long (24h, 7d).")
    ] = f"{DEFAULT_MAX_AGE / 3600:g}h",
    max_size: Annotated[
        str,
        typer.Option(metavar="SIZE", help="Keep at most this much telemetry (512MiB, 2GiB)."),
    ] = f"{DEFAULT_MAX_SIZE // 1024**2}MiB",
) -> None:
    """Run the control plane: the registry, the event bus's broker and the telemetry store,
    over HTTP."""
    try:
        kept = Retention(
            max_age=parse_duration("--retention", retention),
            max_size=parse_size("--max-size", max_size),
        )
        token = load_token(data_dir, create=True)
        plane = ControlPlane(data_dir=data_dir, token=token, host=host, port=port, retention=kept)
    except MeshkitError as error:
        fail(str(error))
    typer.echo(
        f"control plane on http://{host}:{port} (data in {data_dir};"
        f" token from $MESHKIT_TOKEN or {token_path(data_dir)})",
        err=True,
    )
    # Its own records (a rollout's transitions, say) go to its own telemetry store,
    # where `meshkit logs` finds every other process's.
    own = StoreHandler(
        lambda rows: plane.telemetry is not None and plane.telemetry.offer_logs(rows),
        service=PLANE_SERVICE,
        instance=PLANE_SERVICE,
    )
    console = console_handler(everything=False)  # warnings and errors, as before
    meshkit_logger = logging.getLogger("meshkit")
    meshkit_logger.addHandler(own)
    meshkit_logger.addHandler(console)
    meshkit_logger.setLevel(logging.INFO)
    try:
        asyncio.run(plane.serve_until_stopped())
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error}")
    finally:
        meshkit_logger.removeHandler(own)
        meshkit_logger.removeHandler(console)
