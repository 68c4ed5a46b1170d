"""``meshkit sidecar``: join an app of any language to the mesh."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from meshkit import _env
from meshkit._env import ENV, otlp_variables, read_bus, read_registry
from meshkit._signals import until_stopped
from meshkit.bus import Bus, open_bus
from meshkit.bus._open import bus_url
from meshkit.cli._app import app, fail
from meshkit.errors import MeshkitError
from meshkit.observe import OtlpHttpSink, destination
from meshkit.registry import Registry, open_registry
from meshkit.sidecar import Sidecar, SidecarConfig
from meshkit.sidecar._events import parse_route

REGISTRY_ENV = ENV["registry"]
BUS_ENV = ENV["bus"]


def _address(value: str) -> tuple[str, int]:
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port.isdigit():
        fail(f"--app must be HOST:PORT, got {value!r}")
    return host, int(port)


def _telemetry(registry_url: str | None) -> OtlpHttpSink | None:
    """Spans go to the control plane, or the OTEL_EXPORTER_OTLP_* collector; else nowhere."""
    where = destination(control=registry_url, token=_env.token(), variables=otlp_variables())
    return None if where.traces is None else OtlpHttpSink(where)


async def _run(
    config: SidecarConfig, registry: Registry, bus_at: str | None, registry_url: str | None
) -> None:
    bus = None
    try:
        bus = None if bus_at is None else await open_bus(bus_at, token=_env.token())
        telemetry = _telemetry(registry_url)
        sidecar = Sidecar(config, registry, bus=bus, telemetry=telemetry)
        inbound, outbound = await sidecar.start()
    except BaseException:
        await _close(registry, bus)
        raise
    typer.echo(
        f"sidecar for {config.service}: inbound http://{config.host}:{inbound}"
        f" -> {config.app_host}:{config.app_port}, outbound http://{config.outbound_host}:{outbound}",
        err=True,
    )
    try:
        await until_stopped()
    finally:
        await sidecar.aclose()
        await _close(registry, bus)


async def _close(registry: Registry, bus: Bus | None) -> None:
    try:
        if bus is not None:
            await bus.aclose()
    finally:
        await registry.aclose()


@app.command()
def sidecar(
    service: Annotated[
        str, typer.Option(metavar="NAME", help="The service the app is an instance of.")
    ],
    app_address: Annotated[
        str, typer.Option("--app", metavar="HOST:PORT", help="Where the app listens.")
    ],
    health: Annotated[
        str, typer.Option(metavar="PATH", help="The app's health path (2xx or 3xx passes).")
    ],
    port: Annotated[
        int, typer.Option(metavar="PORT", help="Inbound port, what the registry lists (0: free).")
    ] = 0,
    outbound_port: Annotated[
        int, typer.Option(metavar="PORT", help="Where the app calls /<service>/<path> (0: free).")
    ] = 0,
    host: Annotated[
        str, typer.Option(metavar="HOST", help="The address the inbound port listens on.")
    ] = ("127.0.0.1"),
    outbound_host: Annotated[
        str,
        typer.Option(metavar="HOST", help="The outbound port's address: it reaches every service."),
    ] = "127.0.0.1",
    trust_forwarded: Annotated[  # noqa: FBT002 (a command-line flag, named by typer)
        bool,
        typer.Option(
            "--trust-forwarded", help="Keep callers' X-Forwarded-* (only trusted peers reach it)."
        ),
    ] = False,
    advertise: Annotated[
        str | None, typer.Option(metavar="HOST", help="The host others reach the inbound port at.")
    ] = None,
    instance_id: Annotated[
        str | None, typer.Option("--id", metavar="ID", help="The instance id.")
    ] = None,
    version: Annotated[
        str, typer.Option(metavar="VERSION", help="The app's version, for splits.")
    ] = "",
    ttl: Annotated[float, typer.Option(metavar="SECONDS", help="Lease TTL in seconds.")] = 5.0,
    interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds between health checks.")
    ] = 1.0,
    fall: Annotated[
        int, typer.Option(metavar="N", help="Failed checks in a row that deregister.")
    ] = 3,
    rise: Annotated[
        int, typer.Option(metavar="N", help="Passing checks in a row that register again.")
    ] = 2,
    subscribe: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TOPIC:GROUP:PATH",
            help="POST the group's messages on TOPIC to the app's PATH (repeatable).",
        ),
    ] = None,
    max_deliveries: Annotated[
        int,
        typer.Option(
            metavar="N", help="Deliveries of a subscribed message before it is a dead letter."
        ),
    ] = 5,
) -> None:
    """Register an app while its health check passes, and proxy its traffic both ways.

    Needs MESHKIT_REGISTRY (the control plane's URL, or etcd://) and
    MESHKIT_TOKEN; subscriptions take messages from MESHKIT_BUS, by default
    the control plane's. A 2xx answer acks a message. Spans go to the
    control plane as OTLP (or to the collector OTEL_EXPORTER_OTLP_* names).
    """
    app_host, app_port = _address(app_address)
    url = read_registry()
    if not url:
        fail(f"{REGISTRY_ENV} is not set: where is the registry? (http://127.0.0.1:7700)")
    try:
        config = SidecarConfig(
            service=service,
            app_host=app_host,
            app_port=app_port,
            health=health,
            host=host,
            outbound_host=outbound_host,
            trust_forwarded=trust_forwarded,
            port=port,
            outbound_port=outbound_port,
            advertise=advertise,
            instance_id=instance_id,
            version=version,
            ttl=ttl,
            interval=interval,
            fall=fall,
            rise=rise,
            events=tuple(parse_route(spec) for spec in subscribe or ()),
            max_deliveries=max_deliveries,
        )
        where = bus_url(read_bus(), url)
        if config.events and not where:
            fail(f"--subscribe needs a bus: set {BUS_ENV} (the registry is not a control plane)")
        bus_at = where if config.events else None
        registry = open_registry(url, token=_env.token())
    except MeshkitError as error:
        fail(str(error))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        asyncio.run(_run(config, registry, bus_at, url))
    except MeshkitError as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot listen: {error}")
