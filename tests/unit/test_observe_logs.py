"""Log records with trace ids; the console keeps warnings, errors and lifecycle lines."""

import io
import json
import logging

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshkit.observe import (
    LIFECYCLE,
    Identity,
    StoreHandler,
    console_handler,
    install_record_fields,
    tracer,
)


def lines(everything: bool, *records: tuple[str, int, dict[str, bool] | None]) -> list[str]:
    stream = io.StringIO()
    handler = console_handler(everything=everything)
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    for name, level, extra in records:
        record = logging.getLogger(name).makeRecord(name, level, "f", 1, "said %s", ("x",), None)
        for key, value in (extra or {}).items():
            setattr(record, key, value)
        if record.levelno >= handler.level:  # as a logger checks before handing it over
            handler.handle(record)
    return stream.getvalue().splitlines()


def test_the_console_keeps_warnings_errors_and_lifecycle_lines() -> None:
    said = lines(
        False,
        ("shop", logging.INFO, None),
        ("shop", logging.INFO, LIFECYCLE),
        ("shop", logging.WARNING, None),
        ("opentelemetry.exporter.otlp", logging.ERROR, None),
    )
    assert said == ["said x", "WARNING: said x"]


def test_without_export_the_console_shows_everything_from_info() -> None:
    assert lines(True, ("shop", logging.INFO, None), ("shop", logging.DEBUG, None)) == ["said x"]


def test_records_carry_the_identity_and_the_current_spans_ids(
    spans: InMemorySpanExporter,
) -> None:
    install_record_fields(Identity(service="orders", instance="orders-1"))
    try:
        with tracer("test").start_as_current_span("work") as span:
            inside = logging.getLogger("shop").makeRecord(
                "shop", logging.INFO, "f", 1, "m", (), None
            )
        outside = logging.getLogger("shop").makeRecord("shop", logging.INFO, "f", 1, "m", (), None)
    finally:
        install_record_fields(Identity(service=""))
    context = span.get_span_context()
    assert (inside.service, inside.instance) == ("orders", "orders-1")
    assert (inside.trace_id, inside.span_id) == (
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    )
    assert (outside.trace_id, outside.span_id) == ("", "")


def test_the_control_plane_s_own_records_become_rows_of_its_store() -> None:
    """StoreHandler: a record's time, identity, severity, message, trace ids and extra."""
    rows: list[tuple[object, ...]] = []
    handler = StoreHandler(
        lambda offered: rows.extend(offered) or True, service="plane", instance="plane-1"
    )
    record = logging.LogRecord("meshkit.rollout", logging.WARNING, "f.py", 7, "step %d", (2,), None)
    record.rollout_id = 3
    record.trace_id, record.span_id = "a" * 32, "b" * 16
    handler.handle(record)
    ((at, observed, service, instance, severity, text, body, trace_id, span_id, extra),) = rows
    assert at == observed == int(record.created * 1e9)
    assert (service, instance, severity, text, body) == ("plane", "plane-1", 13, "WARN", "step 2")
    assert (trace_id, span_id) == ("a" * 32, "b" * 16)
    assert json.loads(str(extra))["rollout_id"] == 3
