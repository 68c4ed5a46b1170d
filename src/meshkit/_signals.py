"""Waiting for the signals that stop a server process."""

from __future__ import annotations

import asyncio
import signal

__all__ = ["until_stopped"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_stopped() -> None:
    """Return once SIGINT (Ctrl-C) or SIGTERM arrives; then the default handlers are back."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
