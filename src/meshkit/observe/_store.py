"""The telemetry store: spans and log records in one SQLite file, written by a thread of its own.

The control plane's HTTP handler decodes an export and hands its rows to
``offer_spans``/``offer_logs``, which only queue them: a writer thread
writes what has queued in one transaction, so a burst of exports costs the
event loop the decoding alone, and the disk sees a few large transactions
rather than one per request. The queue is bounded (``max_pending`` rows):
when it is full the offer is refused and counted, and the receiver answers
503 with Retry-After, which OTLP exporters retry, rather than dropping data
that it acknowledged.

Tables: ``spans`` (unique by trace and span id, so an export sent again
after a lost answer is not stored twice), ``traces`` (one summary row per
trace, kept up to date at each batch, for listing traces without grouping
every span), ``trace_services`` (which services a trace crossed) and
``logs`` (an ``AUTOINCREMENT`` id, so a follower's cursor never sees an id
again after a purge). WAL mode: the queries read while the writer writes.

Retention (``purge``): traces that began before the age limit go with
all their spans, log records by their time; then, while the file's used
pages exceed the size limit, the oldest share of each (``Retention``), and
the freed pages are given back to the file system (``auto_vacuum =
INCREMENTAL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.errors import EnvironmentFaultError
from meshkit.observe._otlp_decode import LogRow, SpanRow
from meshkit.observe._retention import Retention
from meshkit.observe._units import level_name
from meshkit.observe._views import (
    KINDS,
    STATUSES,
    LogPage,
    LogQuery,
    LogView,
    SpanView,
    TraceQuery,
    TraceSummary,
    TraceView,
)

_log = logging.getLogger("meshkit.observe")

__all__ = ["PURGE_INTERVAL", "Purged", "StoreStatistics", "TelemetryStore", "keep_retention"]

# About 2.5 s of ingest at 20,000 rows/s, and some tens of MB of rows held
# in memory at worst; beyond that the exporters are told to come back.
DEFAULT_MAX_PENDING = 50_000
_ERROR = 2  # Status.StatusCode.STATUS_CODE_ERROR
_MAX_SIZE_ROUNDS = 8  # purges by size, each estimated from the last; it converges in one or two
_INT64_MAX = (1 << 63) - 1  # SQLite's largest integer: a bound parameter beyond it raises

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL,
    service TEXT NOT NULL, instance TEXT NOT NULL, name TEXT NOT NULL, kind INTEGER NOT NULL,
    start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status_code INTEGER NOT NULL, status_message TEXT NOT NULL,
    attributes TEXT NOT NULL, events TEXT NOT NULL, links TEXT NOT NULL, resource TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_id, span_id);
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    error INTEGER NOT NULL, root_service TEXT, root_name TEXT,
    first_service TEXT NOT NULL, first_name TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns);
CREATE TABLE IF NOT EXISTS trace_services (
    trace_id TEXT NOT NULL, service TEXT NOT NULL, PRIMARY KEY (trace_id, service)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns INTEGER NOT NULL, observed_ns INTEGER NOT NULL,
    service TEXT NOT NULL, instance TEXT NOT NULL,
    severity_number INTEGER NOT NULL, severity_text TEXT NOT NULL, body TEXT NOT NULL,
    trace_id TEXT NOT NULL, span_id TEXT NOT NULL, attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS logs_by_time ON logs (time_ns);
CREATE INDEX IF NOT EXISTS logs_by_trace ON logs (trace_id);
CREATE INDEX IF NOT EXISTS logs_by_service ON logs (service, time_ns);
"""
_INSERT_SPAN = "INSERT OR IGNORE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
# In an upsert's SET, bare column names are the stored row's values, before the update.
_UPSERT_TRACE = """
INSERT INTO traces VALUES (?,?,?,?,?,?,?,?)
ON CONFLICT (trace_id) DO UPDATE SET
    start_ns = min(start_ns, excluded.start_ns),
    end_ns = max(end_ns, excluded.end_ns),
    error = max(error, excluded.error),
    root_service = coalesce(excluded.root_service, root_service),
    root_name = coalesce(excluded.root_name, root_name),
    first_service = iif(excluded.start_ns < start_ns, excluded.first_service, first_service),
    first_name = iif(excluded.start_ns < start_ns, excluded.first_name, first_name)
"""
_TRACE_SUMMARY = (
    "SELECT t.trace_id, coalesce(t.root_service, t.first_service),"
    " coalesce(t.root_name, t.first_name), t.start_ns, t.end_ns - t.start_ns, t.error,"
    " (SELECT count(*) FROM spans p WHERE p.trace_id = t.trace_id),"
    " (SELECT group_concat(s.service, ' ') FROM trace_services s WHERE s.trace_id = t.trace_id)"
    " FROM traces t"
)
_INSERT_SERVICE = "INSERT OR IGNORE INTO trace_services VALUES (?,?)"
_INSERT_LOG = (
    "INSERT INTO logs (time_ns, observed_ns, service, instance, severity_number,"
    " severity_text, body, trace_id, span_id, attributes) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


class StoreStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """Counts since the store opened; ``pending`` rows are queued, not yet written."""

    spans_written: int
    logs_written: int
    spans_refused: int
    logs_refused: int
    spans_lost: int  # taken, then not written (the disk full, the file broken)
    logs_lost: int
    pending: int
    batches: int


class Purged(msgspec.Struct, frozen=True, kw_only=True):
    """What one purge removed, and the bytes the store's pages hold after it."""

    traces: int
    logs: int
    used_bytes: int


def _connect(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


class TelemetryStore:
    """Spans and logs in the SQLite file at ``path``; ``close()`` writes what is queued."""

    def __init__(
        self,
        path: Path,
        *,
        retention: Retention,
        max_pending: int = DEFAULT_MAX_PENDING,
        clock: Clock | None = None,
    ) -> None:
        self.path = path
        self._clock = clock or SystemClock()
        self.retention = retention
        self._max_pending = max_pending
        try:
            self._writer = _connect(path)
            # Only takes effect on a new file, before its first table.
            self._writer.execute("PRAGMA auto_vacuum = INCREMENTAL")
            self._writer.execute("PRAGMA journal_mode = WAL")
            # A crash of the machine may lose the last batches, never corrupt the file:
            # telemetry is not worth a flush of the disk per transaction.
            self._writer.execute("PRAGMA synchronous = NORMAL")
            self._writer.executescript(_SCHEMA)
            self._reader = _connect(path)
        except sqlite3.Error as error:
            raise EnvironmentFaultError(
                f"cannot open the telemetry store {path}: {error}"
            ) from error
        self._write_lock = threading.Lock()  # the writer connection: batches and purges
        self._read_lock = threading.Lock()
        self._queue: deque[tuple[list[SpanRow], list[LogRow]]] = deque()
        self._changed = threading.Condition()
        self._pending = 0
        self._in_hand = 0  # rows the writer took and has not committed yet
        self._closing = False
        self._counts = dict.fromkeys(
            (
                "spans_written",
                "logs_written",
                "spans_refused",
                "logs_refused",
                "spans_lost",
                "logs_lost",
                "batches",
            ),
            0,
        )
        self._last_loss = float("-inf")
        self._thread = threading.Thread(
            target=self._write_loop, name="telemetry-writer", daemon=True
        )
        self._thread.start()

    # -- ingest ---------------------------------------------------------------------------

    def offer_spans(self, rows: list[SpanRow]) -> bool:
        """Queue ``rows`` for writing; ``False`` (and counted) if the queue is full."""
        return self._offer(rows, [], "spans_refused")

    def offer_logs(self, rows: list[LogRow]) -> bool:
        """Queue ``rows`` for writing; ``False`` (and counted) if the queue is full."""
        return self._offer([], rows, "logs_refused")

    def _offer(self, spans: list[SpanRow], logs: list[LogRow], refused: str) -> bool:
        count = len(spans) + len(logs)
        if not count:
            return True
        with self._changed:
            # An export larger than the whole queue is taken when the queue is
            # empty: refusing it would refuse it for ever.
            if self._closing or (self._pending and self._pending + count > self._max_pending):
                self._counts[refused] += count
                return False
            self._queue.append((spans, logs))
            self._pending += count
            self._changed.notify_all()
        return True

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every row offered so far is written (blocking: for tests and shutdown)."""
        with self._changed:
            if not self._changed.wait_for(lambda: not self._pending, timeout):
                raise EnvironmentFaultError(f"the telemetry store did not write within {timeout}s")

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(pending=self._pending, **self._counts)

    def close(self) -> None:
        """Write what is queued, stop the writer and close the file."""
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        self._thread.join()
        # Under the locks: a purge or a query whose caller was cancelled still runs
        # in its thread, and closing a connection under it crashes the process.
        with self._write_lock:
            self._writer.close()
        with self._read_lock:
            self._reader.close()

    def _write_loop(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._queue or self._closing)
                if not self._queue:
                    return
                taken = list(self._queue)
                self._queue.clear()
            spans = [row for batch, _ in taken for row in batch]
            logs = [row for _, batch in taken for row in batch]
            try:
                with self._write_lock:
                    self._write(spans, logs)
            except Exception as error:  # noqa: BLE001 (the writer must outlive any batch)
                # The disk is full or the file broke, or a row SQLite cannot take: these
                # rows, already answered 200, are lost. Counted and said, once a minute
                # at most; the next batch tries again.
                self._lost(spans, logs, error)
                written = False
            else:
                written = True
            with self._changed:
                if written:
                    self._counts["spans_written"] += len(spans)
                    self._counts["logs_written"] += len(logs)
                    self._counts["batches"] += 1
                self._pending -= len(spans) + len(logs)
                self._changed.notify_all()

    def _lost(self, spans: list[SpanRow], logs: list[LogRow], error: Exception) -> None:
        with self._changed:
            self._counts["spans_lost"] += len(spans)
            self._counts["logs_lost"] += len(logs)
        now = self._clock.monotonic()
        if now - self._last_loss >= 60:
            self._last_loss = now
            _log.error(
                "the telemetry store could not write %d spans and %d log records: %s",
                len(spans),
                len(logs),
                error,
            )

    def _write(self, spans: list[SpanRow], logs: list[LogRow]) -> None:
        db = self._writer
        db.execute("BEGIN")
        try:
            if spans:
                db.executemany(_INSERT_SPAN, spans)
                summaries, services = _summaries(spans)
                db.executemany(_UPSERT_TRACE, summaries)
                db.executemany(_INSERT_SERVICE, services)
            if logs:
                db.executemany(_INSERT_LOG, logs)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- retention ------------------------------------------------------------------------

    def purge(self, now: float) -> Purged:
        """Remove what is older than the retention at wall time ``now``, then the oldest
        until the store is within its size (blocking: call it from a thread)."""
        try:
            with self._write_lock:
                return self._purge(now)
        except sqlite3.Error as error:
            raise EnvironmentFaultError(f"cannot purge the telemetry store: {error}") from error

    def _purge(self, now: float) -> Purged:
        db = self._writer
        cutoff = self.retention.cutoff_ns(now)
        traces = self._delete_traces("SELECT trace_id FROM traces WHERE start_ns < ?", (cutoff,))
        logs = db.execute("DELETE FROM logs WHERE time_ns < ?", (cutoff,)).rowcount
        used = self._used_bytes()
        for _ in range(_MAX_SIZE_ROUNDS):
            share = self.retention.share_to_remove(used)
            if not share:
                break
            traces += self._delete_traces(
                "SELECT trace_id FROM traces ORDER BY start_ns LIMIT ?",
                (self._share_of("traces", share),),
            )
            logs += db.execute(
                "DELETE FROM logs WHERE id IN (SELECT id FROM logs ORDER BY time_ns LIMIT ?)",
                (self._share_of("logs", share),),
            ).rowcount
            used = self._used_bytes()
        # Each step of this pragma frees one page, and execute() takes one step:
        # executescript runs it to the end.
        db.executescript("PRAGMA incremental_vacuum;")
        # The freed pages leave the file when the WAL is written back into it; a
        # reader in the middle of a query may delay that to the next purge.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return Purged(traces=traces, logs=logs, used_bytes=used)

    def _delete_traces(self, chosen: str, parameters: tuple[int, ...]) -> int:
        db = self._writer
        db.execute("BEGIN")
        try:
            ids = [row[0] for row in db.execute(chosen, parameters)]
            pairs = [(trace_id,) for trace_id in ids]
            db.executemany("DELETE FROM spans WHERE trace_id = ?", pairs)
            db.executemany("DELETE FROM trace_services WHERE trace_id = ?", pairs)
            db.executemany("DELETE FROM traces WHERE trace_id = ?", pairs)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return len(ids)

    def _share_of(self, table: str, share: float) -> int:
        (count,) = self._writer.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
        return math.ceil(int(count) * share)

    def _used_bytes(self) -> int:
        """The bytes of the file's pages that hold data (free pages not counted)."""
        db = self._writer
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    # -- queries (blocking: call them from a thread) --------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The reader connection in a read transaction: one snapshot of the file."""
        with self._read_lock:
            try:
                self._reader.execute("BEGIN")
                try:
                    yield self._reader
                finally:
                    self._reader.execute("COMMIT")
            except sqlite3.Error as error:
                raise EnvironmentFaultError(f"cannot read the telemetry store: {error}") from error

    def traces(self, query: TraceQuery, *, now: float) -> list[TraceSummary]:
        """Summaries of the traces ``query`` asks for, newest first; ``now`` is wall time."""
        where: list[str] = ["1"]
        parameters: list[Any] = []
        if query.since is not None:
            where.append("t.start_ns >= ?")
            parameters.append(_since_ns(now, query.since))
        if query.errors:
            where.append("t.error")
        if query.min_duration:
            where.append("t.end_ns - t.start_ns >= ?")
            parameters.append(min(_INT64_MAX, int(query.min_duration * 1e9)))
        if query.service is not None:
            where.append(
                "EXISTS (SELECT 1 FROM trace_services s"
                " WHERE s.trace_id = t.trace_id AND s.service = ?)"
            )
            parameters.append(query.service)
        # The clauses are this module's constants; every value is a bound parameter.
        clauses = " AND ".join(where)
        sql = f"{_TRACE_SUMMARY} WHERE {clauses} ORDER BY t.start_ns DESC LIMIT ?"
        with self._reading() as db:
            rows = db.execute(sql, (*parameters, query.limit)).fetchall()
        return [
            TraceSummary(
                trace_id=trace_id,
                service=service,
                name=name,
                start_ns=start,
                duration_ns=duration,
                spans=spans,
                services=sorted((services or "").split()),
                error=bool(error),
            )
            for trace_id, service, name, start, duration, error, spans, services in rows
        ]

    def trace(self, trace_id: str) -> TraceView | None:
        """Every span of the trace, by start time; ``None`` if none is kept."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns, rowid", (trace_id,)
            ).fetchall()
        if not rows:
            return None
        return TraceView(trace_id, [_span_view(row) for row in rows])

    def logs(self, query: LogQuery, *, now: float) -> LogPage:
        """The log records ``query`` asks for, and the cursor to follow on from them."""
        where, parameters = _log_filters(query, now)
        if query.after is None:
            order = "time_ns DESC, id DESC"
        else:
            where.append("id > ?")
            parameters.append(query.after)
            order = "id"
        clauses = " AND ".join(where)  # constants; the values are bound
        sql = f"SELECT * FROM logs WHERE {clauses} ORDER BY {order} LIMIT ?"  # noqa: S608
        with self._reading() as db:
            rows = db.execute(sql, (*parameters, query.limit)).fetchall()
            (last,) = db.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()
        if query.after is None:
            rows.reverse()
            cursor = last
        else:
            # A full page may have more behind it: go on from its last record.
            cursor = rows[-1][0] if len(rows) == query.limit else max(last, query.after)
        return LogPage([_log_view(row) for row in rows], cursor)


def _summaries(
    spans: Sequence[SpanRow],
) -> tuple[list[tuple[Any, ...]], set[tuple[str, str]]]:
    """One ``traces`` row per trace in ``spans``, and its ``(trace, service)`` pairs."""
    found: dict[str, list[Any]] = {}
    services: set[tuple[str, str]] = set()
    for span in spans:
        trace_id, _, parent, service, _, name, _, start, end, status = span[:10]
        services.add((trace_id, service))
        summary = found.get(trace_id)
        if summary is None:
            found[trace_id] = [trace_id, start, end, status == _ERROR, None, None, service, name]
            summary = found[trace_id]
        else:
            if start < summary[1]:
                summary[1], summary[6], summary[7] = start, service, name
            summary[2] = max(summary[2], end)
            summary[3] = summary[3] or status == _ERROR
        if not parent:
            summary[4], summary[5] = service, name
    return [tuple(summary) for summary in found.values()], services


def _span_view(row: tuple[Any, ...]) -> SpanView:
    (trace_id, span_id, parent, service, instance, name, kind, start, end, status, message) = row[
        :11
    ]
    return SpanView(
        trace_id=trace_id,
        span_id=span_id,
        parent_span_id=parent,
        service=service,
        instance=instance,
        name=name,
        kind=KINDS[kind] if 0 <= kind < len(KINDS) else str(kind),
        start_ns=start,
        end_ns=end,
        duration_ns=max(0, end - start),
        status=STATUSES[status] if 0 <= status < len(STATUSES) else str(status),
        status_message=message,
        # Kept as JSON text, and passed on as it is: no decoding and encoding again.
        attributes=msgspec.Raw(row[11]),
        events=msgspec.Raw(row[12]),
        links=msgspec.Raw(row[13]),
        resource=msgspec.Raw(row[14]),
    )


def _log_filters(query: LogQuery, now: float) -> tuple[list[str], list[Any]]:
    where: list[str] = ["1"]
    parameters: list[Any] = []
    if query.services:
        where.append(f"service IN ({','.join('?' * len(query.services))})")
        parameters.extend(query.services)
    if query.min_level:
        where.append("severity_number >= ?")
        parameters.append(query.min_level)
    if query.trace_id is not None:
        where.append("trace_id = ?")
        parameters.append(query.trace_id)
    if query.since is not None:
        where.append("time_ns >= ?")
        parameters.append(_since_ns(now, query.since))
    if query.grep:
        escaped = query.grep.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append("body LIKE ? ESCAPE '\\'")
        parameters.append(f"%{escaped}%")
    return where, parameters


def _since_ns(now: float, since: float) -> int:
    """The Unix nanoseconds ``since`` seconds before ``now``; 0 for a longer look back
    (``since=99999999d``), which SQLite could not take as an integer."""
    return max(0, int((now - since) * 1e9))


def _log_view(row: tuple[Any, ...]) -> LogView:
    (log_id, time_ns, observed, service, instance, number, text, body, trace_id, span_id) = row[:10]
    return LogView(
        id=log_id,
        time_ns=time_ns,
        observed_ns=observed,
        service=service,
        instance=instance,
        severity_number=number,
        severity=text or level_name(number).upper(),
        body=body,
        trace_id=trace_id,
        span_id=span_id,
        attributes=msgspec.Raw(row[10]),
    )


PURGE_INTERVAL = 60.0  # seconds; age limits are hours, so a minute late is nothing


async def keep_retention(
    store: TelemetryStore, *, clock: Clock, interval: float = PURGE_INTERVAL
) -> None:
    """Purge ``store`` every ``interval`` seconds of ``clock``, until cancelled (the first
    purge at once, for what aged while the control plane was down)."""
    while True:
        # A failed purge (a full disk) is tried again at the next tick.
        with contextlib.suppress(EnvironmentFaultError):
            await asyncio.to_thread(store.purge, clock.time())
        await clock.sleep(interval)
