"""The control plane process: the registry, the event broker and the telemetry store, served
over HTTP.

A later issue adds the dashboard to the same process and the same server.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from meshkit._clock import Clock, SystemClock
from meshkit._signals import until_stopped
from meshkit.bus._broker import EmbeddedBroker
from meshkit.control._api import RegistryAPI
from meshkit.control._bus_api import BusAPI
from meshkit.control._metrics import PlaneMetrics
from meshkit.control._rollout_api import RolloutAPI
from meshkit.control._rollouts import RolloutStore
from meshkit.control._telemetry_api import TelemetryAPI
from meshkit.http import HTTPServer, ServerLimits
from meshkit.observe import Retention, TelemetryStore, keep_retention
from meshkit.registry import EmbeddedRegistry

__all__ = ["DEFAULT_PORT", "ControlPlane"]

DEFAULT_PORT = 7700


class ControlPlane:
    """The registry (``registry.sqlite3`` in ``data_dir``), the bus (``bus.sqlite3``), the
    telemetry (``telemetry.sqlite3``, kept as ``retention`` says) and the rollouts
    (``rollouts.sqlite3``)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        token: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        clock: Clock | None = None,
        retention: Retention | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self._token = token
        self._clock = clock
        self.registry = EmbeddedRegistry.open(data_dir / "registry.sqlite3", clock=clock)
        self.rollouts = RolloutStore(data_dir / "rollouts.sqlite3")
        self.bus: EmbeddedBroker | None = None
        self.telemetry: TelemetryStore | None = None
        self._retention = retention or Retention()
        self._purges: asyncio.Task[None] | None = None
        self._server: HTTPServer | None = None
        self.address: tuple[str, int] | None = None

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def start(self) -> tuple[str, int]:
        """Open the bus, start expiring leases and serving; returns the address bound."""
        self.bus = await EmbeddedBroker.open(self.data_dir / "bus.sqlite3", clock=self._clock)
        self.bus.start_upkeep()
        clock = self._clock or SystemClock()
        self.telemetry = TelemetryStore(
            self.data_dir / "telemetry.sqlite3", retention=self._retention
        )
        self._purges = asyncio.create_task(keep_retention(self.telemetry, clock=clock))
        metrics = PlaneMetrics(self.registry, lambda: self.bus, lambda: self.telemetry)
        api = RegistryAPI(
            self.registry,
            token=self._token,
            bus=BusAPI(self.bus),
            telemetry=TelemetryAPI(self.telemetry, clock=clock),
            metrics=metrics,
            rollouts=RolloutAPI(self.rollouts, clock=clock, spans=self.telemetry.offer_spans),
        )
        self._server = HTTPServer(
            metrics.measured(api.handle),
            limits=ServerLimits(
                # Long polls hold a request open for minutes: the idle timeout
                # only applies between requests, so keep it above the longest wait.
                idle_timeout=330,
                # A publish batch: up to 8 MiB of messages (RemoteBus splits
                # larger ones), one of them up to the bus's 1 MiB limit.
                max_body_bytes=10 * 1024 * 1024,
            ),
        )
        self.registry.start()
        self.address = await self._server.start(self.host, self.port)
        api.address = self.address
        return self.address

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.aclose(grace=1.0)
        await self.registry.aclose()
        if self.bus is not None:
            await self.bus.aclose()
        if self._purges is not None:
            self._purges.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purges
        if self.telemetry is not None:
            await asyncio.to_thread(self.telemetry.close)  # writes what is queued
        self.rollouts.close()

    async def serve_until_stopped(self) -> None:
        """Serve until SIGINT or SIGTERM, then close."""
        await self.start()
        try:
            await until_stopped()
        finally:
            await self.aclose()
