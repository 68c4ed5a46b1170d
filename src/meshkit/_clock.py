"""Time, behind one small protocol.

This is the only module in meshkit that reads the real clock or sleeps (ruff's
banned-api rule keeps it so). Everything else takes a ``Clock``, which lets
tests run a 30-second breaker timeout in microseconds with
``meshkit.testing.FakeClock``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time and a way to wait for it.

    ``monotonic()`` is for measuring intervals and deadlines: it never goes
    backwards and has an arbitrary origin. ``time()`` is wall-clock seconds
    since the Unix epoch, for timestamps shown to people and stored in logs; it
    can jump, so never subtract two of them to measure a duration.
    """

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def time(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``asyncio.sleep``.

    asyncio's event loop schedules its own timers on ``time.monotonic`` too,
    so deadlines computed here agree with ``loop.call_at``.
    """

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"
