"""``meshkit.toml``: what ``meshkit up`` runs, checked before anything starts.

::

    [project]
    name = "shop"
    data_dir = ".meshkit"          # relative to this file
    banner = "..."                 # printed once every service is ready

    [control_plane]
    host = "127.0.0.1"
    port = 7700

    [telemetry]                    # what the control plane keeps of the spans and logs
    retention = "24h"              # by age (a duration: 30m, 24h, 7d)
    max_size = "512MiB"            # and by size (bytes, or 100MB, 2GiB...): oldest go first

    [services.orders]
    app = "orders.app:service"     # MODULE:ATTRIBUTE, served by `meshkit serve`
    # command = ["./server", "--port", "{port}"]   # or any program (one of the two);
    # {python} is the interpreter running meshkit
    # sidecar = true               # a command joined to the mesh by `meshkit sidecar`
    # subscribe = [{ topic = "order.created", path = "/events/order-created" }]
    #                              # with a sidecar: the bus's messages POSTed to the app,
    #                              # in the group named by the service (or group = "...")
    # max_deliveries = 5           # of each such message, before the dead-letter queue
    replicas = 1
    port = 8104                    # or ports = [...], one per replica; else free ports
    ttl = 5
    version = "1.0.0"
    health = "/-/ready"            # readiness path; "" for a command without one
    depends_on = ["users", "products"]
    env = { PAYMENT_FAILURE_RATE = "0.1" }

    [services.orders.deploy]       # how `meshkit deploy orders` rolls out a change
    strategy = "rolling"           # or "blue-green", "canary"; their settings:
    # max_surge = 1, max_unavailable = 0, ready_timeout = 60       (rolling)
    # smoke = ["/-/ready"], keep = 300, ready_timeout = 60         (blue-green)
    # steps = [5, 25, 50, 100], interval = 60, failure_limit = 2,   (canary)
    # replicas = 1, ready_timeout = 60,
    # analysis = { min_requests = 20, min_success = 0.99, max_p99 = 0.5 }

Every problem is a ``ConfigError`` whose message names the file, the line
when it can be found, the key, and what is wrong: an unknown key, a missing
or mistyped field, a dependency on an unknown service, a dependency cycle,
a port given twice or already in use.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from meshkit.errors import ConfigError, InvalidArgumentError
from meshkit.gateway import GatewayConfig
from meshkit.observe import DEFAULT_MAX_AGE, DEFAULT_MAX_SIZE, Retention, parse_duration, parse_size
from meshkit.policy import RollingConfig, RolloutConfig
from meshkit.registry import MAX_TTL, MIN_TTL, check_host, check_name
from meshkit.sidecar import EventRoute
from meshkit.sidecar._events import check_max_deliveries

__all__ = ["ControlPlaneConfig", "Project", "ProjectConfig", "ServiceConfig", "load_project"]


class ProjectConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str = "meshkit"
    data_dir: str = ".meshkit"
    banner: str = ""


class ControlPlaneConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 7700


class TelemetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[telemetry]`` table, as written; ``Project.retention`` is the checked value."""

    retention: str = f"{DEFAULT_MAX_AGE / 3600:g}h"
    max_size: str | int = f"{DEFAULT_MAX_SIZE // 1024**2}MiB"


class SubscribeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    topic: str
    path: str
    group: str | None = None  # default: the service's name

    def route(self, service: str) -> EventRoute:
        group = service if self.group is None else self.group
        return EventRoute(topic=self.topic, group=group, path=self.path)


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    app: str | None = None
    command: list[str] | None = None
    replicas: int = 1
    port: int | None = None
    ports: list[int] | None = None
    ttl: float = 10.0
    version: str = ""
    health: str | None = None
    depends_on: list[str] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    # A command's app joins the mesh through `meshkit sidecar` (registration
    # by health, inbound and outbound proxying), as an app in any language would.
    sidecar: bool = False
    subscribe: list[SubscribeConfig] = msgspec.field(default_factory=list)
    max_deliveries: int | None = None  # default: the sidecar's (5)
    # How `meshkit deploy` rolls out a new definition; default: a rolling update.
    deploy: RolloutConfig = msgspec.field(default_factory=RollingConfig)

    def events(self, name: str) -> list[EventRoute]:
        """What the sidecar of service ``name`` delivers to its app (checked at load)."""
        return [entry.route(name) for entry in self.subscribe]

    def argv(self, port: int, python: str) -> list[str]:
        """The ``command``, with ``{port}`` and ``{python}`` (the interpreter) filled in."""
        assert self.command is not None, "an app = ... has no command"
        return [
            part.replace("{port}", str(port)).replace("{python}", python) for part in self.command
        ]

    def health_path(self) -> str:
        """The readiness path: ``/-/ready`` for an app, none for a command unless given."""
        if self.health is not None:
            return self.health
        return "/-/ready" if self.app else ""


class _File(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    project: ProjectConfig = msgspec.field(default_factory=ProjectConfig)
    control_plane: ControlPlaneConfig = msgspec.field(default_factory=ControlPlaneConfig)
    # Converted one by one below: msgspec's error paths do not name dict keys,
    # and the message must name the service.
    services: dict[str, dict[str, Any]] = msgspec.field(default_factory=dict)
    gateway: dict[str, Any] | None = None
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)


class Project(msgspec.Struct, frozen=True, kw_only=True):
    """A checked ``meshkit.toml`` and where it lives."""

    path: Path
    project: ProjectConfig
    control_plane: ControlPlaneConfig
    services: dict[str, ServiceConfig]
    order: tuple[str, ...]  # services, each after those it depends on
    gateway: GatewayConfig | None = None
    retention: Retention = msgspec.field(default_factory=Retention)  # of the telemetry

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def data_dir(self) -> Path:
        return (self.directory / self.project.data_dir).resolve()

    def fixed_ports(self, service: str) -> list[int | None]:
        """One entry per replica: its configured port, or ``None`` for a free one."""
        config = self.services[service]
        if config.ports is not None:
            return list(config.ports)
        if config.port is not None:
            return [config.port] + [None] * (config.replicas - 1)
        return [None] * config.replicas


def load_project(directory: Path, *, check_ports: bool = True) -> Project:
    """Read and check ``directory/meshkit.toml``; raises ``ConfigError`` on any problem."""
    path = (directory / "meshkit.toml").resolve()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "no meshkit.toml here") from None
    except OSError as error:
        raise ConfigError(str(path), f"cannot be read: {error}") from error
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), f"is not valid TOML: {error}") from error
    try:
        parsed = msgspec.convert(raw, _File)
    except msgspec.ValidationError as error:
        raise _problem(path, text, _key_of(error), _reason(error)) from error
    services: dict[str, ServiceConfig] = {}
    for name, table in parsed.services.items():
        deploy = table.get("deploy")
        if isinstance(deploy, dict) and "strategy" not in deploy:
            table = {**table, "deploy": {"strategy": "rolling", **deploy}}
        try:
            services[name] = msgspec.convert(table, ServiceConfig)
        except msgspec.ValidationError as error:
            key, problem = f"services.{name}.{_key_of(error)}", _reason(error)
            own = re.match(r"(deploy\.[\w.]+): (.*)", problem)  # a strategy's own check
            if own is not None:
                key, problem = f"services.{name}.{own.group(1)}", own.group(2)
            elif key.endswith(".deploy.strategy"):
                problem = f"must be one of 'rolling', 'blue-green', 'canary': {problem}"
            raise _problem(path, text, key, problem) from error
        _check_service(path, text, name, services[name])
    order = _dependency_order(path, text, services)
    retention = _retention(path, text, parsed.telemetry)
    gateway = None if parsed.gateway is None else _gateway(path, text, parsed.gateway, services)
    project = Project(
        path=path,
        project=parsed.project,
        control_plane=parsed.control_plane,
        services=services,
        order=order,
        gateway=gateway,
        retention=retention,
    )
    _check_ports(project, text, probe=check_ports)
    return project


