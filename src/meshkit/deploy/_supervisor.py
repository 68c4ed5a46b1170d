"""``meshkit up``: the control plane, then every service in dependency order, supervised.

1. The control plane starts first (a child process like the rest, restarted
   if it crashes; its registry survives in SQLite).
2. Services start in dependency order; a service's replicas start once every
   service it depends on answers its health check.
3. A child that exits is restarted with backoff (see ``_process``).
4. On SIGINT or SIGTERM the services get SIGTERM together and drain (each
   deregisters first); stragglers are killed after a grace period; the
   control plane stops last, so deregistrations reach it. Nothing is left
   running.

Children are told where they are through ``MESHKIT_*`` variables (see
``meshkit._env``); each service gets a data directory of its own under the
project's (``MESHKIT_DATA_DIR``): one database per service.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys

import msgspec

from meshkit import _env
from meshkit._clock import Clock, SystemClock
from meshkit._net import free_port
from meshkit._tasks import stop as stop_tasks
from meshkit.control import TOKEN_ENV, load_token
from meshkit.deploy._config import Project, ServiceConfig
from meshkit.deploy._output import Output
from meshkit.deploy._process import Child
from meshkit.deploy._replica import Replica
from meshkit.deploy._rollout_driver import RolloutDriver
from meshkit.deploy._state import ProcessState, ProcessTable, service_data_dir, write_table
from meshkit.errors import DeadlineExceededError, PeerError
from meshkit.gateway import READY_PATH
from meshkit.http import HTTPClient, Timeouts
from meshkit.observe import Identity, destination, standard_variables
from meshkit.sidecar import READY_PATH as SIDECAR_READY

__all__ = ["Supervisor"]

# meshkit's own processes (control plane, gateway) that exit this many times
# before their first health check passes have a configuration they cannot
# use: restarting them again would only repeat the error. Services keep
# being restarted: what they depend on may still be coming up.
_OWN_STARTS = 3
_STARTUP = 60.0  # seconds a service may take to become healthy before we say so
# Seconds a service may take to drain after SIGTERM: a Service drains for at
# most 5 s and deregisters within 2 s before that.
_GRACE = 10.0


class Supervisor:
    """Runs ``project`` until told to stop; ``run()`` returns the exit status."""

    def __init__(
        self,
        project: Project,
        *,
        output: Output | None = None,
        clock: Clock | None = None,
        python: str = sys.executable,
    ) -> None:
        self.project = project
        self.output = output or Output()
        self.clock = clock or SystemClock()
        self.python = python
        self._stop = asyncio.Event()
        self._finished = False  # everything stopped: the table says so, for `meshkit down`
        self._control_plane: Child | None = None
        self._gateway: Child | None = None
        self._token = ""
        # What each service runs now: the file's definition, until a rollout
        # completes with another (or one under way at the start says otherwise).
        self._definitions: dict[str, ServiceConfig] = dict(project.services)
        self._replicas: dict[str, list[Replica]] = {name: [] for name in project.services}
        self._numbers: dict[str, itertools.count[int]] = {
            name: itertools.count(1) for name in project.services
        }
        self._stopping: set[asyncio.Task[None]] = set()  # replicas draining, then stopped
        # Ports the file fixes, and those handed out: a free port is free only
        # until something listens on it, and the fixed ones are not taken yet.
        self._taken = _fixed_ports(project)
        self._rollouts: asyncio.Task[None] | None = None
        self._probe: HTTPClient | None = None  # the readiness checks a rollout makes
        cp = project.control_plane
        self.registry_url = f"http://{cp.host}:{cp.port}"
        self.output.width = max(
            [len("control-plane")]
            + [len(f"{name}-{config.replicas}") for name, config in project.services.items()]
        )

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, self._stop.set)
        data_dir = self.project.data_dir
        # Owner only: the token and every service's database live under it.
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        token = self._token = load_token(data_dir, create=True)
        driver = RolloutDriver(self, self.registry_url, token, clock=self.clock)
        try:
            if not await self._start_control_plane(token):
                return 1
            for record in await driver.under_way():
                # Stopped mid-rollout: the service runs what it ran before, and the
                # rollout goes on from where its record says.
                if record.rollout.service in self._definitions:
                    self._definitions[record.rollout.service] = driver.stable(record)
            for name in self.project.order:
                if self._stop.is_set():
                    break
                self._start_service(name)
                if not await self._until_healthy(name):
                    break
            if self.project.gateway is not None and not self._stop.is_set():
                gateway_up = await self._start_gateway(token)
                if not gateway_up and not self._stop.is_set():
                    return 1
            if not self._stop.is_set():
                self._announce_ready()
                self._rollouts = asyncio.create_task(driver.run())
            await self._stop.wait()
            return 0
        finally:
            if self._rollouts is not None:
                await stop_tasks(self._rollouts)
            await driver.aclose()
            await self._shutdown()

    # -- starting -------------------------------------------------------------

    async def _start_control_plane(self, token: str) -> bool:
        cp = self.project.control_plane
        self.output.say(f"control plane on {self.registry_url}, data in {self.project.data_dir}")
        self._control_plane = self._child(
            "control-plane",
            [
                self.python,
                "-m",
                "meshkit",
                "control-plane",
                "--data-dir",
                str(self.project.data_dir),
                "--host",
                cp.host,
                "--port",
                str(cp.port),
                "--retention",
                f"{self.project.retention.max_age}s",
                "--max-size",
                str(self.project.retention.max_size),
            ],
            {TOKEN_ENV: token},
            give_up_after=_OWN_STARTS,
        )
        self._control_plane.start()
        if await self._wait_healthy(cp.host, cp.port, "/healthz", self._control_plane):
            return True
        if not self._stop.is_set():
            self.output.say("the control plane did not start; stopping")
        return False

    async def _start_gateway(self, token: str) -> bool:
        gateway = self.project.gateway
        assert gateway is not None
        self._gateway = self._child(
            "gateway",
            [self.python, "-m", "meshkit", "gateway", "-p", str(self.project.directory)],
            {"MESHKIT_REGISTRY": self.registry_url, TOKEN_ENV: token},
            give_up_after=_OWN_STARTS,
        )
        self._gateway.start()
        if await self._wait_healthy(gateway.host, gateway.port, READY_PATH, self._gateway):
            self.output.say(f"gateway on http://{gateway.host}:{gateway.port}")
            return True
        if not self._stop.is_set():
            self.output.say("the gateway did not start; stopping")
        return False

    def _start_service(self, name: str) -> None:
        """Every replica of the service's definition, on the ports the file gives."""
        config = self._definitions[name]
        fixed = config.ports if config.ports is not None else [config.port] * config.replicas
        for port in fixed if len(fixed) == config.replicas else [None] * config.replicas:
            self.start_replica(name, config, candidate=False, port=port)

    def start_replica(
        self, name: str, config: ServiceConfig, *, candidate: bool, port: int | None = None
    ) -> Replica:
        """One more replica of ``name`` running ``config`` (on a spare port unless given)."""
        data_dir = service_data_dir(self.project.data_dir, name)
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        port = port or self._spare_port()
        instance_id = f"{name}-{next(self._numbers[name])}"
        env = {
            "MESHKIT_REGISTRY": self.registry_url,
            TOKEN_ENV: self._token,
            "MESHKIT_SERVICE": name,
            "MESHKIT_INSTANCE_ID": instance_id,
            "MESHKIT_PORT": str(port),
            "MESHKIT_TTL": f"{config.ttl:g}",
            "MESHKIT_VERSION": config.version,
            "MESHKIT_DATA_DIR": str(data_dir),
        }
        if config.app is None:  # any language: its own OpenTelemetry SDK sends here too
            env.update(self._telemetry_variables(name, instance_id, config.version, self._token))
        env.update(config.env)
        sidecar = None
        if config.app is not None:
            argv = [self.python, "-m", "meshkit", "serve", config.app]
        elif config.sidecar:
            sidecar, argv = self._beside_sidecar(name, config, instance_id, port, env)
        else:
            argv = self._command(config, port)
        child = self._child(instance_id, argv, env)
        child.start()
        replica = Replica(
            service=name,
            id=instance_id,
            port=port,
            config=config,
            child=child,
            sidecar=sidecar,
            candidate=candidate,
            started=self.clock.time(),
        )
        self._replicas[name].append(replica)
        self._save_state()
        return replica

    @property
    def services(self) -> frozenset[str]:
        return frozenset(self._definitions)

    def replicas(self, name: str) -> list[Replica]:
        """The service's replicas, those being stopped left out."""
        return list(self._replicas[name])

    def definition(self, name: str) -> ServiceConfig:
        return self._definitions[name]

    def stop_replica(self, replica: Replica) -> None:
        """Drain and stop one replica in the background: its sidecar first (which
        deregisters it), then the app; or the Service, which deregisters before it drains."""
        self._replicas[replica.service].remove(replica)
        self._save_state()

        async def stopping() -> None:
            if replica.sidecar is not None:
                await replica.sidecar.stop(grace=_GRACE)
            await replica.child.stop(grace=_GRACE)

        task = asyncio.create_task(stopping())
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def adopt(self, name: str, config: ServiceConfig) -> None:
        """A rollout completed: ``config`` is what the service runs now."""
        self._definitions[name] = config
        for replica in self._replicas[name]:
            replica.candidate = False
        self._save_state()

    async def ready(self, replica: Replica) -> bool:
        """Whether the replica answers its readiness check now (once, no waiting)."""
        path = SIDECAR_READY if replica.config.sidecar else replica.config.health_path()
        if not replica.child.running:
            return False
        if not path:
            return True  # a command without a health path: running is all it says
        if self._probe is None:  # one client, its connections kept, for every check
            self._probe = HTTPClient(timeouts=Timeouts(connect=1.0, read=2.0))
        with contextlib.suppress(PeerError, DeadlineExceededError):
            answer = await self._probe.request("GET", "127.0.0.1", replica.port, path)
            return answer.status == 200
        return False

    def _telemetry_variables(
        self, name: str, instance_id: str, version: str, token: str
    ) -> dict[str, str]:
        identity = Identity(service=name, instance=instance_id, version=version)
        where = destination(control=self.registry_url, token=token, variables=_env.otlp_variables())
        return standard_variables(identity, where)

    def _spare_port(self) -> int:
        """A free port that no configured or already chosen port clashes with."""
        while True:
            port = free_port()
            if port not in self._taken:
                self._taken.add(port)
                return port

    def _command(self, config: ServiceConfig, port: int) -> list[str]:
        return config.argv(port, self.python)

    def _beside_sidecar(
        self, name: str, config: ServiceConfig, instance_id: str, port: int, env: dict[str, str]
    ) -> tuple[Child, list[str]]:
        """Start the sidecar of one replica; the app's own command, on a port of its own.

        The sidecar takes the replica's port (what the registry lists and
        health checks reach); the app listens on a free port only the
        sidecar uses, and finds other services at ``$MESHKIT_OUTBOUND``.
        """
        app_port, outbound_port = self._spare_port(), self._spare_port()
        env["MESHKIT_OUTBOUND"] = f"http://127.0.0.1:{outbound_port}"
        sidecar = self._child(
            f"{instance_id}-sidecar",
            [
                *(self.python, "-m", "meshkit", "sidecar", "--service", name),
                *("--app", f"127.0.0.1:{app_port}", "--health", config.health_path()),
                *("--port", str(port), "--outbound-port", str(outbound_port)),
                *("--id", instance_id, "--ttl", f"{config.ttl:g}", "--version", config.version),
                *(
                    f"--subscribe={route.topic}:{route.group}:{route.path}"
                    for route in config.events(name)
                ),
                *(
                    ("--max-deliveries", str(config.max_deliveries))
                    if config.max_deliveries is not None
                    else ()
                ),
            ],
            {"MESHKIT_REGISTRY": self.registry_url, TOKEN_ENV: env[TOKEN_ENV]},
        )
        sidecar.start()
        return sidecar, self._command(config, app_port)

    def _child(
        self, name: str, argv: list[str], env: dict[str, str], *, give_up_after: int | None = None
    ) -> Child:
        project_dir = str(self.project.directory)
        path = _env.python_path()
        full_env = _env.child_environment(
            {
                "PYTHONUNBUFFERED": "1",  # lines reach us as they are printed
                "PYTHONPATH": f"{project_dir}{os.pathsep}{path}" if path else project_dir,
                **env,
            }
        )
        return Child(
            name,
            argv,
            env=full_env,
            cwd=project_dir,
            output=self.output,
            clock=self.clock,
            on_change=self._save_state,
            give_up_after=give_up_after,
        )

    async def _until_healthy(self, name: str) -> bool:
        """Wait until every replica of ``name`` is healthy; ``False`` if stopped first."""
        config = self._definitions[name]
        # A sidecar's app is ready once the sidecar has registered it.
        health = SIDECAR_READY if config.sidecar else config.health_path()
        waits = [
            self._wait_healthy("127.0.0.1", replica.port, health, replica.child)
            for replica in self._replicas[name]
        ]
        results = await asyncio.gather(*waits)
        if all(results):
            self.output.say(f"{name} is ready ({len(results)} instance(s))")
        return all(results)

    async def _wait_healthy(self, host: str, port: int, path: str, child: Child) -> bool:
        """Poll ``path`` until it answers 200, for as long as it takes, unless stopped."""
        if not path:
            return not self._stop.is_set()
        started = self.clock.monotonic()
        warned = False
        async with HTTPClient(timeouts=Timeouts(connect=1.0, read=2.0)) as http:
            while not self._stop.is_set():
                if child.give_up_after is not None and child.restarts >= child.give_up_after:
                    return False  # it cannot start (its output says why)
                with contextlib.suppress(PeerError, DeadlineExceededError):
                    if (await http.request("GET", host, port, path)).status == 200:
                        return True
                if not warned and self.clock.monotonic() - started > _STARTUP:
                    warned = True
                    self.output.say(f"{child.name} is still not healthy on {path}; waiting")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await self._stop.wait()
        return False

    def _announce_ready(self) -> None:
        self.output.say(
            f"all {len(self.project.services)} services are up; Ctrl-C stops everything"
        )
        for line in self.project.project.banner.strip().splitlines():
            self.output.say(line)

    # -- stopping ---------------------------------------------------------------

    async def _shutdown(self) -> None:
        if self._gateway is not None:
            # First, so no request comes in for services that are stopping.
            await self._gateway.stop(grace=_GRACE)
        # Sidecars first: they deregister their apps before the apps stop.
        replicas = [replica for group in self._replicas.values() for replica in group]
        await self._stop_all([r.sidecar for r in replicas if r.sidecar is not None])
        children = [replica.child for replica in replicas]
        if children:
            self.output.say(f"stopping {len(children)} service instance(s)")
        await self._stop_all(children)
        if self._stopping:  # replicas a rollout was stopping: they finish draining
            await asyncio.gather(*self._stopping, return_exceptions=True)
        if self._probe is not None:
            await self._probe.aclose()
        if self._control_plane is not None:
            await self._control_plane.stop(grace=_GRACE)
        self._finished = True
        self._save_state()
        self.output.say("stopped")

    async def _stop_all(self, children: list[Child]) -> None:
        """Stop ``children`` together; one that fails to stop is reported, the rest still stop."""
        results = await asyncio.gather(
            *(child.stop(grace=_GRACE) for child in children), return_exceptions=True
        )
        for child, result in zip(children, results, strict=True):
            if isinstance(result, BaseException):
                self.output.say(f"stopping {child.name} failed: {result!r}")

    # -- state for `meshkit status` and `meshkit down` --------------------------------------------

    def _save_state(self) -> None:
        processes = [
            self._state(name, replica.child, replica.port, candidate=replica.candidate)
            for name, replicas in self._replicas.items()
            for replica in replicas
        ]
        if self._control_plane is not None:
            processes.append(
                self._state("control-plane", self._control_plane, self.project.control_plane.port)
            )
        if self._gateway is not None and self.project.gateway is not None:
            processes.append(self._state("gateway", self._gateway, self.project.gateway.port))
        table = ProcessTable(
            supervisor_pid=os.getpid(),
            control_plane=self.registry_url,
            processes=processes,
            running=not self._finished,
            definitions={
                name: msgspec.to_builtins(config) for name, config in self._definitions.items()
            },
        )
        with contextlib.suppress(OSError):
            write_table(self.project.data_dir, table)

    @staticmethod
    def _state(service: str, child: Child, port: int, *, candidate: bool = False) -> ProcessState:
        return ProcessState(
            service=service,
            id=child.name,
            port=port,
            pid=child.pid,
            restarts=child.restarts,
            started_at=child.started_at,
            status=child.status,
            candidate=candidate,
        )


def _fixed_ports(project: Project) -> set[int]:
    ports = {project.control_plane.port}
    gateway = project.gateway
    if gateway is not None:
        ports.add(gateway.port)
        if gateway.admin is not None:
            ports.add(gateway.admin.port)
    for name in project.services:
        ports.update(port for port in project.fixed_ports(name) if port is not None)
    return ports
