"""The embedded broker's log on disk: SQLite in WAL mode, written by one thread in group commits.

Durability: ``synchronous=FULL``. In WAL mode that makes every commit fsync
the WAL before it returns, so a publish acknowledged after its commit is on
the disk itself, and survives the broker being killed, the OS crashing and
the power going. ``synchronous=NORMAL`` would survive only the first: it
leaves the WAL's new pages in the OS's cache until a checkpoint, which is
enough against ``kill -9`` but not against losing the machine.

Speed comes from group commit, not from a weaker setting: every write waiting
when the thread is free goes into one transaction, so one fsync covers them
all. While a commit runs, the next batch gathers. (Measured on this kind of
machine, DESIGN.md: 3.9k commits/s with an fsync each, about 300k appends/s
batched.) Automatic checkpoints are off, because SQLite runs them inside a
commit and one stalled commits for 12-17 ms; ``checkpoint()`` runs them on a
connection of its own instead, without blocking writers (``PASSIVE``).

Reads use their own connection in the caller's thread: WAL readers see the
last committed state and never wait for the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from meshkit.bus._model import Outgoing
from meshkit.errors import EnvironmentFaultError, UsageError

__all__ = ["BusLog", "LogStatistics", "append_op"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    sequence INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT,
    headers BLOB NOT NULL,
    payload BLOB NOT NULL,
    published REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_topic ON messages (topic, sequence);
-- Message ids given by publishers, for the duplicate window.
CREATE TABLE IF NOT EXISTS ids (
    topic TEXT NOT NULL,
    id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    published REAL NOT NULL,
    PRIMARY KEY (topic, id)
) WITHOUT ROWID;
"""

Op = Callable[[sqlite3.Connection], Any]
_encode = msgspec.json.encode


def append_op(
    entries: Sequence[Outgoing], now: float, window: float
) -> Callable[[sqlite3.Connection], list[tuple[int, bool]]]:
    """The op ``BusLog.append`` runs, for ops that append among other writes."""

    def op(db: sqlite3.Connection) -> list[tuple[int, bool]]:
        found: list[tuple[int, bool]] = []
        for entry in entries:
            if entry.given_id:
                seen = db.execute(
                    "SELECT sequence, published FROM ids WHERE topic = ? AND id = ?",
                    (entry.topic, entry.id),
                ).fetchone()
                if seen is not None and now - seen[1] < window:
                    found.append((seen[0], True))
                    continue
            cursor = db.execute(
                "INSERT INTO messages (topic, id, key, headers, payload, published)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (entry.topic, entry.id, entry.key, _encode(entry.headers), entry.payload, now),
            )
            sequence = cursor.lastrowid
            assert sequence is not None
            if entry.given_id:
                db.execute(
                    "INSERT OR REPLACE INTO ids VALUES (?, ?, ?, ?)",
                    (entry.topic, entry.id, sequence, now),
                )
            found.append((sequence, False))
        return found

    return op


@dataclass(slots=True)
class LogStatistics:
    """Counters for the dashboard and for tests: ``writes`` ops in ``commits`` transactions."""

    writes: int = 0
    commits: int = 0
    failed_commits: int = 0


@dataclass(slots=True)
class _Write:
    op: Op
    future: asyncio.Future[Any]


