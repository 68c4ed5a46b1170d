"""``logging`` records with trace ids, sent as OTLP log records; a console that stays readable.

Every record made in a process that set telemetry up carries ``service``,
``instance``, ``trace_id`` and ``span_id`` (empty strings outside a span),
whichever logger made it, so a format string or a JSON formatter can use
them. ``OTLPHandler`` turns records into OpenTelemetry log records. It is
ours rather than the SDK's ``LoggingHandler``, which 1.45 deprecates for a
beta package: a handler is a few lines, and this one also keeps the
exporters' own records out of the pipeline they would feed.

The console of a service under ``meshkit up`` shows warnings and errors,
and the lifecycle lines (serving, stopped) that a record marks with
``extra={"lifecycle": True}``: everything else is in ``meshkit logs``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider

from meshkit.observe._destination import Identity
from meshkit.observe._otlp_decode import LogRow

__all__ = ["LIFECYCLE", "OTLPHandler", "StoreHandler", "console_handler", "install_record_fields"]

LIFECYCLE = {"lifecycle": True}  # logging's extra= for a line the console always shows

# Attributes every LogRecord has, and those install_record_fields adds: not
# sent again as attributes of the OTLP record.
_STANDARD = frozenset(
    set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))
    | {"message", "asctime", "service", "instance", "trace_id", "span_id", "lifecycle"}
)
# Loggers whose records must not be exported: the exporters' own, which
# would feed the pipeline that is failing.
_OWN = ("opentelemetry", "urllib3", "requests")

_identity = Identity(service="")
_installed = False


def install_record_fields(identity: Identity) -> None:
    """Give every ``LogRecord`` made from now on the identity and the current span's ids."""
    global _identity, _installed
    _identity = identity
    if _installed:
        return
    _installed = True
    make = logging.getLogRecordFactory()
    logging.setLogRecordFactory(_factory(make))


def _factory(make: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        made = make(*args, **kwargs)
        made.service = _identity.service
        made.instance = _identity.instance
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            made.trace_id = f"{context.trace_id:032x}"
            made.span_id = f"{context.span_id:016x}"
        else:
            made.trace_id = made.span_id = ""
        return made

    return record


class OTLPHandler(logging.Handler):
    """Emits each record as an OpenTelemetry log record, in the span context it was made in."""

    def __init__(self, provider: LoggerProvider, level: int = logging.INFO) -> None:
        super().__init__(level)
        self._provider = provider

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(_OWN):
            return
        try:
            self._provider.get_logger(record.name).emit(
                timestamp=int(record.created * 1e9),
                severity_number=_severity(record.levelno),
                severity_text=_TEXT.get(record.levelname, record.levelname),
                body=record.getMessage(),
                attributes=_attributes(record),
            )
        except Exception:  # noqa: BLE001 (as logging's handlers do: never raise into the caller)
            self.handleError(record)


class StoreHandler(logging.Handler):
    """The control plane's own records, straight into its telemetry store (``offer``): it
    is where every process sends its logs, itself included, without a round trip."""

    def __init__(
        self,
        offer: Callable[[list[LogRow]], bool],
        *,
        service: str,
        instance: str,
        level: int = logging.INFO,
    ) -> None:
        super().__init__(level)
        self._offer = offer
        self._service = service
        self._instance = instance

    def emit(self, record: logging.LogRecord) -> None:
        try:
            at = int(record.created * 1e9)
            row: LogRow = (
                at,
                at,
                self._service,
                self._instance,
                int(_severity(record.levelno).value),
                _TEXT.get(record.levelname, record.levelname),
                record.getMessage(),
                getattr(record, "trace_id", ""),
                getattr(record, "span_id", ""),
                msgspec.json.encode(_attributes(record)).decode(),
            )
            self._offer([row])
        except Exception:  # noqa: BLE001 (as logging's handlers do: never raise into the caller)
            self.handleError(record)


def _attributes(record: logging.LogRecord) -> dict[str, Any]:
    """A record's own fields (its ``extra``), where it was made, and its exception."""
    attributes: dict[str, Any] = {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and isinstance(value, str | bool | int | float)
    }
    attributes["code.function.name"] = record.funcName
    attributes["code.line.number"] = record.lineno
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        attributes["exception.type"] = type(error).__name__
        attributes["exception.message"] = str(error)
        attributes["exception.stacktrace"] = logging.Formatter().formatException(record.exc_info)
    return attributes


# The OpenTelemetry log data model's names for Python's levels.
_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def _severity(level: int) -> SeverityNumber:
    """Python's level on OpenTelemetry's scale (DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21)."""
    if level >= logging.CRITICAL:
        return SeverityNumber.FATAL
    if level >= logging.ERROR:
        return SeverityNumber.ERROR
    if level >= logging.WARNING:
        return SeverityNumber.WARN
    if level >= logging.INFO:
        return SeverityNumber.INFO
    return SeverityNumber.DEBUG


def console_handler(*, everything: bool) -> logging.Handler:
    """A handler for standard error: every INFO record when ``everything``, else the lines
    a console keeps (warnings, errors and lifecycle lines), warnings named as such."""
    handler = logging.StreamHandler()
    handler.setLevel(logging.INFO)
    handler.setFormatter(_ConsoleFormatter())
    if not everything:
        handler.addFilter(_for_console)
    return handler


def _for_console(record: logging.LogRecord) -> bool:
    if record.name.startswith(_OWN):
        # An exporter logs each batch it fails to send; the export queue
        # says so on meshkit.observe, once a minute at most.
        return record.levelno >= logging.CRITICAL
    return record.levelno >= logging.WARNING or getattr(record, "lifecycle", False)


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if record.levelno < logging.WARNING else f"{record.levelname}: {line}"
