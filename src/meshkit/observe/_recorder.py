"""A span and log recorder cheap enough for a proxy's hot path.

OpenTelemetry's Python SDK costs tens of microseconds per span (a context,
a span object, attribute validation, a processor lock); a proxy request
costs about as much in all. Here a span is one small struct appended to a
list, and the work of turning it into OTLP happens later, in batches
(``Exporter``). The SDK stays the right tool where a span is a small part
of the work (services, the bus, sagas); both send the same OTLP.

Sampling is parent-based (an incoming sampled flag is obeyed either way)
with a ratio for new traces decided on the trace id exactly as
OpenTelemetry's ``TraceIdRatioBased`` decides it, so a trace started here
and one started by an SDK at the same ratio agree on every id.

Times are the injected clock's monotonic seconds; the exporter turns them
into Unix nanoseconds with an offset it reads at each export, so a span
costs no wall-clock read.
"""

from __future__ import annotations

import random
from binascii import hexlify
from collections.abc import Callable

import msgspec

from meshkit.errors import ConfigError

__all__ = [
    "CLIENT",
    "SERVER",
    "Attributes",
    "LogRecord",
    "Recorder",
    "RecorderLimits",
    "RecorderStatistics",
    "Sampler",
    "SpanRecord",
]

# OTLP's SpanKind values.
SERVER = 2
CLIENT = 3
CONSUMER = 5

Attributes = tuple[tuple[str, str | int], ...]

_ID_LIMIT = (1 << 64) - 1
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16


class Sampler:
    """Whether a new trace is recorded: OpenTelemetry's ``TraceIdRatioBased`` rule.

    The lower 64 bits of the trace id, read as a number, below
    ``round(ratio * 2**64)``: sampled. ``ParentBased`` is the caller's part:
    a trace that arrives with a context keeps its sampled flag.
    """

    __slots__ = ("bound", "hex_bound", "ratio")

    def __init__(self, ratio: float) -> None:
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError("ratio", f"must be between 0 and 1, got {ratio}")
        self.ratio = ratio
        self.bound = round(ratio * (_ID_LIMIT + 1))
        # The bound as 16 lower-case hex digits, to compare with the trace id's
        # last 16 as they are: for digits of one width, the order of the text
        # is the order of the numbers. 2**64 (ratio 1) has 17 digits: "g" sorts
        # after every hex digit, so every id is below it.
        self.hex_bound = b"g" if self.bound > _ID_LIMIT else b"%016x" % self.bound

    def sampled(self, trace_id: int) -> bool:
        """The decision for the trace ``trace_id`` (a 128-bit number)."""
        return trace_id & _ID_LIMIT < self.bound


class SpanRecord(msgspec.Struct, frozen=True, gc=False):
    """A finished span: ids in lower-case hex, times in monotonic seconds.

    ``error`` is OpenTelemetry's ``error.type`` (an exception's class name,
    or a status code): set, the span's status is ERROR.
    """

    trace_id: bytes
    span_id: bytes
    parent_id: bytes  # b"" for a trace's root
    name: str
    kind: int  # SERVER, CLIENT or CONSUMER (OTLP's SpanKind numbers)
    start: float
    end: float
    attributes: Attributes
    error: str | None = None


class LogRecord(msgspec.Struct, frozen=True, gc=False):
    """A log record; ids in hex, empty when it belongs to no span.

    ``severity`` is OpenTelemetry's severity number (9 is INFO, 13 WARN, 17 ERROR).
    """

    time: float  # monotonic seconds
    severity: int
    body: str
    trace_id: str
    span_id: str
    attributes: Attributes


class RecorderLimits(msgspec.Struct, frozen=True, kw_only=True):
    """How much a recorder holds and how it is sent.

    - ``max_queue`` 32,768 records of each signal waiting for export: two
      seconds of a busy gateway sampling everything, where the SDK's 2,048
      dropped half of a burst; past it records are dropped, and counted.
    - ``max_batch`` 1,024 records per OTLP request (the SDK's 512 doubled:
      each request costs a round trip, and the body stays near half a MB).
    - ``interval`` 1 s between exports when no batch fills sooner (the
      SDK's 5 s is long for someone watching ``meshkit traces``).
    """

    max_queue: int = 32_768
    max_batch: int = 1_024
    interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max_queue < 1 or self.max_batch < 1:
            raise ConfigError("max_queue", "the queue and the batch hold at least one record")
        if not 0 < self.interval <= 60:
            raise ConfigError("interval", f"must be between 0 and 60 seconds, got {self.interval}")


class RecorderStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts since the recorder was made, by signal (``spans``, ``logs``)."""

    exported: dict[str, int]
    dropped: dict[str, int]  # the queue was full
    failed: dict[str, int]  # sent, and the destination did not take them
    queued: dict[str, int]


class Recorder:
    """Holds finished spans and log records until the exporter takes them.

    ``new_trace()`` and ``new_span_id()`` make ids from ``rng`` (a
    Mersenne Twister: not a secret, and faster than ``os.urandom``, which
    is a system call); ``span()`` and ``log()`` keep a record, or count it
    dropped when ``max_queue`` are waiting. ``on_batch`` is called when a
    full batch is waiting, so the exporter need not wait for its interval.
    """

    def __init__(
        self,
        *,
        ratio: float,
        rng: random.Random | None = None,
        limits: RecorderLimits | None = None,
    ) -> None:
        self.sampler = Sampler(ratio)
        self.limits = limits or RecorderLimits()
        self._bytes = (rng or random.Random()).randbytes
        self._hex = b""  # random hex digits not yet handed out as ids
        self._taken = 0
        self.spans: list[SpanRecord] = []
        self.logs: list[LogRecord] = []
        self.on_batch: Callable[[], None] | None = None
        self.dropped = {"spans": 0, "logs": 0}
        self.failed = {"spans": 0, "logs": 0}
        self.exported = {"spans": 0, "logs": 0}

    def new_trace(self) -> tuple[bytes, bytes, bool]:
        """A new trace id and span id (hex), and whether the ratio samples the trace.

        On an unsampled request this is most of what tracing costs, so the
        ids are cut from random hex made for many at a time, and the
        decision is made on the hex as it is (``Sampler.hex_bound``):
        together a half of drawing, formatting and reading a 192-bit number
        each time.
        """
        start = self._taken
        end = self._taken = start + 48
        digits = self._hex
        if end > len(digits):
            digits, start, end = self._refill(), 0, 48
            self._taken = end
        trace_id, span_id = digits[start : start + 32], digits[start + 32 : end]
        if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:  # all zeros is not an id
            return self.new_trace()
        return trace_id, span_id, trace_id[16:] < self.sampler.hex_bound

    def new_span_id(self) -> bytes:
        # The rest of the digits are spent unused: cheaper than a second way of cutting.
        return self.new_trace()[1]

    def _refill(self) -> bytes:
        """Random hex for 256 new traces (what is left of the last is never cut)."""
        self._hex = hexlify(self._bytes(24 * 256))
        return self._hex

    def span(self, record: SpanRecord) -> None:
        spans = self.spans
        if len(spans) >= self.limits.max_queue:
            self.dropped["spans"] += 1
            return
        spans.append(record)
        if len(spans) == self.limits.max_batch and self.on_batch is not None:
            self.on_batch()

    def log(self, record: LogRecord) -> None:
        logs = self.logs
        if len(logs) >= self.limits.max_queue:
            self.dropped["logs"] += 1
            return
        logs.append(record)
        if len(logs) == self.limits.max_batch and self.on_batch is not None:
            self.on_batch()

    def take_spans(self) -> list[SpanRecord]:
        """Up to ``max_batch`` spans, oldest first, no longer held here."""
        batch = self.spans[: self.limits.max_batch]
        del self.spans[: len(batch)]
        return batch

    def take_logs(self) -> list[LogRecord]:
        """Up to ``max_batch`` log records, oldest first, no longer held here."""
        batch = self.logs[: self.limits.max_batch]
        del self.logs[: len(batch)]
        return batch

    def statistics(self) -> RecorderStatistics:
        return RecorderStatistics(
            exported=dict(self.exported),
            dropped=dict(self.dropped),
            failed=dict(self.failed),
            queued={"spans": len(self.spans), "logs": len(self.logs)},
        )
