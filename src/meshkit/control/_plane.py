"""The control plane process: the registry, served over HTTP.

Later issues add the event broker, the telemetry store and the dashboard to
the same process and the same server.
"""

from __future__ import annotations

from pathlib import Path

from meshkit._clock import Clock
from meshkit._signals import until_stopped
from meshkit.control._api import RegistryAPI
from meshkit.http import HTTPServer, ServerLimits
from meshkit.registry import EmbeddedRegistry

__all__ = ["DEFAULT_PORT", "ControlPlane"]

DEFAULT_PORT = 7700


class ControlPlane:
    """The registry at ``data_dir/registry.sqlite3``, served on ``host:port``."""

    def __init__(
        self,
        *,
        data_dir: Path,
        token: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        clock: Clock | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.registry = EmbeddedRegistry.open(data_dir / "registry.sqlite3", clock=clock)
        self._api = RegistryAPI(self.registry, token=token)
        # Long polls hold a request open for minutes: the idle timeout only
        # applies between requests, so keep it above the longest wait.
        self._server = HTTPServer(self._api.handle, limits=ServerLimits(idle_timeout=330))
        self.address: tuple[str, int] | None = None

    async def start(self) -> tuple[str, int]:
        """Start expiring leases and serving; returns the address bound."""
        self.registry.start()
        self.address = await self._server.start(self.host, self.port)
        return self.address

    async def aclose(self) -> None:
        await self._server.aclose(grace=1.0)
        await self.registry.aclose()

    async def serve_until_stopped(self) -> None:
        """Serve until SIGINT or SIGTERM, then close."""
        await self.start()
        try:
            await until_stopped()
        finally:
            await self.aclose()
