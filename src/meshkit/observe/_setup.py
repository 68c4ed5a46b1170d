"""A process's tracing and log export, set up once with OpenTelemetry's SDK.

``start_telemetry(identity, destination)`` makes spans and ``logging``
records of this process go to ``destination`` as OTLP/HTTP (protobuf, the
official exporters), through ``ExportQueue``s that count what they drop.
The sampler is the SDK's default, parent-based and always on for new
traces, or what the standard ``OTEL_TRACES_SAMPLER`` variables say (the SDK
reads them). A process that already has a tracer provider (its author set
OpenTelemetry up, or a second ``Service`` in one process) keeps it: the
SDK allows one per process, and the author's choice wins.
"""

from __future__ import annotations

import copy
import logging

import msgspec
from opentelemetry import _logs, trace
from opentelemetry.context import Context
from opentelemetry.sdk._logs import (
    LoggerProvider,
    LogRecordProcessor,
    ReadableLogRecord,
    ReadWriteLogRecord,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from meshkit.observe._destination import Destination, Endpoint, Identity
from meshkit.observe._logs import OTLPHandler, install_record_fields
from meshkit.observe._queue import DEFAULT_SIZE, ExportQueue, QueueStatistics, delivered
from meshkit.observe._tracer import tracing_set_up

__all__ = ["Telemetry", "TelemetryStatistics", "start_telemetry"]

_TIMEOUT = 10.0  # seconds an export may take, the OTLP exporters' default


class TelemetryStatistics(msgspec.Struct, frozen=True):
    spans: QueueStatistics | None
    logs: QueueStatistics | None


class Telemetry:
    """What ``start_telemetry`` set up; ``shutdown()`` exports what is queued and stops."""

    def __init__(
        self,
        spans: ExportQueue[ReadableSpan] | None,
        logs: ExportQueue[ReadableLogRecord] | None,
        handler: logging.Handler | None,
    ) -> None:
        self._spans = spans
        self._logs = logs
        self._handler = handler

    def statistics(self) -> TelemetryStatistics:
        return TelemetryStatistics(
            self._spans.statistics() if self._spans else None,
            self._logs.statistics() if self._logs else None,
        )

    def flush(self, timeout: float = 5.0) -> bool:
        """Export what is queued now; False if ``timeout`` passed first."""
        return all(q.flush(timeout) for q in (self._spans, self._logs) if q is not None)

    def shutdown(self, timeout: float = 5.0) -> None:
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
        for queue in (self._spans, self._logs):
            if queue is not None:
                queue.close(timeout)


_started: Telemetry | None = None


def start_telemetry(
    identity: Identity, destination: Destination, *, queue_size: int = DEFAULT_SIZE
) -> Telemetry | None:
    """Send this process's spans and log records to ``destination``, as ``identity``.

    Returns ``None`` when the process has telemetry set up already (by this
    function or by its author), or when the destination takes nothing.
    Every ``logging`` record gets ``service``, ``instance``, ``trace_id``
    and ``span_id`` attributes either way (``install_record_fields``).
    """
    global _started
    install_record_fields(identity)
    if _started is not None or tracing_set_up() or destination == Destination():
        return None
    resource = Resource.create(identity.resource())
    spans = logs = handler = None
    if destination.traces is not None:
        spans = _span_queue(destination.traces, queue_size)
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(_SpanQueueProcessor(spans))
        trace.set_tracer_provider(provider)
    if destination.logs is not None:
        logs = _log_queue(destination.logs, queue_size)
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(_LogQueueProcessor(logs))
        _logs.set_logger_provider(logger_provider)
        handler = OTLPHandler(logger_provider)
        logging.getLogger().addHandler(handler)
    _started = Telemetry(spans, logs, handler)
    return _started


def _span_queue(endpoint: Endpoint, size: int) -> ExportQueue[ReadableSpan]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter = OTLPSpanExporter(
        endpoint=endpoint.url, headers=dict(endpoint.headers), timeout=_TIMEOUT
    )
    return ExportQueue(lambda batch: delivered(exporter.export(batch)), what="spans", size=size)


def _log_queue(endpoint: Endpoint, size: int) -> ExportQueue[ReadableLogRecord]:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    exporter = OTLPLogExporter(
        endpoint=endpoint.url, headers=dict(endpoint.headers), timeout=_TIMEOUT
    )
    return ExportQueue(
        lambda batch: delivered(exporter.export(batch)), what="log records", size=size
    )


class _SpanQueueProcessor(SpanProcessor):
    """Ended sampled spans into the queue; the SDK calls ``on_end`` in the span's thread."""

    def __init__(self, queue: ExportQueue[ReadableSpan]) -> None:
        self._queue = queue

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is not None and span.context.trace_flags.sampled:
            self._queue.put(span)

    def shutdown(self) -> None:
        self._queue.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._queue.flush(timeout_millis / 1000)


class _LogQueueProcessor(LogRecordProcessor):
    def __init__(self, queue: ExportQueue[ReadableLogRecord]) -> None:
        self._queue = queue

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        # As the SDK's batch processor does: a read-only copy, without the
        # context it was emitted in (which can hold much more than the ids).
        record = copy.copy(log_record.log_record)
        record.context = Context()
        self._queue.put(
            ReadableLogRecord(
                log_record=record,
                resource=log_record.resource or Resource.get_empty(),
                instrumentation_scope=log_record.instrumentation_scope,
                limits=log_record.limits,
            )
        )

    def shutdown(self) -> None:
        self._queue.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._queue.flush(timeout_millis / 1000)
