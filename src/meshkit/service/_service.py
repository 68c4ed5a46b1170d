"""``Service``: an ASGI application as a member of the mesh.

It serves the application with granian's embedded server. For one FastAPI
route on this kind of machine (wrk, 50 connections, server and load on
separate cores), ``python -m benchmarks.asgi`` measured ``meshkit serve``
(granian embedded in our event loop, with our ASGI layer) at 6.1k
requests/s and p99 12.7 ms, beside uvicorn with httptools and uvloop at
6.1k and 20.4 ms, and granian on its own at 6.5k and 12.1 ms. The choice
is for the steadier tail and for control of shutdown, not for throughput.
Embedded, granian leaves signals and the order of
shutdown to us, and its ``stop()`` finishes requests in flight; its authors
call the embedded mode experimental, so what we rely on of it is tested here.

Lifecycle:

1. start serving; once the application answers its own liveness check
   (so its lifespan startup has run), register with the registry;
2. renew the lease from a thread of its own (see ``_heartbeat``);
3. on SIGTERM or SIGINT, drain: stop reporting ready, deregister (clients
   watching the registry stop sending within milliseconds), then stop the
   server, which finishes requests in flight, for at most ``drain_timeout``
   seconds, and exit.

Inside request handlers, ``service.client`` calls other services by name
and ``service.bus`` publishes. Handlers declared with ``@service.subscribe``
join their consumer groups once the application is live, and leave first
when it drains; outboxes given to ``service.add_outbox`` are relayed to the
bus for as long as the service runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
from collections.abc import Callable, Mapping

from meshkit._clock import Clock, SystemClock
from meshkit._env import read_environment
from meshkit._net import probe_listen
from meshkit.bus import (
    Bus,
    Handler,
    OutboxRelay,
    OutboxStore,
    Subscription,
    check_group,
    check_topic,
    open_bus,
)
from meshkit.bus import subscribe as subscription
from meshkit.bus._open import bus_url
from meshkit.errors import (
    ConfigError,
    DeadlineExceededError,
    EnvironmentFaultError,
    PeerError,
    UsageError,
)
from meshkit.http import HTTPClient, Timeouts
from meshkit.policy import Redelivery
from meshkit.policy import _check as check
from meshkit.registry import MAX_TTL, MIN_TTL, Instance, Registry, check_name, open_registry
from meshkit.service._asgi import ASGIApp, MeshASGI
from meshkit.service._client import CallPolicy, ServiceClient
from meshkit.service._directory import Directory
from meshkit.service._heartbeat import Heartbeat
from meshkit.service._problems import install_if_starlette

__all__ = ["Service"]

log = logging.getLogger("meshkit.service")

_DEFAULT_TTL = 10.0  # seconds; a dead instance leaves discovery within this


class _Wanted:
    """A ``@service.subscribe`` handler, joined to its group while the service runs."""

    __slots__ = ("concurrency", "group", "handler", "redelivery", "topic")

    def __init__(
        self, topic: str, group: str, handler: Handler, concurrency: int, redelivery: Redelivery
    ) -> None:
        self.topic = check_topic(topic)
        self.group = check_group(group)
        self.handler = handler
        self.concurrency = check.whole("concurrency", concurrency, minimum=1)
        self.redelivery = check.instance("redelivery", redelivery, Redelivery)


class Service:
    """Serve ``app`` as an instance of service ``name``, registered and discoverable.

    Settings not passed come from the ``MESHKIT_*`` environment that
    ``meshkit up`` provides (see ``meshkit._env``), then from defaults:
    host 127.0.0.1, a free port, a 10 s TTL. ``registry`` is a URL:
    ``http://host:port`` for a control plane (with ``token``) or
    ``etcd://host:port``. ``bus`` is a URL for ``open_bus`` (default:
    ``MESHKIT_BUS``, else the registry's control plane). A Starlette or
    FastAPI ``app`` answers its errors as problem details (RFC 9457) unless
    ``problem_details=False`` (see ``install_problem_handlers``).
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
        registry: str | None = None,
        token: str | None = None,
        bus: str | None = None,
        instance_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        drain_timeout: float = 5.0,
        policy: CallPolicy | None = None,
        clock: Clock | None = None,
        problem_details: bool = True,
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
        # Checked when serving, not here: a module defining its service must
        # import cleanly outside the mesh too (tests, tools).
        self.registry_url = registry or env.registry
        self._token = token or env.token
        self.bus_url = bus_url(bus or env.bus, self.registry_url)
        self.version = version or env.version or ""
        self.instance_id = instance_id or env.instance_id
        self.metadata = dict(metadata or {})
        self.metadata.setdefault("pid", str(os.getpid()))
        self.metadata.setdefault("restarts", str(env.restarts))
        self.drain_timeout = check.seconds("drain_timeout", drain_timeout)
        self.policy = policy or CallPolicy()
        self._clock = clock or SystemClock()
        if problem_details:
            install_if_starlette(app)
        self._asgi = MeshASGI(app, clock=self._clock)
        self._client: ServiceClient | None = None
        self._bus: Bus | None = None
        self._wanted: list[_Wanted] = []
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
            wanted = _Wanted(
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

    def notify_outbox(self) -> None:
        """An event was committed to an outbox: relay it now."""
        for relay in self._relays:
            relay.notify()

    @property
    def ready(self) -> bool:
        return self._asgi.is_ready()

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT (the entry point of a service process)."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO, format="%(message)s")
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
        handlers or outboxes need one. Whatever was opened is closed on the
        way out, each part whether or not the one before it closed cleanly.
        """
        registry = self._open_registry()  # fails now on a missing or bad registry
        async with contextlib.AsyncExitStack() as opened:
            opened.push_async_callback(registry.aclose)
            bus = await self._open_bus()
            if bus is not None:
                opened.push_async_callback(bus.aclose)
            await self._serve(registry, bus, opened)

    async def _serve(
        self, registry: Registry, bus: Bus | None, opened: contextlib.AsyncExitStack
    ) -> None:
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, self._stop.set)
        try:  # a clear error now, rather than the server's own (a Rust backtrace, for granian)
            self.port = probe_listen(self.host, self.port)
        except OSError as error:
            where = f"{self.host}:{self.port}"
            raise ConfigError("port", f"cannot listen on {where}: {error}") from error
        self.instance = Instance(
            service=self.name,
            id=self.instance_id or _default_id(self.name, self.port),
            host=self.host,
            port=self.port,
            version=self.version,
            metadata=self.metadata,
        )
        directory = Directory(registry, clock=self._clock)
        opened.push_async_callback(directory.aclose)
        self._client = ServiceClient(directory, policy=self.policy, clock=self._clock)
        opened.push_async_callback(self._forget_client)
        self._bus = bus
        # Before the application starts, so that its lifespan may publish;
        # closed after the drain, so that the last requests' events go out.
        if bus is not None:
            for store in self._outboxes:
                relay = OutboxRelay(store, bus)
                self._relays.append(relay)
                opened.push_async_callback(relay.aclose, flush=self.drain_timeout)
                await relay.start()
        subscriptions: list[Subscription] = []
        server = _GranianServer(self._asgi, self.host, self.port)
        heartbeat = Heartbeat(self._open_registry, self.instance, ttl=self.ttl)
        serving = loop.create_task(server.serve())
        draining = False
        self._asgi.is_ready = lambda: heartbeat.registered and not draining
        try:
            await self._wait_live(serving)
            subscriptions = await self._join(bus)
            heartbeat.start()
            registered = await asyncio.to_thread(heartbeat.wait_registered, 5.0)
            log.info(
                "%s serving on %s:%d%s",
                self.instance.key,
                self.host,
                self.port,
                f", registered at {self.registry_url}" if registered else ", registering...",
            )
            stop = loop.create_task(self._stop.wait())
            await asyncio.wait({serving, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if serving.done():
                serving.result()  # the server died on its own: raise why
        finally:
            draining = True
            # Handlers finish while requests drain.
            ended = await asyncio.gather(
                self._drain(server, serving, heartbeat),
                *(s.aclose(grace=self.drain_timeout) for s in subscriptions),
                return_exceptions=True,
            )
            for failure in ended:
                if isinstance(failure, Exception):
                    log.warning("%s: while stopping: %r", self.name, failure)

    async def _forget_client(self) -> None:
        client, self._client = self._client, None
        self._bus = None
        self._relays = []
        if client is not None:
            await client.aclose()

    async def _drain(
        self, server: _GranianServer, serving: asyncio.Task[None], heartbeat: Heartbeat
    ) -> None:
        await asyncio.to_thread(heartbeat.stop, timeout=3.0)
        server.stop()
        try:
            async with asyncio.timeout(self.drain_timeout):
                await asyncio.shield(serving)
        except TimeoutError:
            log.warning(
                "%s: %d request(s) still in flight after %gs; exiting",
                self.name,
                self._asgi.in_flight,
                self.drain_timeout,
            )
        except Exception:
            log.exception("%s: the server failed while stopping", self.name)
        log.info("%s stopped", self.instance.key if self.instance else self.name)

    async def _open_bus(self) -> Bus | None:
        """The bus, if it is configured; ``ConfigError`` if handlers or outboxes need it."""
        if self.bus_url:
            return await open_bus(self.bus_url, token=self._token)
        if self._wanted or self._outboxes:
            raise ConfigError(
                "bus",
                f"{self.name} subscribes or has an outbox, but no bus is given: "
                "pass bus= or set MESHKIT_BUS (a control plane's registry is its bus too)",
            )
        return None

    async def _join(self, bus: Bus | None) -> list[Subscription]:
        """Every ``@subscribe`` handler, joined to its group; none if one fails to join."""
        joined: list[Subscription] = []
        try:
            for wanted in self._wanted:
                assert bus is not None  # _open_bus saw to it
                member = subscription(
                    bus,
                    wanted.topic,
                    wanted.group,
                    wanted.handler,
                    concurrency=wanted.concurrency,
                    redelivery=wanted.redelivery,
                    clock=self._clock,
                )
                await member.start()
                joined.append(member)
        except BaseException:
            await asyncio.gather(*(member.aclose(grace=0) for member in joined))
            raise
        return joined

    def _open_registry(self) -> Registry:
        if not self.registry_url:
            raise ConfigError(
                "registry", "no registry given: pass registry= or set MESHKIT_REGISTRY"
            )
        return open_registry(self.registry_url, token=self._token)

    async def _wait_live(self, serving: asyncio.Task[None]) -> None:
        """Until the application answers its own liveness check (its lifespan has started)."""
        async with HTTPClient(timeouts=Timeouts(connect=0.5, read=2.0)) as http:
            for _ in range(300):
                if serving.done():
                    serving.result()
                    raise EnvironmentFaultError(f"{self.name}: the server stopped at startup")
                try:
                    response = await http.request("GET", self.host, self.port, "/-/live")
                    if response.status == 200:
                        return
                except (PeerError, DeadlineExceededError):
                    pass  # not listening yet
                await self._clock.sleep(0.05)
        raise EnvironmentFaultError(f"{self.name}: not answering on {self.host}:{self.port}")


class _GranianServer:
    """granian's embedded ASGI server, quiet unless something goes wrong."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        # granian warns that embedding is experimental on every start;
        # what we rely on of it is covered by meshkit's own tests.
        logging.getLogger("granian").setLevel(logging.ERROR)
        self._server = Server(
            app, address=host, port=port, interface=Interfaces.ASGI, log_enabled=False
        )

    async def serve(self) -> None:
        await self._server.serve()

    def stop(self) -> None:
        self._server.stop()  # type: ignore[no-untyped-call] # granian leaves it unannotated


def _default_id(name: str, port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60].strip("-._") or "host"
    return f"{name}-{host}-{port}"
