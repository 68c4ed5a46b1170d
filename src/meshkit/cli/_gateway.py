"""``meshkit gateway``: the API gateway of a project's ``[gateway]`` section."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from meshkit._env import otlp_variables, read_registry
from meshkit._signals import until_stopped
from meshkit.cli._app import app, fail
from meshkit.cli._project import (
    OLD_FORM,
    ProjectOption,
    open_project,
    positional_alias,
)
from meshkit.control import load_token
from meshkit.deploy import load_project
from meshkit.errors import ConfigError, MeshkitError
from meshkit.gateway import AccessLog, Gateway, GatewayConfig
from meshkit.observe import OtlpHttpSink, destination
from meshkit.registry import Registry, check_host, open_registry


def _read_again(directory: Path, host: str | None) -> GatewayConfig:
    """The [gateway] section as the file says now: for a reload."""
    gateway = load_project(directory, check_ports=False).gateway
    if gateway is None:
        raise ConfigError("gateway", "the [gateway] section is gone")
    return _listening(gateway, host)


def _listening(gateway: GatewayConfig, host: str | None) -> GatewayConfig:
    """``gateway`` on ``host`` (--host) instead of the file's, when one is given."""
    if host is None:
        return gateway
    check_host("--host", host)
    return msgspec.structs.replace(gateway, host=host)


def _reload(gateway: Gateway, directory: Path, host: str | None) -> None:
    try:
        gateway.reload(_read_again(directory, host))
    except MeshkitError as error:
        typer.echo(f"gateway: not reloaded, the running configuration stays: {error}", err=True)
    else:
        typer.echo(f"gateway: reloaded, {len(gateway.config.routes)} route(s)", err=True)


def _telemetry(registry_url: str, token: str) -> OtlpHttpSink | None:
    """Where spans and the access log go: the control plane or an OTEL_EXPORTER_OTLP_* collector."""
    where = destination(control=registry_url, token=token, variables=otlp_variables())
    if where.traces is None and where.logs is None:
        return None
    return OtlpHttpSink(where)


async def _serve(
    config: GatewayConfig,
    registry: Registry,
    directory: Path,
    token: str,
    *,
    registry_url: str,
    access_log: bool,
    host: str | None,
) -> None:
    gateway = Gateway(
        config,
        registry,
        access_log=AccessLog() if access_log else None,
        project_dir=directory,
        admin_token=token,
        reloader=lambda: _read_again(directory, host),
        telemetry=_telemetry(registry_url, token),
        instance=f"gateway-{config.port}",
    )
    address, port = await gateway.start()
    typer.echo(f"gateway on http://{address}:{port}, {len(config.routes)} route(s)", err=True)
    if config.admin is not None:
        admin = config.admin
        typer.echo(f"gateway admin API on http://{admin.host}:{admin.port}/admin", err=True)
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload, gateway, directory, host)
    try:
        await until_stopped()
    finally:
        await gateway.aclose()
        await registry.aclose()


@app.command(context_settings=OLD_FORM)
def gateway(
    context: typer.Context,
    *,
    project: ProjectOption = None,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log",
            help="Also print each request as a JSON line on standard output.",
        ),
    ] = False,
    host: Annotated[
        str | None,
        typer.Option(
            metavar="HOST",
            help="Listen on HOST instead of [gateway] host (in a container: 0.0.0.0).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the API gateway of a project's [gateway] section, finding services in the registry.

    `meshkit up` runs it when meshkit.toml has a [gateway] section; run it
    alone to serve a registry that is running already (MESHKIT_REGISTRY,
    default: the project's control plane). SIGHUP (or POST /admin/reload)
    reads the section again and uses it without dropping connections; a
    section with an error is refused and the running configuration stays.

    Traces and the access log (log records) go to the control plane, or
    to the collector the OTEL_EXPORTER_OTLP_* variables name;
    --access-log prints the access log as well.
    """
    found = open_project(positional_alias(context, project, "gateway"))
    if found.gateway is None:
        fail(f"{found.path} has no [gateway] section")
    try:
        config = _listening(found.gateway, host)
    except MeshkitError as error:
        fail(str(error))
    cp = found.control_plane
    url = read_registry() or f"http://{cp.host}:{cp.port}"
    try:
        token = load_token(found.data_dir, create=False)
        registry = open_registry(url, token=token)
    except MeshkitError as error:
        fail(str(error))
    try:
        asyncio.run(
            _serve(
                config,
                registry,
                found.directory,
                token,
                registry_url=url,
                access_log=access_log,
                host=host,
            )
        )
    except MeshkitError as error:  # a JWT secret or key file, an address that cannot be used
        fail(str(error))
