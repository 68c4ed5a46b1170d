"""The ASGI server a Service runs: granian's embedded server, in the service's event loop.

``python -m benchmarks.asgi`` compares it with uvicorn (httptools, uvloop)
and with granian on its own. It was chosen for its steadier tail latency and
for control of shutdown, not for throughput: embedded, granian leaves
signals and the order of shutdown to us, and its ``stop()`` finishes
requests in flight. Its authors call the embedded mode experimental, so
what we rely on of it is covered by meshkit's own tests
(``tests/e2e/test_service_lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from meshkit._clock import Clock
from meshkit._net import probe_listen
from meshkit.errors import ConfigError, DeadlineExceededError, EnvironmentFaultError, PeerError
from meshkit.http import HTTPClient, Timeouts
from meshkit.service._asgi import ASGIApp

__all__ = ["GranianServer", "claim_port", "stop_serving", "wait_live"]

log = logging.getLogger("meshkit.service")


def claim_port(host: str, port: int) -> int:
    """``port``, or a free one for 0, once it is known that ``host`` can listen on it.

    Raises ``ConfigError`` naming ``port`` now, rather than leaving it to the
    server's own error (a Rust backtrace, for granian).
    """
    try:
        return probe_listen(host, port)
    except OSError as error:
        raise ConfigError("port", f"cannot listen on {host}:{port}: {error}") from error


class GranianServer:
    """granian's embedded ASGI server, quiet unless something goes wrong."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        from granian.constants import Interfaces
        from granian.server.embed import Server

        # granian warns that embedding is experimental on every start; see
        # the module's docstring.
        logging.getLogger("granian").setLevel(logging.ERROR)
        self._server = Server(
            app, address=host, port=port, interface=Interfaces.ASGI, log_enabled=False
        )

    async def serve(self) -> None:
        await self._server.serve()

    def stop(self) -> None:
        self._server.stop()  # type: ignore[no-untyped-call] # granian leaves it unannotated


async def wait_live(
    serving: asyncio.Task[None], host: str, port: int, *, clock: Clock, name: str
) -> None:
    """Until the application answers its own liveness check (its lifespan has started).

    Raises what the server raised if it stopped, and ``EnvironmentFaultError``
    if it stopped without an error or did not answer within about 15 s.
    """
    async with HTTPClient(timeouts=Timeouts(connect=0.5, read=2.0)) as http:
        for _ in range(300):
            if serving.done():
                serving.result()
                raise EnvironmentFaultError(f"{name}: the server stopped at startup")
            try:
                response = await http.request("GET", host, port, "/-/live")
                if response.status == 200:
                    return
            except (PeerError, DeadlineExceededError):
                pass  # not listening yet
            await clock.sleep(0.05)
    raise EnvironmentFaultError(f"{name}: not answering on {host}:{port}")


async def stop_serving(
    server: GranianServer,
    serving: asyncio.Task[None],
    *,
    grace: float,
    in_flight: Callable[[], int],
    name: str,
) -> None:
    """Stop the server and wait at most ``grace`` s for the requests in flight; never raises.

    A server that fails while stopping is logged, as are requests still in
    flight when time runs out (``in_flight`` counts them).
    """
    server.stop()
    try:
        async with asyncio.timeout(grace):
            await asyncio.shield(serving)
    except TimeoutError:
        log.warning(
            "%s: %d request(s) still in flight after %gs; exiting", name, in_flight(), grace
        )
    except Exception:
        log.exception("%s: the server failed while stopping", name)
