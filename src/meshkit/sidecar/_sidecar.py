"""The sidecar: an app of any language joins the mesh through two ports beside it.

Inbound (``port``): what the registry lists for the app. Requests are
proxied to the app, with a span each and metrics. Outbound
(``outbound_port``): the app calls ``http://127.0.0.1:PORT/<service>/<path>``
and the sidecar finds an instance of the service in the registry, balances,
ejects failing instances, retries with exponential backoff within a budget,
and opens a breaker per service and method, as the gateway does per route. Events: for each of
``events``, the sidecar joins a consumer group on the bus and POSTs the
group's messages to the app (see ``_events``).
"""

from __future__ import annotations

import asyncio
import logging
import random

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.bus import Bus, Subscription, subscribe
from meshkit.discovery import CallPolicy, Directory
from meshkit.errors import ConfigError
from meshkit.http import HTTPClient, Timeouts
from meshkit.observe import Exporter, Identity, Recorder, RecorderCollector, Sink
from meshkit.policy import Redelivery, RetryPolicy
from meshkit.proxy import (
    Forwarder,
    Forwarding,
    ProxyMetrics,
    ProxyServer,
    Ready,
    Tracing,
    Upstreams,
    route_breaker,
)
from meshkit.registry import MAX_TTL, MIN_TTL, Instance, Registry, check_name
from meshkit.sidecar._events import (
    AppDelivery,
    EventRoute,
    check_app_path,
    check_max_deliveries,
)
from meshkit.sidecar._filters import METRICS_PATH, READY_PATH, ByName, Metrics, ToApp
from meshkit.sidecar._health import HealthGate, Registrar, cancel_and_wait

__all__ = ["Sidecar", "SidecarConfig"]

# How much longer than a delivery's timeout its ack deadline is.
_ACK_MARGIN = 30.0
_log = logging.getLogger("meshkit.sidecar")


class SidecarConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What ``meshkit sidecar`` is told on its command line."""

    service: str
    app_host: str
    app_port: int
    health: str  # the app's health path: 2xx or 3xx passes
    host: str = "127.0.0.1"  # the inbound port listens here
    # The outbound port reaches every service with no key: loopback only,
    # unless told otherwise, whatever the inbound port does.
    outbound_host: str = "127.0.0.1"
    # X-Forwarded-* from callers kept only when the inbound port is reached
    # by trusted peers alone (the gateway, other sidecars).
    trust_forwarded: bool = False
    port: int = 0  # inbound: what the registry lists; 0 for a free one
    outbound_port: int = 0
    advertise: str | None = None  # the host others reach the inbound port at (default: host)
    instance_id: str | None = None
    version: str = ""
    ttl: float = 5.0
    interval: float = 1.0  # between health checks
    fall: int = 3  # failed checks in a row that deregister the app (HAProxy's default)
    rise: int = 2  # passing checks in a row that register it again
    attempts: int = 3  # outbound tries per request, the first included
    timeout: float = 30.0  # an outbound request, retries included
    connect_timeout: float = 2.0
    try_timeout: float = 10.0
    max_ejection_percent: int = 50  # see meshkit.discovery.CallPolicy
    panic_threshold: int = 50
    events: tuple[EventRoute, ...] = ()  # bus messages POSTed to the app
    max_deliveries: int = 5  # of each such message, before the dead-letter queue

    def __post_init__(self) -> None:
        check_name("service", self.service)
        check_app_path("health", self.health)
        for key, port in (
            ("app", self.app_port),
            ("port", self.port),
            ("outbound_port", self.outbound_port),
        ):
            if not (0 if key != "app" else 1) <= port <= 65535:
                raise ConfigError(key, f"port {port} is not a TCP port")
        if not 1 <= self.attempts <= 10:
            raise ConfigError("attempts", f"must be between 1 and 10, got {self.attempts}")
        if not MIN_TTL <= self.ttl <= MAX_TTL:
            raise ConfigError("ttl", f"must be between {MIN_TTL:g} and {MAX_TTL:g} seconds")
        if not 0 < self.interval <= 3600:
            raise ConfigError(
                "interval", f"must be between 0 and 3600 seconds, got {self.interval}"
            )
        check_max_deliveries(self.max_deliveries)
        self.call_policy()  # ejection's bounds checked
        for key, value in (("fall", self.fall), ("rise", self.rise)):
            if not 1 <= value <= 100:
                raise ConfigError(key, f"must be between 1 and 100, got {value}")
        # The registration's id, address and version, checked before anything listens.
        Instance(
            service=self.service,
            id=self.instance_id or self.service,
            host=self.advertise or self.host,
            port=1,
            version=self.version,
        )

    def call_policy(self) -> CallPolicy:
        """How outbound calls reach instances: attempts, the overall timeout, ejection's bounds."""
        return CallPolicy(
            retry=RetryPolicy(attempts=self.attempts, timeout=self.timeout),
            max_ejection_percent=self.max_ejection_percent,
            panic_threshold=self.panic_threshold,
        )