# -- checks -------------------------------------------------------------------


def _gateway(
    path: Path, text: str, table: dict[str, Any], services: dict[str, ServiceConfig]
) -> GatewayConfig:
    try:
        gateway = msgspec.convert(table, GatewayConfig)
        gateway.key_secrets()  # keys held in variables, checked before anything starts
    except ConfigError as error:
        raise _problem(path, text, error.key, error.problem) from error
    except msgspec.ValidationError as error:
        message = str(error)
        if message.startswith("gateway."):  # the gateway's own check, naming its key
            key, _, problem = message.split(" - at `$", 1)[0].partition(": ")
            raise _problem(path, text, key, problem) from error
        raise _problem(path, text, f"gateway.{_key_of(error)}", _reason(error)) from error
    listed = [
        *(("api_keys", index, key.services) for index, key in enumerate(gateway.api_keys)),
        *(("global_limits", i, limit.services) for i, limit in enumerate(gateway.global_limits)),
    ]
    for table_name, index, names in listed:
        for name in names or ():
            if name not in services:
                raise _problem(
                    path,
                    text,
                    f"gateway.{table_name}[{index}].services",
                    f"no service named {name!r} in this file",
                )
    for index, route in enumerate(gateway.routes):
        if route.service not in services:
            raise _problem(
                path,
                text,
                f"gateway.routes[{index}].service",
                f"no service named {route.service!r} in this file",
            )
    return gateway


def _retention(path: Path, text: str, table: TelemetryConfig) -> Retention:
    """The checked ``[telemetry]`` table."""
    try:
        return Retention(
            max_age=parse_duration("retention", table.retention),
            max_size=parse_size("max_size", table.max_size),
        )
    except InvalidArgumentError as error:
        raise _problem(path, text, f"telemetry.{error.key}", error.problem) from None


def _check_service(path: Path, text: str, name: str, service: ServiceConfig) -> None:
    key = f"services.{name}"
    try:
        check_name(key, name)
    except ConfigError as error:
        raise _problem(path, text, key, error.problem) from None
    if (service.app is None) == (service.command is None):
        raise _problem(path, text, key, "needs exactly one of app = ... or command = [...]")
    if service.app is not None and not re.fullmatch(r"[\w.]+:[\w.]+", service.app):
        raise _problem(path, text, f"{key}.app", f"must be MODULE:ATTRIBUTE, got {service.app!r}")
    if service.sidecar and service.command is None:
        raise _problem(
            path, text, f"{key}.sidecar", "is for command = [...]: an app = ... registers itself"
        )
    if service.sidecar and not service.health:
        raise _problem(path, text, f"{key}.health", "a sidecar needs the app's health path")
    _check_events(path, text, name, service)
    if service.command is not None:
        if not service.command:
            raise _problem(path, text, f"{key}.command", "must not be empty")
        program = service.command[0].replace("{python}", sys.executable)
        if not runnable(program, path.parent):
            raise _problem(
                path,
                text,
                f"{key}.command",
                f"cannot run {service.command[0]!r}: not found on PATH, or not executable",
            )
    if not 1 <= service.replicas <= 64:
        raise _problem(path, text, f"{key}.replicas", "must be between 1 and 64")
    if not MIN_TTL <= service.ttl <= MAX_TTL:
        raise _problem(
            path, text, f"{key}.ttl", f"must be between {MIN_TTL:g} and {MAX_TTL:g} seconds"
        )
    if service.port is not None and service.ports is not None:
        raise _problem(path, text, f"{key}.ports", "give port or ports, not both")
    if service.port is not None and service.replicas > 1:
        raise _problem(
            path,
            text,
            f"{key}.port",
            f"one port for {service.replicas} replicas; use ports = [...]",
        )
    if service.ports is not None and len(service.ports) != service.replicas:
        count = len(service.ports)
        raise _problem(
            path, text, f"{key}.ports", f"has {count} ports for {service.replicas} replicas"
        )
    health = service.health_path()
    if health and _PATH.fullmatch(health) is None:
        raise _problem(
            path,
            text,
            f"{key}.health",
            f"must be a path starting with '/', printable ASCII without spaces, got {health!r}",
        )


