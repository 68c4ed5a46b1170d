"""A clock for tests: advanced by hand, or jumping ahead when every task waits.

Two ways to use it:

- Pure code (policies): pass ``clock.monotonic()`` as ``now`` and call
  ``clock.advance(seconds)`` between steps.
- Async code: run it on ``clock.new_event_loop()`` (or ``clock.run(main())``).
  That loop's ``time()`` *is* the fake clock, so every asyncio timer
  (``asyncio.sleep``, ``asyncio.timeout``, ``loop.call_later``) and
  ``clock.sleep`` runs in fake time. When no task can make progress, the loop
  would block in its selector until the next timer; instead it first waits
  up to ``autojump_threshold`` real seconds for I/O, then moves the clock
  straight to that timer. A 30-second timeout thus takes microseconds, and
  no test sleeps to wait for time (trio's ``MockClock(autojump_threshold=0)``
  works the same way).

With real I/O in flight (a subprocess, a socket on loopback), a threshold of
0 can jump the clock before the reply arrives: give such tests a threshold a
little above the I/O's real latency, such as 0.05.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from meshkit.errors import UsageError

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["FakeClock"]

R = TypeVar("R")

# A wall-clock origin for fake time: 2025-01-01T00:00:00Z, so timestamps
# printed by tests look plausible.
_WALL_ORIGIN = 1_735_689_600.0


class FakeClock:
    """A ``meshkit.Clock`` whose time moves only when told to (or when all tasks wait)."""

    def __init__(
        self, start: float = 0.0, *, wall: float = _WALL_ORIGIN, autojump_threshold: float = 0.0
    ) -> None:
        if not (math.isfinite(autojump_threshold) and autojump_threshold >= 0):
            raise UsageError(f"autojump_threshold must be >= 0 seconds, got {autojump_threshold!r}")
        self._now = start
        self._wall_offset = wall - start
        self.autojump_threshold = autojump_threshold

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward. Timers that fall due run at the loop's next turn."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise UsageError(f"time only moves forward: advance({seconds!r})")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        if not isinstance(loop, _FakeTimeLoop) or loop.clock is not self:
            raise UsageError(
                "FakeClock.sleep() needs the loop from this clock's new_event_loop()"
                " (or clock.run()); on another loop it would sleep in real time"
            )
        await asyncio.sleep(seconds)

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        """An event loop whose timers run on this clock, jumping ahead when idle."""
        return _FakeTimeLoop(self)

    def run(self, main: Coroutine[Any, Any, R]) -> R:
        """Run ``main`` to completion on a fresh fake-time loop, like ``asyncio.run``."""
        with asyncio.Runner(loop_factory=self.new_event_loop) as runner:
            return runner.run(main)

    def __repr__(self) -> str:
        return f"FakeClock(now={self._now!r})"


class _FakeTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop that tells time with a ``FakeClock``.

    asyncio schedules every timer against ``loop.time()`` and computes how
    long to block from it, so overriding ``time()`` and the selector (both
    public extension points) is all fake time needs.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(_AutojumpSelector(selectors.DefaultSelector(), clock))
        self.clock = clock

    def time(self) -> float:
        return self.clock.monotonic()


class _AutojumpSelector(selectors.BaseSelector):
    """Delegates to a real selector, but turns "block until the next timer" into a jump."""

    def __init__(self, inner: selectors.BaseSelector, clock: FakeClock) -> None:
        self._inner = inner
        self._clock = clock

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # timeout is 0 when callbacks are ready, None when no timer exists,
        # else the fake seconds until the next timer: the loop is idle.
        if timeout is not None and timeout <= 0:
            return self._inner.select(timeout)
        events = self._inner.select(self._clock.autojump_threshold)
        if events or timeout is None:
            return events or self._inner.select(None)
        self._clock.advance(timeout)
        return []

    def register(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: FileDescriptorLike) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(
        self, fileobj: FileDescriptorLike, events: int, data: Any = None
    ) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def get_map(self) -> Mapping[FileDescriptorLike, selectors.SelectorKey]:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()
