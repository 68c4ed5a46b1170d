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
  works the same way). With ``autojump_threshold=None`` time moves only by
  ``advance()``.

Work handed to threads (``asyncio.to_thread``, ``loop.getaddrinfo`` and
everything else that goes through ``run_in_executor``) counts as a task that
can make progress: the clock does not jump while it runs. Real I/O in flight
elsewhere (a subprocess, a socket to another process) is not known to the
loop: with a threshold of 0 the clock can jump before its reply arrives, so
give such tests a threshold a little above the I/O's real latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import selectors
import sys
from collections.abc import Callable, Coroutine, Iterator, Mapping
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, TypeVar, TypeVarTuple

from meshkit.errors import UsageError

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

__all__ = ["FakeClock"]

R = TypeVar("R")
Ts = TypeVarTuple("Ts")

# A wall-clock origin for fake time: 2025-01-01T00:00:00Z, so timestamps
# printed by tests look plausible.
_WALL_ORIGIN = 1_735_689_600.0


class FakeClock:
    """A ``meshkit.Clock`` whose time moves only when told to (or when all tasks wait)."""

    def __init__(
        self,
        start: float = 0.0,
        *,
        wall: float = _WALL_ORIGIN,
        autojump_threshold: float | None = 0.0,
    ) -> None:
        if autojump_threshold is not None and not (
            math.isfinite(autojump_threshold) and autojump_threshold >= 0
        ):
            raise UsageError(
                f"autojump_threshold must be >= 0 seconds or None, got {autojump_threshold!r}"
            )
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
        super().__init__(_AutojumpSelector(selectors.DefaultSelector(), clock, self._busy))
        self.clock = clock
        self._threads_working = 0

    def time(self) -> float:
        return self.clock.monotonic()

    def _busy(self) -> bool:
        return self._threads_working > 0

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], R], *args: *Ts
    ) -> asyncio.Future[R]:
        future = super().run_in_executor(executor, func, *args)
        self._threads_working += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _: asyncio.Future[Any]) -> None:
        self._threads_working -= 1

    @contextlib.contextmanager
    def _thread_at_work(self) -> Iterator[None]:
        self._threads_working += 1
        try:
            yield
        finally:
            self._threads_working -= 1

    # Joining the executor happens on a thread of its own; without this, the
    # clock would jump through the join's timeout (300 s in 3.12+), and the
    # loop would warn that the threads never finished.
    if sys.version_info >= (3, 12):

        async def shutdown_default_executor(
            self,
            timeout: float | None = None,  # noqa: ASYNC109 (asyncio's own signature)
        ) -> None:
            with self._thread_at_work():
                await super().shutdown_default_executor(timeout)

    else:

        async def shutdown_default_executor(self) -> None:
            with self._thread_at_work():
                await super().shutdown_default_executor()


class _AutojumpSelector(selectors.BaseSelector):
    """Delegates to a real selector, but turns "block until the next timer" into a jump."""

    def __init__(
        self, inner: selectors.BaseSelector, clock: FakeClock, busy: Callable[[], bool]
    ) -> None:
        self._inner = inner
        self._clock = clock
        self._busy = busy

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # timeout is 0 when callbacks are ready, None when no timer exists,
        # else the fake seconds until the next timer: the loop is idle.
        threshold = self._clock.autojump_threshold
        if (timeout is not None and timeout <= 0) or threshold is None or self._busy():
            # Not idle, or not allowed to jump: wait as a real loop would.
            return self._inner.select(timeout)
        events = self._inner.select(threshold)
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