def _check_events(path: Path, text: str, name: str, service: ServiceConfig) -> None:
    key = f"services.{name}"
    if service.subscribe and not service.sidecar:
        raise _problem(
            path,
            text,
            f"{key}.subscribe",
            "is for an app beside a sidecar: an app = ... uses @service.subscribe",
        )
    joined: dict[tuple[str, str], int] = {}
    for index, entry in enumerate(service.subscribe):
        try:
            route = entry.route(name)
        except ConfigError as error:
            raise _problem(
                path, text, f"{key}.subscribe[{index}].{error.key}", error.problem
            ) from None
        # Two paths in one group would split its messages between them.
        first = joined.setdefault((route.topic, route.group), index)
        if first != index:
            raise _problem(
                path,
                text,
                f"{key}.subscribe[{index}]",
                f"subscribes to {route.topic} in group {route.group} as subscribe[{first}]"
                " does: each would get only some of the messages (name another group)",
            )
    if service.max_deliveries is not None:
        if not service.subscribe:
            raise _problem(
                path, text, f"{key}.max_deliveries", "is for the messages of subscribe = [...]"
            )
        try:
            check_max_deliveries(service.max_deliveries)
        except ConfigError as error:
            raise _problem(path, text, f"{key}.max_deliveries", error.problem) from None


_PATH = re.compile(r"/[!-~]*")


def runnable(program: str, directory: Path, search_path: str | None = None) -> bool:
    """Whether exec would find ``program``: a path from ``directory``, or a name on the PATH."""
    if "/" in program:
        candidate = directory / program
        return candidate.is_file() and os.access(candidate, os.X_OK)
    return shutil.which(program, path=search_path) is not None


def _dependency_order(path: Path, text: str, services: dict[str, ServiceConfig]) -> tuple[str, ...]:
    for name, service in services.items():
        for dependency in service.depends_on:
            if dependency not in services:
                raise _problem(
                    path,
                    text,
                    f"services.{name}.depends_on",
                    f"names an unknown service {dependency!r}",
                )
    order: list[str] = []
    state: dict[str, str] = {}  # "visiting" or "done"

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join([*trail[trail.index(name) :], name])
            raise _problem(
                path, text, f"services.{trail[-1]}.depends_on", f"forms a cycle: {cycle}"
            )
        state[name] = "visiting"
        for dependency in services[name].depends_on:
            visit(dependency, [*trail, name])
        state[name] = "done"
        order.append(name)

    for name in services:
        visit(name, [])
    return tuple(order)


