"""Stopping background tasks without swallowing the caller's own cancellation.

``with suppress(CancelledError): await task`` after ``task.cancel()`` also
swallows a cancel aimed at the *caller* while it waits (a shutdown timeout
around ``aclose()``, say), which then returns as if nothing happened.
``asyncio.wait`` does not: it raises the caller's cancellation, and leaves
the task's own outcome to be read.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["ended", "stop"]


async def ended(*tasks: asyncio.Task[Any]) -> None:
    """Wait until every task is done; re-raise the first one's error, if one failed."""
    if not tasks:
        return
    await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled():
            task.result()


async def stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel the tasks and wait until they are done (see ``ended``)."""
    for task in tasks:
        task.cancel()
    await ended(*tasks)
