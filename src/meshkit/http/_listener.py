"""``Listener``: what the HTTP server and the proxy share about their listening side.

The socket, the open connections, the count of requests in flight, and
draining: ``aclose(grace)`` stops accepting, closes idle connections at
once, lets requests in flight finish for up to ``grace`` seconds, then
closes what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["Listener"]


class _Connection(Protocol):
    def close(self) -> None: ...

    def close_if_idle(self) -> None: ...


C = TypeVar("C", bound=_Connection)


class Listener(Generic[C]):
    """Subclasses give ``start`` their connection factory and count requests in and out."""

    def __init__(self) -> None:
        self.connections: set[C] = set()
        self.in_flight = 0
        self.draining = False
        self._server: asyncio.Server | None = None
        self._quiet: asyncio.Future[None] | None = None  # made when draining waits

    async def _listen(
        self, factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[str, int]:
        """Listen on ``host:port`` (0 for a free port); returns the address bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(factory, host, port, backlog=1024)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def _drain(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` s, then close."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.in_flight:
            self._quiet = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._quiet
        for connection in list(self.connections):
            connection.close()

    def request_started(self) -> None:
        self.in_flight += 1

    def _request_done(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)
