"""Stopping a Service: the signals that begin it, and the order of the drain.

On SIGTERM or SIGINT (or ``Service.stop()``) the instance stops reporting
ready and deregisters first, so clients watching the registry stop sending
within milliseconds; then the server stops, finishing requests in flight for
at most the drain timeout. Subscriptions finish their handlers meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence

from meshkit._signals import STOP_SIGNALS
from meshkit.bus import Subscription
from meshkit.service._heartbeat import Heartbeat

__all__ = ["drain", "stop_signals", "wait_for_stop"]

log = logging.getLogger("meshkit.service")

_DEREGISTER_TIMEOUT = 3.0  # seconds; the heartbeat's own deregistration gives up after 2


@contextlib.contextmanager
def stop_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGTERM or SIGINT while inside; their default handling is back after.

    Where the loop cannot take signal handlers (not the main thread, or
    Windows) the service is stopped by ``Service.stop()`` only.
    """
    loop = asyncio.get_running_loop()
    installed = []
    for signum in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop)
            installed.append(signum)
    try:
        yield
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


async def wait_for_stop(serving: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Until ``stop`` is set; raises why if the server ends on its own first."""
    stopped = asyncio.get_running_loop().create_task(stop.wait())
    await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if serving.done():
        serving.result()


async def drain(
    heartbeat: Heartbeat,
    stop_server: Callable[[], Awaitable[None]],
    subscriptions: Sequence[Subscription],
    *,
    grace: float,
    name: str,
) -> None:
    """Deregister then ``stop_server()``, while subscriptions finish within ``grace`` s.

    Never raises: what fails on the way is logged, and the rest still stops.
    """

    async def deregister_then_stop() -> None:
        await asyncio.to_thread(heartbeat.stop, timeout=_DEREGISTER_TIMEOUT)
        await stop_server()

    ended = await asyncio.gather(
        deregister_then_stop(),
        *(subscription.aclose(grace=grace) for subscription in subscriptions),
        return_exceptions=True,
    )
    for failure in ended:
        if isinstance(failure, Exception):
            log.warning("%s: while stopping: %r", name, failure)
