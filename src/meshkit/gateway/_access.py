"""The gateway's access log as log records: one per request, with its trace context.

Sent through the same recorder as the spans, so ``meshkit logs`` finds a
request's line by its trace id, and the console of ``meshkit up`` is not
flooded by one line per request (``AccessLog`` still prints them for
someone running ``meshkit gateway --access-log`` by hand).
"""

from __future__ import annotations

from meshkit._clock import Clock
from meshkit.observe import LogRecord, Recorder
from meshkit.proxy import Exchange

__all__ = ["AccessRecords"]

# OpenTelemetry severity numbers: INFO, WARN for the client's faults, ERROR for 5xx
# and for requests that got no complete answer.
_INFO, _WARN, _ERROR = 9, 13, 17


class AccessRecords:
    """An observer of the engine's exchanges that records each as a log record."""

    def __init__(self, recorder: Recorder, clock: Clock) -> None:
        self._recorder = recorder
        self._clock = clock

    def __call__(self, record: Exchange) -> None:
        status = record.status
        severity = _INFO if 0 < status < 400 else _WARN if 400 <= status < 500 else _ERROR
        attributes: list[tuple[str, str | int]] = [
            ("http.request.method", record.method),
            ("url.path", record.path),
            ("http.response.status_code", status),
            ("client.address", record.client),
            ("meshkit.request_id", record.request_id),
            ("meshkit.duration_ms", round(record.duration * 1000)),
            ("meshkit.received_bytes", record.received),
            ("meshkit.sent_bytes", record.sent),
        ]
        if record.route is not None:
            attributes.append(("http.route", record.route))
        if record.service is not None:
            attributes.append(("meshkit.service", record.service))
        if record.upstream is not None:
            attributes.append(("meshkit.upstream", record.upstream))
        if record.error is not None:
            attributes.append(("meshkit.error", record.error))
        self._recorder.log(
            LogRecord(
                self._clock.monotonic(),
                severity,
                f"{record.method} {record.path} {status}",
                record.trace_id or "",
                record.span_id or "",
                tuple(attributes),
            )
        )
