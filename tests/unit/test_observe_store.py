"""The telemetry store: ingest through the writer thread, the queries, retention by age and size."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meshkit.observe import (
    LogQuery,
    Retention,
    TelemetryStore,
    TraceQuery,
    keep_retention,
)
from meshkit.observe._otlp_decode import LogRow, SpanRow
from meshkit.testing import FakeClock

NOW = 1_750_000_000.0  # wall time of the tests, in seconds
SECOND = 1_000_000_000


def span(
    trace: int,
    span_id: int,
    *,
    parent: int = 0,
    service: str = "orders",
    name: str = "op",
    start: float = NOW - 1,
    millis: float = 10,
    error: bool = False,
) -> SpanRow:
    begin = int(start * SECOND)
    return (
        f"{trace:032x}",
        f"{span_id:016x}",
        f"{parent:016x}" if parent else "",
        service,
        f"{service}-1",
        name,
        2,
        begin,
        begin + int(millis * 1e6),
        2 if error else 0,
        "boom" if error else "",
        '{"http.route":"/orders"}',
        "[]",
        "[]",
        f'{{"service.name":"{service}"}}',
    )


def log(
    body: str,
    *,
    service: str = "orders",
    level: int = 9,
    at: float = NOW - 1,
    trace: int = 0,
) -> LogRow:
    return (
        int(at * SECOND),
        int(at * SECOND),
        service,
        f"{service}-1",
        level,
        "",
        body,
        f"{trace:032x}" if trace else "",
        "",
        "{}",
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[TelemetryStore]:
    opened = TelemetryStore(tmp_path / "telemetry.sqlite3", retention=Retention())
    yield opened
    opened.close()


def written(
    store: TelemetryStore, spans: Sequence[SpanRow] = (), logs: Sequence[LogRow] = ()
) -> None:
    assert store.offer_spans(list(spans))
    assert store.offer_logs(list(logs))
    store.flush()


def test_a_trace_is_summarised_from_its_root_and_listed_newest_first(store: TelemetryStore) -> None:
    """The summary names the root span, spans the whole trace and lists every service."""
    written(
        store,
        [
            span(1, 2, parent=1, service="payments", name="charge", start=NOW - 9.99, millis=5),
            span(1, 1, service="gateway", name="POST /orders", start=NOW - 10, millis=50),
            span(2, 3, service="gateway", name="GET /products", start=NOW - 5, millis=1),
        ],
    )
    older, newer = store.traces(TraceQuery(), now=NOW)[::-1]
    assert newer.trace_id == f"{2:032x}"
    assert (older.service, older.name, older.spans) == ("gateway", "POST /orders", 2)
    assert older.services == ["gateway", "payments"]
    assert older.duration_ns == 50_000_000
    assert not older.error


def test_a_root_arriving_in_a_later_batch_becomes_the_summary(store: TelemetryStore) -> None:
    """Until the root comes the earliest span stands for the trace; then the root does."""
    written(store, [span(1, 2, parent=1, service="payments", name="charge", start=NOW - 9)])
    assert store.traces(TraceQuery(), now=NOW)[0].service == "payments"
    written(
        store, [span(1, 1, service="gateway", name="POST /orders", start=NOW - 10, millis=2000)]
    )
    (summary,) = store.traces(TraceQuery(), now=NOW)
    assert (summary.service, summary.name, summary.spans) == ("gateway", "POST /orders", 2)
    assert summary.start_ns == int((NOW - 10) * SECOND)


def test_trace_filters(store: TelemetryStore) -> None:
    """service, errors, min_duration, since and limit each narrow the list."""
    written(
        store,
        [
            span(1, 1, service="gateway", start=NOW - 3600, millis=500),
            span(2, 2, service="gateway", start=NOW - 60, millis=5, error=True),
            span(2, 3, parent=2, service="payments", start=NOW - 60, millis=1),
            span(3, 4, service="users", start=NOW - 10, millis=200),
        ],
    )

    def ids(**asked: object) -> list[int]:
        return [int(t.trace_id, 16) for t in store.traces(TraceQuery(**asked), now=NOW)]  # type: ignore[arg-type]

    assert ids() == [3, 2, 1]
    assert ids(service="payments") == [2]
    assert ids(errors=True) == [2]
    assert ids(min_duration=0.1) == [3, 1]
    assert ids(since=120) == [3, 2]
    assert ids(limit=1) == [3]


def test_one_trace_has_every_span_once_even_when_sent_twice(store: TelemetryStore) -> None:
    """An export sent again after a lost answer does not duplicate its spans."""
    spans = [span(7, 1, name="root"), span(7, 2, parent=1, name="child", start=NOW - 0.5)]
    written(store, spans)
    written(store, spans)
    found = store.trace(f"{7:032x}")
    assert found is not None
    assert [(s.name, s.parent_span_id) for s in found.spans] == [
        ("root", ""),
        ("child", f"{1:016x}"),
    ]
    assert found.spans[0].kind == "server"
    assert store.traces(TraceQuery(), now=NOW)[0].spans == 2
    assert store.trace(f"{8:032x}") is None


def test_log_filters(store: TelemetryStore) -> None:
    """services, min level, trace id, since and grep each narrow the records."""
    written(
        store,
        logs=[
            log("order 1 placed", service="orders", level=9, at=NOW - 3600, trace=5),
            log("payment DECLINED", service="payments", level=17, at=NOW - 30, trace=5),
            log("cache warm", service="users", level=5, at=NOW - 20),
            log("50% off_sale", service="products", level=13, at=NOW - 10),
        ],
    )

    def bodies(**asked: object) -> list[str]:
        return [r.body for r in store.logs(LogQuery(**asked), now=NOW).logs]  # type: ignore[arg-type]

    assert bodies() == ["order 1 placed", "payment DECLINED", "cache warm", "50% off_sale"]
    assert bodies(services=("users", "products")) == ["cache warm", "50% off_sale"]
    assert bodies(min_level=13) == ["payment DECLINED", "50% off_sale"]
    assert bodies(trace_id=f"{5:032x}") == ["order 1 placed", "payment DECLINED"]
    assert bodies(since=60) == ["payment DECLINED", "cache warm", "50% off_sale"]
    assert bodies(grep="declined") == ["payment DECLINED"]
    assert bodies(grep="0% off_") == ["50% off_sale"]
    assert bodies(grep="_") == ["50% off_sale"]  # LIKE's wildcards are taken literally
    assert bodies(limit=2) == ["cache warm", "50% off_sale"]  # the newest, oldest first
    assert store.logs(LogQuery(), now=NOW).logs[1].severity == "ERROR"


def test_a_cursor_gives_the_records_stored_after_it_once(store: TelemetryStore) -> None:
    """A follower sees every new record once, whatever its timestamp, and none it saw."""
    written(store, logs=[log("first"), log("second")])
    page = store.logs(LogQuery(limit=1), now=NOW)
    assert [r.body for r in page.logs] == ["second"]
    assert store.logs(LogQuery(after=page.cursor), now=NOW).logs == []
    written(store, logs=[log("late", at=NOW - 7200), log("new"), log("other", service="users")])
    later = store.logs(LogQuery(after=page.cursor, services=("orders",), limit=1), now=NOW)
    assert [r.body for r in later.logs] == ["late"]
    rest = store.logs(LogQuery(after=later.cursor, services=("orders",)), now=NOW)
    assert [r.body for r in rest.logs] == ["new"]
    assert store.logs(LogQuery(after=rest.cursor), now=NOW).logs == []


def test_a_full_queue_refuses_and_counts(tmp_path: Path) -> None:
    """Beyond max_pending rows an offer is refused, counted, and nothing is half taken."""
    store = TelemetryStore(tmp_path / "t.sqlite3", retention=Retention(), max_pending=3)
    try:
        with store._changed:  # hold the writer back: the queue fills
            assert store.offer_spans([span(1, 1), span(1, 2)])
            assert not store.offer_spans([span(2, 1), span(2, 2)])
            assert not store.offer_logs([log("x"), log("y")])
        store.flush()
        statistics = store.statistics()
        assert (statistics.spans_written, statistics.spans_refused) == (2, 2)
        assert statistics.logs_refused == 2
        assert store.offer_spans([span(3, i) for i in range(1, 10)])  # larger than the queue
        store.flush()
        assert store.statistics().spans_written == 11
    finally:
        store.close()


def test_a_batch_that_cannot_be_written_is_counted_lost_and_said(
    store: TelemetryStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The disk full: the batch's rows are counted lost and an error names why; the next
    batch is written."""

    def full(spans: object, logs: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patched:
        patched.setattr(store, "_write", full)
        assert store.offer_spans([span(1, 1), span(1, 2)])
        store.flush()
    assert (store.statistics().spans_lost, store.statistics().spans_written) == (2, 0)
    assert "could not write 2 spans and 0 log records: database or disk is full" in caplog.text
    assert store.offer_spans([span(2, 1)])
    store.flush()
    assert store.statistics().spans_written == 1


def test_purge_removes_what_is_older_than_the_retention(tmp_path: Path) -> None:
    """Traces that began before the age limit go with all their spans; logs by their time."""
    store = TelemetryStore(tmp_path / "t.sqlite3", retention=Retention(max_age=3600))
    try:
        written(
            store,
            [span(1, 1, start=NOW - 3700), span(1, 2, parent=1, start=NOW - 3500), span(2, 3)],
            [log("old", at=NOW - 3700), log("new")],
        )
        purged = store.purge(NOW)
        assert (purged.traces, purged.logs) == (1, 1)
        assert [t.trace_id for t in store.traces(TraceQuery(), now=NOW)] == [f"{2:032x}"]
        assert store.trace(f"{1:032x}") is None
        assert [r.body for r in store.logs(LogQuery(), now=NOW).logs] == ["new"]
    finally:
        store.close()


def test_purge_keeps_the_store_within_its_size_oldest_first(tmp_path: Path) -> None:
    """Over max_size, the oldest traces and logs go until the store is back under it."""
    limit = 256 * 1024
    path = tmp_path / "t.sqlite3"
    store = TelemetryStore(path, retention=Retention(max_size=limit))
    try:
        for batch in range(40):
            start = NOW - 1000 + batch
            written(
                store,
                [span(batch * 100 + i, i + 1, start=start) for i in range(50)],
                [log(f"batch {batch} line {i} " + "x" * 200, at=start) for i in range(20)],
            )
        assert store._used_bytes() > limit
        purged = store.purge(NOW)
        assert purged.traces
        assert purged.logs
        assert purged.used_bytes <= limit
        assert path.stat().st_size <= limit * 1.1  # the freed pages went back to the disk
        kept = store.traces(TraceQuery(limit=1000), now=NOW)
        newest = [span(39 * 100 + i, i + 1)[0] for i in range(50)]
        assert set(newest) <= {t.trace_id for t in kept}
        oldest_kept = min(t.start_ns for t in kept)
        assert oldest_kept > int((NOW - 1000) * SECOND)
        bodies = [r.body for r in store.logs(LogQuery(limit=10_000), now=NOW).logs]
        assert bodies[-1].startswith("batch 39 line 19")
        assert not any(b.startswith("batch 0 ") for b in bodies)
    finally:
        store.close()


def test_retention_runs_on_its_clock(tmp_path: Path) -> None:
    """keep_retention purges at once and then every interval of the clock it is given."""
    clock = FakeClock(wall=NOW)
    store = TelemetryStore(tmp_path / "t.sqlite3", retention=Retention(max_age=600))

    async def main() -> None:
        written(store, logs=[log("early", at=NOW - 100), log("later", at=NOW + 200)])
        keeping = asyncio.create_task(keep_retention(store, clock=clock, interval=60))
        await clock.sleep(481)  # purged at NOW + 480: "early" (NOW - 100) is 580 s old
        assert len(store.logs(LogQuery(), now=clock.time()).logs) == 2
        await clock.sleep(60)  # purged at NOW + 540: it is 640 s old
        assert [r.body for r in store.logs(LogQuery(), now=clock.time()).logs] == ["later"]
        keeping.cancel()

    try:
        clock.run(main())
    finally:
        store.close()


def test_retention_settings_are_checked() -> None:
    """A zero age or a size too small to hold the tables is refused, naming the setting."""
    with pytest.raises(ValueError, match="retention"):
        Retention(max_age=0)
    with pytest.raises(ValueError, match="max_size"):
        Retention(max_size=1024)
    retention = Retention(max_size=100_000)
    assert retention.share_to_remove(100_000) == 0
    assert retention.share_to_remove(200_000) == pytest.approx(0.55)  # down to 90% of the limit