class Sidecar:
    """``start()`` opens both ports and begins checking the app; ``aclose()`` leaves first.

    With ``telemetry`` (a ``meshkit.observe.Sink``), requests carry W3C
    trace context both ways, and sampled ones are recorded: a SERVER span
    per inbound request (the app's parent), a CLIENT span per outbound
    attempt, sent as the service's (``service.name``) from this instance.
    A request without a context starts a trace, sampled at ``ratio``
    (default 1.0, as OpenTelemetry's SDKs default to; the gateway's
    decision is followed whenever it made one). Without ``telemetry``,
    trace headers pass through untouched.
    """

    def __init__(
        self,
        config: SidecarConfig,
        registry: Registry,
        *,
        bus: Bus | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        telemetry: Sink | None = None,
        ratio: float = 1.0,
    ) -> None:
        if config.events and bus is None:
            raise ConfigError(
                "bus", "the sidecar has events to deliver but no bus to take them from"
            )
        self.config = config
        self._clock = clock = clock or SystemClock()
        self._bus = bus
        self._subscriptions: list[Subscription] = []
        self._events_http = HTTPClient()
        self._registry = registry
        self.directory = Directory(registry, clock=clock, rng=rng)
        self.upstreams = Upstreams(self.directory, clock, rng=rng)
        self.upstreams.configure(
            config.call_policy(), try_timeout=config.try_timeout, breaker=route_breaker()
        )
        timeouts = Timeouts(connect=config.connect_timeout, read=config.try_timeout)
        app = (config.app_host, config.app_port)
        inbound_metrics = ProxyMetrics(None, prefix="meshkit_sidecar_inbound")
        outbound_metrics = ProxyMetrics(
            self.upstreams.breakers,
            prefix="meshkit_sidecar_outbound",
            registry=inbound_metrics.registry,  # one scrape for both
        )
        self.recorder: Recorder | None = None
        self.exporter: Exporter | None = None
        inbound_tracing = outbound_tracing = None
        if telemetry is not None:
            self.recorder = recorder = Recorder(ratio=ratio, rng=rng)
            identity = Identity(
                service=config.service, instance=config.instance_id or "", version=config.version
            )
            self.exporter = Exporter(recorder, telemetry, resource=identity.resource(), clock=clock)
            inbound_tracing = Tracing(recorder, clock, server=True, client=False)
            outbound_tracing = Tracing(recorder, clock, server=False, client=True)
            inbound_metrics.registry.register(RecorderCollector(recorder, "meshkit_sidecar"))
        self.inbound = ProxyServer(
            [
                layer
                for layer in (
                    Ready(READY_PATH, self.registered, "the app is not registered (yet)"),
                    # Here too, on the port the registry lists: where Prometheus,
                    # told by the control plane's service discovery, scrapes it.
                    Metrics(inbound_metrics.exposition),
                    inbound_tracing,
                    ToApp(app),
                )
                if layer is not None
            ],
            Forwarder(
                forwarding=Forwarding(
                    pseudonym="meshkit-sidecar", trust_forwarded=config.trust_forwarded
                ),
                timeouts=timeouts,
            ),
        )
        # Outbound, the caller is the app beside it: what it says is kept.
        forwarding = Forwarding(pseudonym="meshkit-sidecar", trust_forwarded=True)
        self.outbound = ProxyServer(
            [
                layer
                for layer in (
                    Metrics(inbound_metrics.exposition),
                    outbound_tracing,
                    ByName(),
                    self.upstreams,
                )
                if layer is not None
            ],
            Forwarder(forwarding=forwarding, timeouts=timeouts),
            retrier=self.upstreams,
        )
        self.inbound.on_exchange.append(inbound_metrics.observe)
        self.outbound.on_exchange.append(outbound_metrics.observe)
        self.registrar: Registrar | None = None
        self.ports = (0, 0)  # (inbound, outbound) once started
        self._task: asyncio.Task[None] | None = None

    def registered(self) -> bool:
        """Whether the app is in the registry now."""
        return self.registrar is not None and self.registrar.registration is not None

    async def start(self) -> tuple[int, int]:
        """Listen on both ports; returns ``(inbound, outbound)``."""
        config = self.config
        _, inbound = await self.inbound.start(config.host, config.port)
        try:
            _, outbound = await self.outbound.start(config.outbound_host, config.outbound_port)
        except BaseException:
            await self.inbound.aclose(grace=0)
            raise
        instance = Instance(
            service=config.service,
            id=config.instance_id or f"{config.service}-{inbound}",
            host=config.advertise or config.host,
            port=inbound,
            version=config.version,
            metadata={"sidecar": "meshkit", "metrics_path": METRICS_PATH},
        )
        self.registrar = Registrar(
            self._registry,
            instance,
            app=(config.app_host, config.app_port),
            health=config.health,
            ttl=config.ttl,
            interval=config.interval,
            clock=self._clock,
            gate=HealthGate(fall=config.fall, rise=config.rise),
        )
        self._task = asyncio.get_running_loop().create_task(self.registrar.run())
        self.ports = (inbound, outbound)
        if self.exporter is not None:
            self.exporter.start()
        try:
            await self._subscribe(self.registrar)
        except BaseException:
            await self.aclose(grace=0)
            raise
        return self.ports

    async def _subscribe(self, registrar: Registrar) -> None:
        config = self.config
        # The ack deadline outlasts a delivery's own timeout, so a slow answer
        # is not taken for a dead member (and handed to another meanwhile).
        redelivery = Redelivery(
            max_deliveries=config.max_deliveries, ack_wait=config.timeout + _ACK_MARGIN
        )
        timeouts = Timeouts(connect=config.connect_timeout, read=config.timeout)
        for route in config.events:
            assert self._bus is not None  # checked in __init__
            handler = AppDelivery(
                route,
                (config.app_host, config.app_port),
                self._events_http,
                registrar.present,
                timeouts=timeouts,
                recorder=self.recorder,
                clock=self._clock,
            )
            # Gated on the app's presence: a message taken while the app is
            # away would wait out its ack deadline and count as a failure.
            member = subscribe(
                self._bus,
                route.topic,
                route.group,
                handler,
                redelivery=redelivery,
                clock=self._clock,
                gate=registrar.present,
            )
            await member.start()
            self._subscriptions.append(member)

    async def aclose(self, grace: float = 10.0) -> None:
        """Leave the groups and deregister, so nothing more is sent here; then drain both ports.

        Each step runs whatever became of the one before: a group that
        could not be left must not leave the app registered.
        """
        subscriptions, self._subscriptions = self._subscriptions, []
        try:
            closed = await asyncio.gather(
                *(member.aclose(grace=grace) for member in subscriptions), return_exceptions=True
            )
            for failure in closed:
                if isinstance(failure, Exception):
                    _log.warning("could not leave a consumer group: %s", failure)
        finally:
            try:
                if self._task is not None:
                    await cancel_and_wait(self._task)
            finally:
                await asyncio.gather(
                    self.inbound.aclose(grace=grace), self.outbound.aclose(grace=grace)
                )
                await self.directory.aclose()
                await self._events_http.aclose()
                if self.exporter is not None:
                    await self.exporter.aclose()
