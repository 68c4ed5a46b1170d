"""``LazyDeadline``: a deadline that moves on every read, kept on one timer.

A connection's deadline moves later each time bytes arrive. Re-arming an
event-loop timer each time would cost more than the read itself, so the
deadline is just assigned (``at``) when it moves later, and the one armed
timer, when it fires, finds it moved and re-arms for it. Only a deadline
earlier than the armed timer re-arms at once (``move``).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

__all__ = ["LazyDeadline"]


class LazyDeadline:
    """Calls ``expired()`` once loop time passes ``at``; ``at = math.inf``: no deadline."""

    __slots__ = ("_expired", "_loop", "_timer", "_timer_at", "at")

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], None]) -> None:
        self._loop = loop
        self._expired = expired
        self.at = math.inf  # assign to move it later (or off); move() when it may be earlier
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def move(self, deadline: float) -> None:
        """Set the deadline to ``deadline``, earlier or later than before."""
        self.at = deadline
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._fired)
            self._timer_at = deadline

    def cancel(self) -> None:
        """No deadline any more, and no timer (the connection is closing)."""
        self.at = math.inf
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, math.inf

    def _fired(self) -> None:
        self._timer, self._timer_at = None, math.inf
        if self.at <= self._loop.time():
            self._expired()
        elif self.at != math.inf:
            self.move(self.at)  # it moved later meanwhile
