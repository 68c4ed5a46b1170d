"""`meshkit traces show` draws every span's bar whole, even beside a long failure message."""

from __future__ import annotations

import msgspec
import pytest

from meshkit.cli._telemetry import _BAR, _print_waterfall
from meshkit.observe import SpanView, TraceView

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
MESSAGE = "not enough stock of product 1 (500 requested, 22 available)"


def span(number: int, parent: int, name: str, start_ms: int, duration_ms: int) -> SpanView:
    failed = name == "step reserve"
    return SpanView(
        trace_id=TRACE,
        span_id=f"{number:016x}",
        parent_span_id=f"{parent:016x}" if parent else "",
        service="orders",
        instance="orders-1",
        name=name,
        kind="server",
        start_ns=start_ms * 1_000_000,
        end_ns=(start_ms + duration_ms) * 1_000_000,
        duration_ns=duration_ms * 1_000_000,
        status="error" if failed else "unset",
        status_message=MESSAGE if failed else "",
        attributes=msgspec.Raw(b"{}"),
        events=msgspec.Raw(b"[]"),
        links=msgspec.Raw(b"[]"),
        resource=msgspec.Raw(b"{}"),
    )


def test_bars_and_names_stay_whole_at_the_narrowest_width(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # drawn at 120 at least
    spans = [
        span(1, 0, "POST /orders", 0, 21),
        span(2, 1, "step reserve", 12, 7),
        span(3, 2, "GET /products/{product_id}", 13, 6),
    ]
    _print_waterfall(TraceView(TRACE, spans))
    drawn = capsys.readouterr().out
    assert "…" not in drawn
    rows = drawn.splitlines()[2:]
    bars = [row[-(_BAR + 1) :].strip() for row in rows if "█" in row]
    assert [len(bar) for bar in bars] == [_BAR, round(7 * _BAR / 21), round(6 * _BAR / 21)]
    assert any("GET /products/{product_id}" in row for row in rows)  # not folded
    failure = rows.index(next(row for row in rows if "step reserve" in row))
    assert "error" in rows[failure]
    assert "not enough stock" in rows[failure + 1]