def _check_ports(project: Project, text: str, *, probe: bool) -> None:
    cp = project.control_plane
    if not 1 <= cp.port <= 65535:
        raise _problem(project.path, text, "control_plane.port", f"{cp.port} is not a TCP port")
    try:
        check_host("control_plane.host", cp.host)
    except ConfigError as error:
        raise _problem(project.path, text, "control_plane.host", error.problem) from None
    wanted: dict[int, tuple[str, str]] = {cp.port: ("control_plane.port", cp.host)}  # owner, host
    gateway = project.gateway
    gateway_ports = [] if gateway is None else [("gateway.port", gateway.port, gateway.host)]
    if gateway is not None and gateway.admin is not None:
        gateway_ports.append(("gateway.admin.port", gateway.admin.port, gateway.admin.host))
    for owner, taken, host in gateway_ports:
        if taken in wanted:
            raise _problem(project.path, text, owner, f"port {taken} is also {wanted[taken][0]}")
        wanted[taken] = (owner, host)
    for name in project.services:
        for replica, port in enumerate(project.fixed_ports(name), start=1):
            if port is None:
                continue
            key = f"services.{name}.{'ports' if project.services[name].ports else 'port'}"
            if not 1 <= port <= 65535:
                raise _problem(project.path, text, key, f"{port} is not a TCP port")
            if port in wanted:
                raise _problem(project.path, text, key, f"port {port} is also {wanted[port][0]}")
            wanted[port] = (f"{name} replica {replica}", "127.0.0.1")
    if not probe:
        return
    for port, (owner, host) in wanted.items():
        if not _port_free(host, port):
            key = owner if owner.endswith(".port") else f"services.{owner.split()[0]}"
            raise _problem(project.path, text, key, f"port {port} is already in use")


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# -- messages -------------------------------------------------------------------


def _problem(path: Path, text: str, key: str, problem: str) -> ConfigError:
    line = _line_of(text, key)
    where = f"{path}:{line}" if line else str(path)
    return ConfigError(key, f"{problem} ({where})")


def _line_of(text: str, key: str) -> int | None:
    """Best effort: the line that sets ``key`` (``services.orders.ttl``), or its table."""
    lines = text.splitlines()
    indexed = re.fullmatch(r"([\w.]+)\[(\d+)\](?:\.(\w+))?", key)
    if indexed is not None:  # gateway.routes[2].path: the third [[gateway.routes]]
        found = _line_in_array(lines, indexed.group(1), int(indexed.group(2)), indexed.group(3))
        if found is not None:
            return found
    # Not an array of tables (services.a.ports[1]): the line that sets the array.
    parts = re.sub(r"\[\d+\]", "", key).split(".")
    for depth in range(len(parts), 0, -1):
        table, leaf = ".".join(parts[: depth - 1]), parts[depth - 1]
        in_table = table == ""
        for number, line in enumerate(lines, start=1):
            stripped = line.strip()
            if stripped.startswith("["):
                header = stripped.strip("[]").strip()
                in_table = header == table
                prefix = ".".join(parts[:depth])
                if header == prefix or header.startswith(prefix + "."):
                    return number
                continue
            if in_table and re.match(rf"{re.escape(leaf)}\s*=", stripped):
                return number
    return None


def _line_in_array(lines: list[str], table: str, index: int, leaf: str | None) -> int | None:
    seen = -1
    start = None
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if start is not None and stripped.startswith("["):
            break  # the entry ended without setting leaf
        if stripped.replace(" ", "") == f"[[{table}]]":
            seen += 1
            if seen == index:
                start = number
                if leaf is None:
                    return number
        elif start is not None and leaf and re.match(rf"{re.escape(leaf)}\s*=", stripped):
            return number
    return start


def _key_of(error: msgspec.ValidationError) -> str:
    """``services.orders.ttl`` from msgspec's ``... - at `$.services.orders.ttl```."""
    message = str(error)
    path = message.rsplit("at `$", 1)[1].rstrip("`") if "at `$" in message else ""
    path = path.replace("['", ".").replace("']", "")
    field = None
    for marker in ("unknown field `", "missing required field `"):
        if marker in message:
            field = message.split(marker, 1)[1].split("`", 1)[0]
    key = path.strip(".").replace("[...]", "")
    if field:
        key = f"{key}.{field}" if key else field
    return key or "meshkit.toml"


def _reason(error: msgspec.ValidationError) -> str:
    message = str(error).split(" - at `$", 1)[0]
    if message.startswith("Object contains unknown field"):
        return "is not a known key"
    if message.startswith("Object missing required field"):
        return "is required"
    return message[0].lower() + message[1:] if message else "is invalid"
