"""``meshkit status``: the supervisor's processes and the registry, side by side.

An instance is healthy when the registry lists it (its lease is live), and,
if the supervisor runs it, its process is running. Instances the registry
lists that the supervisor does not run (registered from elsewhere) are shown
too, without a pid.
"""

from __future__ import annotations

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.control import load_token
from meshkit.deploy._config import Project
from meshkit.deploy._state import read_table
from meshkit.registry import Instance, RemoteRegistry

__all__ = ["InstanceStatus", "ServiceStatus", "StatusReport", "collect_status"]


class InstanceStatus(msgspec.Struct, kw_only=True):
    id: str
    host: str
    port: int
    pid: int | None
    version: str
    healthy: bool
    restarts: int
    uptime: float | None = msgspec.field(default=None)  # seconds; shown in the table only


class ServiceStatus(msgspec.Struct, kw_only=True):
    name: str
    instances: list[InstanceStatus]


class StatusReport(msgspec.Struct, kw_only=True):
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
    services = []
    for name in sorted(listed):
        rows: dict[str, InstanceStatus] = {}
        for process in processes.values():
            if process.service != name:
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
    return StatusReport(services=services)


def _by_id(row: InstanceStatus) -> tuple[str, int]:
    """``orders-2`` before ``orders-10``."""
    stem, _, number = row.id.rpartition("-")
    return (stem, int(number)) if number.isdigit() else (row.id, 0)


def report_json(report: StatusReport) -> bytes:
    """The documented JSON: each instance's id, host, port, pid, version, healthy, restarts."""
    return msgspec.json.encode(
        {
            "services": [
                {
                    "name": service.name,
                    "instances": [
                        {
                            "id": i.id,
                            "host": i.host,
                            "port": i.port,
                            "pid": i.pid,
                            "version": i.version,
                            "healthy": i.healthy,
                            "restarts": i.restarts,
                        }
                        for i in service.instances
                    ],
                }
                for service in report.services
            ]
        }
    )
