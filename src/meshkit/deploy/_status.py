"""``meshkit status``: the supervisor's processes and the registry, side by side.

An instance is healthy when the registry lists it (its lease is live), and,
if the supervisor runs it, its process is running. Instances the registry
lists that the supervisor does not run (registered from elsewhere) are shown
too, without a pid. The control plane is healthy when it answered; the
gateway when its readiness path answers 200.
"""

from __future__ import annotations

import contextlib

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.control import load_token
from meshkit.deploy._config import Project
from meshkit.deploy._state import ProcessState, read_table
from meshkit.errors import DeadlineExceededError, PeerError
from meshkit.gateway import READY_PATH
from meshkit.http import HTTPClient, Timeouts
from meshkit.registry import Instance, RemoteRegistry

__all__ = ["InstanceStatus", "ServiceStatus", "StatusReport", "collect_status"]

CONTROL_PLANE = "control-plane"
GATEWAY = "gateway"


class InstanceStatus(msgspec.Struct, kw_only=True):
    id: str
    host: str
    port: int
    pid: int | None
    version: str
    healthy: bool
    restarts: int
    uptime: float | None = None  # seconds since its current run started, if it runs


class ServiceStatus(msgspec.Struct, kw_only=True):
    name: str
    instances: list[InstanceStatus]


class StatusReport(msgspec.Struct, kw_only=True):
    control_plane: InstanceStatus
    gateway: InstanceStatus | None  # None when meshkit.toml has no [gateway]
    services: list[ServiceStatus]


async def collect_status(project: Project, *, clock: Clock | None = None) -> StatusReport:
    """Ask the project's control plane and read the supervisor's table.

    Raises ``EnvironmentFaultError`` if the control plane cannot be reached.
    """
    clock = clock or SystemClock()
    cp = project.control_plane
    token = load_token(project.data_dir, create=False)
    listed: dict[str, dict[str, Instance]] = {}
    async with RemoteRegistry(f"http://{cp.host}:{cp.port}", token=token) as registry:
        names = {entry.name for entry in (await registry.services()).services}
        for name in sorted(names | set(project.services)):
            snapshot = await registry.lookup(name)
            listed[name] = {instance.id: instance for instance in snapshot.instances}
    table = read_table(project.data_dir)
    processes = {p.id: p for p in table.processes} if table is not None else {}
    now = clock.time()
    control_plane = _own(
        CONTROL_PLANE, processes.get(CONTROL_PLANE), cp.host, cp.port, now, answered=True
    )
    gateway = None
    if project.gateway is not None:
        host, port = project.gateway.host, project.gateway.port
        ready = await _ready(host, port)
        gateway = _own(GATEWAY, processes.get(GATEWAY), host, port, now, answered=ready)
    services = []
    for name in sorted(listed):
        rows: dict[str, InstanceStatus] = {}
        for process in processes.values():
            if process.service != name or process.id in (CONTROL_PLANE, GATEWAY):
                continue
            registered = listed[name].get(process.id)
            running = process.pid is not None
            # The table may hold a service since removed from meshkit.toml.
            configured = project.services.get(name)
            expected = configured.version if configured is not None else ""
            rows[process.id] = InstanceStatus(
                id=process.id,
                host=registered.host if registered else "127.0.0.1",
                port=registered.port if registered else process.port,
                pid=process.pid,
                version=registered.version if registered else expected,
                healthy=running and registered is not None,
                restarts=process.restarts,
                uptime=now - process.started_at if running and process.started_at else None,
            )
        for instance_id, instance in listed[name].items():
            if instance_id not in rows:
                rows[instance_id] = InstanceStatus(
                    id=instance_id,
                    host=instance.host,
                    port=instance.port,
                    pid=None,
                    version=instance.version,
                    healthy=True,
                    restarts=0,
                )
        services.append(ServiceStatus(name=name, instances=sorted(rows.values(), key=_by_id)))
    return StatusReport(control_plane=control_plane, gateway=gateway, services=services)


def _own(
    name: str, process: ProcessState | None, host: str, port: int, now: float, *, answered: bool
) -> InstanceStatus:
    """The row of the control plane or the gateway: ``answered`` is whether it answered now."""
    running = process is not None and process.pid is not None
    started = process.started_at if process is not None else None
    return InstanceStatus(
        id=name,
        host=host,
        port=port,
        pid=process.pid if process is not None else None,
        version="",
        healthy=answered,
        restarts=process.restarts if process is not None else 0,
        uptime=now - started if running and started else None,
    )


async def _ready(host: str, port: int) -> bool:
    """Whether the gateway at ``host:port`` answers its readiness path with 200."""
    async with HTTPClient(timeouts=Timeouts(connect=1.0, read=2.0)) as http:
        with contextlib.suppress(PeerError, DeadlineExceededError):
            return (await http.request("GET", host, port, READY_PATH)).status == 200
    return False


def _by_id(row: InstanceStatus) -> tuple[str, int]:
    """``orders-2`` before ``orders-10``."""
    stem, _, number = row.id.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (row.id, 0)


def _row(i: InstanceStatus) -> dict[str, object]:
    return {
        "id": i.id,
        "host": i.host,
        "port": i.port,
        "pid": i.pid,
        "version": i.version,
        "healthy": i.healthy,
        "restarts": i.restarts,
        "uptime": None if i.uptime is None else round(i.uptime, 3),
    }


def report_json(report: StatusReport) -> bytes:
    """The documented JSON: the control plane, the gateway (or null) and each service's
    instances, each with id, host, port, pid, version, healthy, restarts and uptime
    (seconds, or null when it is not running under ``meshkit up``)."""
    return msgspec.json.encode(
        {
            "control_plane": _row(report.control_plane),
            "gateway": None if report.gateway is None else _row(report.gateway),
            "services": [
                {"name": service.name, "instances": [_row(i) for i in service.instances]}
                for service in report.services
            ],
        }
    )