class BusLog:
    """One SQLite file. ``write(op)`` runs ``op`` in a group commit and returns once it is on disk.

    Use ``BusLog.open(path)`` then ``aclose()``. ``schema`` adds tables for
    what the broker keeps beside the messages.
    """

    def __init__(self, path: Path, *, schema: str = "") -> None:
        self.path = path
        self.statistics = LogStatistics()
        self._schema = _SCHEMA + schema
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()  # None: stop
        self._thread: threading.Thread | None = None
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._checkpointer: sqlite3.Connection | None = None
        # A checkpoint runs in a worker thread that a cancelled caller does not
        # stop: closing its connection under it crashed the process.
        self._checkpointing = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, schema: str = "") -> BusLog:
        log = cls(path, schema=schema)
        log._start()
        return log

    def _start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect()
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=FULL")
            self._writer.execute("PRAGMA wal_autocheckpoint=0")
            self._writer.executescript(self._schema)
            self._reader = self._connect()
            self._checkpointer = self._connect()
        except (sqlite3.Error, OSError) as error:
            raise EnvironmentFaultError(
                f"cannot open the bus log at {self.path}: {error}"
            ) from error
        self._thread = threading.Thread(target=self._run, name="meshkit-bus-log", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    # -- writing ----------------------------------------------------------------

    def write(self, op: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """Queue ``op`` for the writer's next transaction; the future has its result once committed.

        Queued at the call, not when awaited, so writes commit in call order.

        An ``op`` that raises is undone alone (it runs in a savepoint) and its
        exception is raised here; the others in the batch commit. A failed
        commit raises ``EnvironmentFaultError`` for every op in it.
        """
        if self._thread is None:
            raise UsageError("the bus log is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Write(op, future))
        return future

    def _run(self) -> None:
        db = self._writer
        assert db is not None
        stop = False
        while not stop:
            # Everything waiting goes into one transaction: one fsync for all.
            waiting = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    waiting.append(self._queue.get_nowait())
            stop = None in waiting
            batch = [write for write in waiting if write is not None]
            if batch:
                self._commit(db, batch)

    def _commit(self, db: sqlite3.Connection, batch: list[_Write]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                outcomes.extend(self._apply(db, write.op) for write in batch)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            self.statistics.failed_commits += 1
            failure = EnvironmentFaultError(f"cannot write the bus log at {self.path}: {error}")
            outcomes = [(False, failure)] * len(batch)
        else:
            self.statistics.commits += 1
            self.statistics.writes += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Write, bool, Any]]] = {}
        for write, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(write.future.get_loop(), []).append((write, ok, value))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)

    @staticmethod
    def _apply(db: sqlite3.Connection, op: Op) -> tuple[bool, Any]:
        db.execute("SAVEPOINT op")
        try:
            value = op(db)
        except sqlite3.Error:
            raise  # the database itself failed: the whole batch does
        except Exception as error:  # noqa: BLE001 (handed to the op's caller)
            db.execute("ROLLBACK TO op")
            db.execute("RELEASE op")
            return False, error
        db.execute("RELEASE op")
        return True, value

    def append(
        self, entries: Sequence[Outgoing], *, now: float, window: float
    ) -> asyncio.Future[list[tuple[int, bool]]]:
        """Append ``entries`` in one op: each one's ``(sequence, duplicate)``, once on disk.

        An entry whose given id was appended to its topic less than ``window``
        seconds before ``now`` is not appended again: it gets the first one's
        sequence and ``duplicate=True``.
        """
        return self.write(append_op(entries, now, window))

    def forget_ids(self, *, before: float) -> asyncio.Future[int]:
        """Drop the ids recorded before ``before`` (out of every window): how many."""
        return self.write(
            lambda db: db.execute("DELETE FROM ids WHERE published < ?", (before,)).rowcount
        )

    def forget_messages(self, *, before: float, batch: int) -> asyncio.Future[int]:
        """Drop up to ``batch`` of the oldest messages published before ``before``: how many.

        Only a run from the start of the log goes, stopping at the first
        message published since (sequences follow publish times, but a wall
        clock set back could interleave them). The newest message always
        stays: ``sequence`` is SQLite's rowid, which starts again after the
        highest one left, and groups' cursors and acks must never see a
        sequence come back. One op holds the writer for a bounded time;
        call again while it returns ``batch``.
        """

        def op(db: sqlite3.Connection) -> int:
            oldest = db.execute(
                "SELECT sequence, published FROM messages"
                " WHERE sequence < (SELECT max(sequence) FROM messages)"
                " ORDER BY sequence LIMIT ?",
                (batch,),
            ).fetchall()
            last = None
            for sequence, published in oldest:
                if published >= before:
                    break
                last = sequence
            if last is None:
                return 0
            return int(db.execute("DELETE FROM messages WHERE sequence <= ?", (last,)).rowcount)

        return self.write(op)

    # -- reading and upkeep -------------------------------------------------------

    def read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query on the reading connection (committed state only)."""
        if self._reader is None:
            raise UsageError("the bus log is closed")
        try:
            return self._reader.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise EnvironmentFaultError(
                f"cannot read the bus log at {self.path}: {error}"
            ) from error

    def checkpoint(self) -> None:
        """Copy the WAL into the database file, without blocking writers (call it off the loop)."""
        with self._checkpointing:
            if self._checkpointer is None:
                raise UsageError("the bus log is closed")
            try:
                self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as error:
                raise EnvironmentFaultError(f"cannot checkpoint the bus log: {error}") from error

    async def aclose(self) -> None:
        """Finish the writes already asked for, then close."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        await asyncio.get_running_loop().run_in_executor(None, thread.join)
        await asyncio.get_running_loop().run_in_executor(None, self._close_connections)

    def _close_connections(self) -> None:
        with self._checkpointing:  # after a checkpoint still running, if any
            for db in (self._writer, self._reader, self._checkpointer):
                if db is not None:
                    db.close()
            self._writer = self._reader = self._checkpointer = None


def _settle(settled: list[tuple[_Write, bool, Any]]) -> None:
    for write, ok, value in settled:
        if write.future.done():  # its caller was cancelled
            continue
        if ok:
            write.future.set_result(value)
        else:
            write.future.set_exception(value)
