"""``Service``: an ASGI application as a member of the mesh.

Lifecycle, one module per concern:

1. the application is prepared for serving once, when the Service is built
   (``_asgi.serving_app``: health endpoints, deadlines);
2. ``serve()`` takes its registry and bus, as objects or opened from URLs
   (``_backends``);
3. the ASGI server starts (``_server``, granian); once the application
   answers its own liveness check (so its lifespan startup has run, and
   made the tables an outbox reads), the outbox relays start and the
   ``@subscribe`` handlers join their groups (``_subscriptions``), and the
   instance registers, its lease renewed from a thread of its own
   (``_registration``, ``_heartbeat``);
4. on SIGTERM, SIGINT or ``stop()``, it drains (``_drain``): it stops
   reporting ready, deregisters, then stops the server, which finishes
   requests in flight for at most ``drain_timeout`` seconds; then whatever
   it opened is closed.

Inside request handlers, ``service.client`` calls other services by name
and ``service.bus`` publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping

from meshkit._clock import Clock, SystemClock
from meshkit._env import otlp_variables, read_environment
from meshkit.bus import Bus, Handler, OutboxRelay, OutboxStore, Subscription
from meshkit.bus._metrics import SubscriptionCollector
from meshkit.discovery import Directory
from meshkit.errors import ConfigError, UsageError
from meshkit.observe import (
    LIFECYCLE,
    Destination,
    Identity,
    Telemetry,
    TelemetryCollector,
    console_handler,
    destination,
    start_telemetry,
)
from meshkit.policy import Redelivery
from meshkit.policy import _check as check
from meshkit.registry import MAX_TTL, MIN_TTL, Instance, Registry, check_name
from meshkit.saga import Saga, SagaRunner, SagaStore
from meshkit.saga._metrics import SagaMetrics
from meshkit.service._asgi import ASGIApp, serving_app
from meshkit.service._backends import check_bus, check_registry, use_bus, use_registry
from meshkit.service._client import CallPolicy, ServiceClient
from meshkit.service._drain import drain, stop_signals, wait_for_stop
from meshkit.service._heartbeat import Heartbeat
from meshkit.service._metrics import METRICS_PATH, ClientCollector, ServiceMetrics
from meshkit.service._registration import heartbeat_for, instance_for
from meshkit.service._saga_api import SagaAPI
from meshkit.service._server import GranianServer, claim_port, stop_serving, wait_live
from meshkit.service._subscriptions import Wanted, join, start_relays

__all__ = ["Service"]

log = logging.getLogger("meshkit.service")

_DEFAULT_TTL = 10.0  # seconds; a dead instance leaves discovery within this
_FIRST_REGISTRATION = 5.0  # seconds the start waits for it before saying "registering..."


class Service:
    """Serve ``app`` as an instance of service ``name``, registered and discoverable.

    Settings not passed come from the ``MESHKIT_*`` environment that
    ``meshkit up`` provides (see ``meshkit._env``), then from defaults:
    host 127.0.0.1, a free port, a 10 s TTL.

    ``registry`` is a URL, ``http://host:port`` for a control plane (with
    ``token``) or ``etcd://host:port``, or any ``meshkit.registry.Registry``
    object. ``bus`` is a URL for ``open_bus`` or any ``meshkit.bus.Bus``
    object; by default ``MESHKIT_BUS``, else the registry's control plane
    when the registry is one by URL. A URL is opened by ``serve()`` and
    closed when it ends. An object is used as it is and left open: its
    owner, who made it, closes it, after ``serve()`` has returned. A
    registry object is called on the event loop that runs ``serve()``.
    A Starlette or FastAPI ``app`` answers its errors as problem details
    (RFC 9457) unless ``problem_details=False`` (see
    ``install_problem_handlers``). Its spans and log records go to the
    control plane, or where ``OTEL_EXPORTER_OTLP_*`` says, unless
    ``telemetry=False`` or the process set OpenTelemetry up itself
    (``meshkit.observe.start_telemetry``).

    Raises ``ConfigError`` for a bad name, TTL or drain timeout, or an
    object that is not a ``Registry`` or a ``Bus``; a bad URL is reported
    by ``serve()``, so a module defining a service imports cleanly outside
    the mesh.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        name: str | None = None,
        version: str | None = None,
        host: str | None = None,
        port: int | None = None,
        ttl: float | None = None,
        registry: str | Registry | None = None,
        token: str | None = None,
        bus: str | Bus | None = None,
        instance_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        drain_timeout: float = 5.0,
        policy: CallPolicy | None = None,
        clock: Clock | None = None,
        problem_details: bool = True,
        telemetry: bool = True,
    ) -> None:
        env = read_environment()
        if not (name or env.service):
            raise ConfigError("name", "no service name: pass name= or set MESHKIT_SERVICE")
        self.name = check_name("service", name or env.service)
        self.host = host or env.host or "127.0.0.1"
        self.port = port or env.port or 0
        self.ttl = check.seconds("ttl", ttl or env.ttl or _DEFAULT_TTL)
        if not MIN_TTL <= self.ttl <= MAX_TTL:
            raise ConfigError("ttl", f"must be between {MIN_TTL:g} and {MAX_TTL:g} seconds")
        self._registry_given = check_registry(registry, env.registry)
        self._bus_given = check_bus(bus, env.bus, self._registry_given)
        self.registry_url = self._registry_given if isinstance(self._registry_given, str) else None
        self.bus_url = self._bus_given if isinstance(self._bus_given, str) else None
        self._token = token or env.token
        self.version = version or env.version or ""
        self.instance_id = instance_id or env.instance_id
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("pid", str(os.getpid()))
        self.metadata.setdefault("restarts", str(env.restarts))
        # Where Prometheus scrapes it (the control plane's service discovery reads it).
        self.metadata.setdefault("metrics_path", METRICS_PATH)
        self.drain_timeout = check.seconds("drain_timeout", drain_timeout)
        self.policy = policy or CallPolicy()
        self.telemetry = telemetry
        self._clock = clock or SystemClock()
        self._sagas: list[SagaRunner] = []  # /-/sagas reads it as add_sagas fills it
        self.metrics = ServiceMetrics()
        self._saga_metrics = SagaMetrics(self.metrics.registry)
        self._asgi = serving_app(
            app,
            clock=self._clock,
            problem_details=problem_details,
            sagas=SagaAPI(self._sagas, token=self._token),
            metrics=self.metrics,
        )
        self._client: ServiceClient | None = None
        self._subscriptions: list[Subscription] = []
        self.metrics.registry.register(ClientCollector(lambda: self._client))
        self._telemetry: Telemetry | None = None
        self.metrics.registry.register(TelemetryCollector(lambda: self._telemetry, "meshkit"))
        self.metrics.registry.register(
            SubscriptionCollector(lambda: self._subscriptions, lambda: self._relays)
        )
        self._bus: Bus | None = None
        self._wanted: list[Wanted] = []
        self._outboxes: list[OutboxStore] = []
        self._relays: list[OutboxRelay] = []
        self._stop: asyncio.Event | None = None
        self.instance: Instance | None = None

    @property
    def client(self) -> ServiceClient:
        """Calls other services by name; available while the service runs."""
        if self._client is None:
            raise UsageError(f"{self.name}: service.client exists only while the service runs")
        return self._client

    @property
    def bus(self) -> Bus:
        """The bus (see ``bus=``); available while the service runs."""
        if self._bus is None:
            raise UsageError(f"{self.name}: service.bus exists only while the service runs")
        return self._bus

    def subscribe(
        self,
        topic: str,
        *,
        group: str | None = None,
        concurrency: int = 10,
        redelivery: Redelivery | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorate a handler of ``topic``'s messages in ``group`` (default: the service's name).

        Every instance of the service joins the group, so they share its
        messages. A handler that returns acks; one that raises is
        redelivered after ``redelivery``'s backoff, then dead-lettered.
        Raises ``ConfigError`` for a bad topic, group or concurrency.
        """

        def register(handler: Handler) -> Handler:
            wanted = Wanted(
                topic, group or self.name, handler, concurrency, redelivery or Redelivery()
            )
            self._wanted.append(wanted)
            return handler

        return register

    def add_outbox(self, store: OutboxStore) -> None:
        """Relay ``store``'s events to the bus while the service runs (an ``OutboxRelay``).

        The relay owns the store and closes it. Call ``notify_outbox()``
        after committing an event, so that it goes out without waiting for
        the relay's next poll.
        """
        self._outboxes.append(store)

    def add_sagas(self, store: SagaStore, *sagas: Saga, lease: float = 10.0) -> SagaRunner:
        """Run ``sagas``, logged in ``store``, while the service runs: the runner to begin them.

        Once the service is live (its lifespan has made its tables), the
        runner takes back the unfinished runs of this instance (by its id,
        which ``meshkit up`` keeps across restarts) and those of instances
        whose lease lapsed; it stops with the service, after the drain.
        The runner owns the store and closes it.
        """
        crash_at = read_environment().saga_crash_at
        runner = SagaRunner(store, sagas, lease=lease, clock=self._clock, crash_at=crash_at)
        runner.on_run.append(self._saga_metrics.observe)
        self._sagas.append(runner)
        return runner

    def notify_outbox(self) -> None:
        """An event was committed to an outbox: relay it now."""
        for relay in self._relays:
            relay.notify()

    @property
    def ready(self) -> bool:
        return self._asgi.is_ready()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (the entry point of a service process).

        Unless the process configured logging itself, records go to standard
        error: all of them when they are not sent anywhere else, else only
        warnings, errors and lifecycle lines (the rest: ``meshkit logs``).
        """
        root = logging.getLogger()
        if not root.handlers:
            root.setLevel(logging.INFO)
            root.addHandler(console_handler(everything=self._destination() == Destination()))
        try:
            import uvloop

            uvloop.run(self.serve())
        except ImportError:  # not on this platform
            asyncio.run(self.serve())

    def stop(self) -> None:
        """Begin draining, as SIGTERM does."""
        if self._stop is not None:
            self._stop.set()

    async def serve(self) -> None:
        """Serve, register, and drain on a signal or ``stop()``.

        Raises ``ConfigError`` if no registry is configured, or no bus when
        handlers or outboxes need one, or the port cannot be listened on.
        Whatever it opened is closed on the way out, each part whether or
        not the one before it closed cleanly; objects passed in stay open.
        """
        async with contextlib.AsyncExitStack() as opened:
            registry = use_registry(self._registry_given, token=self._token, opened=opened)
            needs_bus = self.name if self._wanted or self._outboxes else None
            bus = await use_bus(
                self._bus_given, token=self._token, opened=opened, needed_by=needs_bus
            )
            self._stop = stop = asyncio.Event()
            opened.enter_context(stop_signals(stop.set))
            self.port = claim_port(self.host, self.port)
            self.instance = instance = instance_for(
                service=self.name,
                instance_id=self.instance_id,
                host=self.host,
                port=self.port,
                version=self.version,
                metadata=self.metadata,
            )
            self._start_telemetry(instance, opened)
            self._connect(registry, bus, opened)
            for runner in self._sagas:
                # Named before the first request can begin a run: by the instance,
                # so a restarted one takes its runs back.
                runner.owner = f"{self.name}/{instance.id}"
            # By URL, the heartbeat's thread opens a registry client of its own.
            heartbeat = heartbeat_for(
                self.registry_url or registry, token=self._token, instance=instance, ttl=self.ttl
            )
            await self._serve(heartbeat, bus, stop, opened)

    def _destination(self) -> Destination:
        if not self.telemetry:
            return Destination()
        return destination(control=self.registry_url, token=self._token, variables=otlp_variables())

    def _start_telemetry(self, instance: Instance, opened: contextlib.AsyncExitStack) -> None:
        """Send spans and log records (see the class), exported one last time on the way out."""
        identity = Identity(service=self.name, instance=instance.id, version=self.version)
        telemetry = start_telemetry(identity, self._destination())
        if telemetry is not None:
            self._telemetry = telemetry  # its drops and failures are counted in /-/metrics
            opened.push_async_callback(asyncio.to_thread, telemetry.shutdown)

    def _connect(
        self, registry: Registry, bus: Bus | None, opened: contextlib.AsyncExitStack
    ) -> None:
        """``service.client`` and ``service.bus``, until ``opened`` closes."""
        directory = Directory(registry, clock=self._clock)
        opened.push_async_callback(directory.aclose)
        self._client = ServiceClient(directory, policy=self.policy, clock=self._clock)
        self._client.on_call.append(self.metrics.observe_call)
        opened.push_async_callback(self._forget_client)
        self._bus = bus

    async def _serve(
        self,
        heartbeat: Heartbeat,
        bus: Bus | None,
        stop: asyncio.Event,
        opened: contextlib.AsyncExitStack,
    ) -> None:
        """Serve until ``stop`` is set, relaying and registered once live, and drain.

        The relays close with ``opened``, after the drain, so that the last
        requests' events go out.
        """
        instance = heartbeat.instance
        server = GranianServer(self._asgi, self.host, self.port)
        serving = asyncio.get_running_loop().create_task(server.serve())
        draining = False
        self._asgi.is_ready = lambda: heartbeat.registered and not draining
        subscriptions: list[Subscription] = []
        try:
            await wait_live(serving, self.host, self.port, clock=self._clock, name=self.name)
            if bus is not None:
                self._relays = await start_relays(
                    self._outboxes, bus, opened=opened, flush=self.drain_timeout
                )
            for runner in self._sagas:
                await runner.start()
                opened.push_async_callback(runner.aclose)
            subscriptions = self._subscriptions = await join(bus, self._wanted, clock=self._clock)
            await self._register(heartbeat, instance)
            await wait_for_stop(serving, stop)
        finally:
            draining = True
            await drain(
                heartbeat,
                lambda: self._stop_server(server, serving, instance),
                subscriptions,
                grace=self.drain_timeout,
                name=self.name,
            )

    async def _register(self, heartbeat: Heartbeat, instance: Instance) -> None:
        heartbeat.start()
        registered = await asyncio.to_thread(heartbeat.wait_registered, _FIRST_REGISTRATION)
        where = self.registry_url or type(self._registry_given).__name__
        log.info(
            "%s serving on %s:%d%s",
            instance.key,
            self.host,
            self.port,
            f", registered at {where}" if registered else ", registering...",
            extra=LIFECYCLE,
        )

    async def _stop_server(
        self, server: GranianServer, serving: asyncio.Task[None], instance: Instance
    ) -> None:
        await stop_serving(
            server,
            serving,
            grace=self.drain_timeout,
            in_flight=lambda: self._asgi.in_flight,
            name=self.name,
        )
        log.info("%s stopped", instance.key, extra=LIFECYCLE)

    async def _forget_client(self) -> None:
        client, self._client = self._client, None
        self._bus = None
        self._relays = []
        if client is not None:
            await client.aclose()
