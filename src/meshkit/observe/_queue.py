"""A bounded export queue for the OpenTelemetry SDK's spans and log records, that counts.

The SDK's batch processors drop what overflows their queue (2,048 by
default, half of a burst's spans when measured here) and say so only in a
log line. This queue is larger by default, and keeps the counts a process
exposes (``statistics()``): queued, exported, dropped because the queue was
full, and failed because the exporter could not deliver. A failing
destination is reported on the ``meshkit.observe`` logger once a minute at
most, never per batch. One daemon thread per queue exports in batches: when
a batch is full, or ``delay`` after the first record waiting.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import msgspec

from meshkit._clock import Clock, SystemClock

__all__ = ["ExportQueue", "QueueStatistics"]

T = TypeVar("T")

_log = logging.getLogger("meshkit.observe")

# What a queue holds by default: 32 times the SDK's 2,048, held only while
# the destination cannot keep up.
DEFAULT_SIZE = 65_536
_BATCH = 512
_REPORT_EVERY = 60.0


class QueueStatistics(msgspec.Struct, frozen=True):
    queued: int
    exported: int
    dropped: int
    failed: int


class ExportQueue(Generic[T]):
    """Holds up to ``size`` items for ``export(batch) -> bool`` (True: delivered)."""

    def __init__(
        self,
        export: Callable[[Sequence[T]], bool],
        *,
        what: str,
        size: int = DEFAULT_SIZE,
        batch: int = _BATCH,
        delay: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        self._export = export
        self._what = what
        self._size = size
        self._batch = batch
        self._delay = delay
        self._items: deque[T] = deque()
        self._clock = clock or SystemClock()
        self._wake = threading.Condition()
        self._idle = threading.Condition()
        self._exported = self._dropped = self._failed = 0
        self._busy = False
        self._urgent = False  # a flush asked for what is queued now
        self._closed = False
        self._last_report = float("-inf")
        self._thread = threading.Thread(target=self._run, name=f"meshkit-{what}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        """Queue ``item``, or count it dropped when the queue is full or closed."""
        if self._closed or len(self._items) >= self._size:
            self._dropped += 1  # a racy count under contention; close enough for a counter
            return
        self._items.append(item)
        if len(self._items) == self._batch:
            with self._wake:
                self._wake.notify()

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(len(self._items), self._exported, self._dropped, self._failed)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until what is queued now has been exported (or failed); False on timeout."""
        with self._wake:
            self._urgent = True
            self._wake.notify()
        with self._idle:
            return self._idle.wait_for(lambda: not (self._items or self._busy), timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Export what is queued (within ``timeout``), then stop the thread."""
        self.flush(timeout)
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not (self._closed and not self._items):
            # Checked and waited under the lock that put(), flush() and
            # close() notify under, so that no wake-up is lost between them.
            with self._wake:
                if len(self._items) < self._batch and not (self._closed or self._urgent):
                    self._wake.wait(self._delay)
                self._urgent = False
            self._busy = True
            try:
                while self._items:
                    count = min(self._batch, len(self._items))
                    self._send([self._items.popleft() for _ in range(count)])
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def _send(self, batch: list[T]) -> None:
        try:
            delivered = self._export(batch)
        except Exception as error:  # noqa: BLE001 (an exporter's bug must not stop the thread)
            delivered = False
            self._report(f"{type(error).__name__}: {error}")
        if delivered:
            self._exported += len(batch)
        else:
            self._failed += len(batch)
            self._report("the destination did not take them")

    def _report(self, why: str) -> None:
        now = self._clock.monotonic()
        if now - self._last_report >= _REPORT_EVERY:
            self._last_report = now
            _log.warning(
                "could not export %s (%s); %d failed so far", self._what, why, self._failed
            )


def delivered(result: Any) -> bool:
    """Whether an OpenTelemetry exporter's result (``SUCCESS``/``FAILURE`` enums) is success."""
    return getattr(result, "name", "") == "SUCCESS"
