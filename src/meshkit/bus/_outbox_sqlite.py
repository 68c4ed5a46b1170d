"""The outbox and the inbox in a service's own SQLite database.

Recording runs in the caller's transaction, on the caller's connection, in
the caller's thread: a service's ``BEGIN IMMEDIATE ... COMMIT`` holds its
change and its events together. The relay's store runs on a connection of
its own, in a thread of its own, off the event loop.

Two replicas of a service share its file, each with its relay. The claim
that lets only one of them publish at a time is a row, written inside
``BEGIN IMMEDIATE`` (which takes SQLite's one write lock, so two relays
cannot both see the claim free and both take it) and kept after the
commit, with an expiry. The write lock itself cannot be the claim: held
while publishing, it would stop the service's own writes for as long as
the bus takes to answer, or to time out.

Sent events are deleted rather than marked: the outbox then holds only the
backlog, so finding the oldest unsent events reads the first rows of the
primary key, with no index on a flag and no pruning to schedule. The bus
keeps what was published. ``AUTOINCREMENT`` keeps ``seq`` from being
reused after the table empties, so a relay whose claim lapsed and that
removes its batch late can only remove events that were published.
Events the bus refuses for good move, with their ``seq``, to
``meshkit_outbox_parked``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, TypeVar

from meshkit._clock import Clock, SystemClock
from meshkit.bus._inbox import InboxRetention
from meshkit.bus._model import check_limit, check_message_id, clip_error
from meshkit.bus._outbox import (
    OutboxEntry,
    ParkedEntry,
    check_seqs,
    check_timeout,
    outbox_entry,
    outbox_row,
    parked_entry,
)
from meshkit.errors import EnvironmentFaultError, InvalidArgumentError, MeshkitError, UsageError
from meshkit.policy import _check as check

__all__ = ["SqliteInbox", "SqliteOutbox"]

T = TypeVar("T")

_log = logging.getLogger("meshkit.bus.outbox")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshkit_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    key TEXT
);
-- Events the bus refused for good: the outbox's row, the error, and when (Unix time).
CREATE TABLE IF NOT EXISTS meshkit_outbox_parked (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    key TEXT,
    error TEXT NOT NULL,
    parked REAL NOT NULL
);
-- At most one row: the relay publishing now, and when its claim lapses (Unix time).
CREATE TABLE IF NOT EXISTS meshkit_outbox_claim (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    holder TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meshkit_inbox (
    grp TEXT NOT NULL,
    id TEXT NOT NULL,
    seen REAL NOT NULL,
    PRIMARY KEY (grp, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS meshkit_inbox_by_age ON meshkit_inbox (grp, seen);
"""

_INSERT = "INSERT INTO meshkit_outbox (id, topic, payload, headers, key) VALUES (?, ?, ?, ?, ?)"
_OLDEST = "SELECT seq, id, topic, payload, headers, key FROM meshkit_outbox ORDER BY seq LIMIT ?"
_CLAIM = """
INSERT INTO meshkit_outbox_claim (one, holder, expires) VALUES (1, ?, ?)
ON CONFLICT (one) DO UPDATE SET holder = excluded.holder, expires = excluded.expires
"""
_UNCLAIM = "DELETE FROM meshkit_outbox_claim WHERE holder = ?"
_PARK = """
INSERT INTO meshkit_outbox_parked (seq, id, topic, payload, headers, key, error, parked)
SELECT seq, id, topic, payload, headers, key, ?, ? FROM meshkit_outbox WHERE seq = ?
"""
_PARKED = """
SELECT seq, id, topic, payload, headers, key, error, parked FROM meshkit_outbox_parked
ORDER BY seq LIMIT ?
"""
_REQUEUE = """
INSERT INTO meshkit_outbox (id, topic, payload, headers, key)
SELECT id, topic, payload, headers, key FROM meshkit_outbox_parked"""


def _translate(error: sqlite3.Error, where: str) -> MeshkitError:
    if isinstance(error, sqlite3.OperationalError) and "no such table" in str(error):
        return UsageError(
            f"{where} has no outbox tables: run SqliteOutbox.SCHEMA in it first ({error})"
        )
    return EnvironmentFaultError(f"{where} failed: {error}")


def _in_transaction(db: sqlite3.Connection, what: str) -> None:
    if not isinstance(db, sqlite3.Connection):
        raise InvalidArgumentError("db", f"must be a sqlite3.Connection, got {type(db).__name__}")
    # The sqlite3 module's legacy mode (the default isolation level, and no
    # Python 3.12 autocommit=True) begins a transaction itself before an
    # INSERT, so a record() there is inside the transaction the caller then
    # commits. In autocommit mode (isolation_level None, as db.py's) only an
    # explicit BEGIN opens one.
    implicit = getattr(db, "autocommit", -1) == -1 and db.isolation_level is not None
    if not (db.in_transaction or implicit):
        raise UsageError(
            f"{what} needs the caller's open transaction (BEGIN IMMEDIATE ... COMMIT): "
            "outside one it would commit on its own, whatever becomes of the change"
        )


class SqliteOutbox:
    """An ``OutboxStore`` on the SQLite database at ``path``, and ``record()`` to fill it.

    ``SCHEMA`` creates meshkit's tables (the outbox, its claim and the
    inbox) if they are missing; run it with the service's own schema, or
    ``await store.ensure_schema()``. ``timeout`` (at most an hour) is how
    long a call waits for the database's write lock before it counts as
    unreachable. The claim's expiry is wall time on ``clock``, read once
    the claim holds the write lock: every relay of one file runs on one
    machine, so they read one wall clock.
    """

    SCHEMA: ClassVar[str] = _SCHEMA

    def __init__(
        self, path: str | os.PathLike[str], *, timeout: float = 10.0, clock: Clock | None = None
    ) -> None:
        self.path = os.fspath(path)
        self._timeout = check_timeout("timeout", timeout)
        self._clock = clock or SystemClock()
        # Claims are told apart by holder, so each store is a holder of its own.
        self._holder = secrets.token_hex(8)
        # One thread, not asyncio.to_thread's pool: the connection stays with
        # the thread that made it, calls run in the order they were made even
        # when the caller is cancelled mid-call, and aclose() runs after the
        # call in flight instead of under it.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="meshkit-outbox")
        self._db: sqlite3.Connection | None = None
        # Whether this store holds a claim, as its caller sees it (claim()
        # returned events, not yet followed by sent() or release()) ...
        self._claimed = False
        # ... and whether the claim row may be this store's (the store's thread).
        self._holding = False
        self._closed = False

    @property
    def timeout(self) -> float:
        return self._timeout

    @staticmethod
    def holds_outbox(path: str | os.PathLike[str]) -> bool:
        """Whether the file at ``path`` is a SQLite database with an outbox's tables.

        Opened read-only, so a file that is not one is neither changed nor created.
        """
        try:
            with open(path, "rb") as file:  # noqa: PTH123 (str or PathLike alike)
                if file.read(16) != b"SQLite format 3\x00":
                    return False
            uri = f"file:{os.fspath(path)}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as db:
                found = db.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meshkit_outbox'"
                ).fetchone()
        except (OSError, sqlite3.Error):
            return False
        return found is not None

    @staticmethod
    def record(
        db: sqlite3.Connection,
        topic: str,
        payload: object,
        *,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Record an event in the caller's open transaction on ``db``: its message id.

        The event is checked as ``outgoing()`` checks it
        (``MessageRefusedError`` naming the bad field, before anything is
        written) and gets a random id unless ``message_id`` is given. It is
        published after, and only if, the transaction commits. Raises
        ``UsageError`` outside a transaction or without the tables
        (``InvalidArgumentError`` on ``db`` if it is not a
        ``sqlite3.Connection``), ``EnvironmentFaultError`` if the insert
        fails.
        """
        _in_transaction(db, "SqliteOutbox.record()")
        row = outbox_row(topic, payload, headers=headers, key=key, message_id=message_id)
        try:
            db.execute(_INSERT, row)
        except sqlite3.Error as error:
            raise _translate(error, "recording an event") from error
        return row[0]

    async def ensure_schema(self) -> None:
        """Create meshkit's tables if they are missing (``SCHEMA``)."""
        await self._call(lambda db: db.executescript(_SCHEMA))

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        check_limit(limit)
        check.seconds("hold", hold)
        if self._claimed:
            raise UsageError("claim() while holding a claim: end it with sent() or release()")
        entries = await self._call(lambda db: self._claim(db, limit, hold))
        self._claimed = bool(entries)
        return entries

    async def sent(self, entries: Sequence[OutboxEntry]) -> None:
        self._check_claimed("sent")
        self._claimed = False
        seqs = [(entry.seq,) for entry in entries]
        await self._call(lambda db: self._sent(db, seqs))

    async def park(self, entry: OutboxEntry, error: str) -> None:
        self._check_claimed("park")
        row = (clip_error(error), self._clock.time(), entry.seq)
        await self._call(lambda db: self._park(db, row))

    async def parked(self, *, limit: int = 100) -> list[ParkedEntry]:
        check_limit(limit)
        rows = await self._call(lambda db: db.execute(_PARKED, (limit,)).fetchall())
        return [parked_entry(*row) for row in rows]

    async def requeue(self, seqs: Sequence[int] | None = None) -> int:
        if self._claimed:
            raise UsageError("requeue() while holding a claim: sent() or release() it first")
        chosen = check_seqs(seqs)
        return await self._call(lambda db: _move_parked(db, chosen, back=True))

    async def discard(self, seqs: Sequence[int] | None = None) -> int:
        if self._claimed:
            raise UsageError("discard() while holding a claim: sent() or release() it first")
        chosen = check_seqs(seqs)
        return await self._call(lambda db: _move_parked(db, chosen, back=False))

    async def release(self) -> None:
        self._claimed = False
        await self._call(self._release)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._claimed = False
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=False)

    def _check_claimed(self, what: str) -> None:
        if not self._claimed:
            raise UsageError(f"{what}() without a claim: claim() the entries first")

    # -- in the store's thread ---------------------------------------------------

    def _claim(self, db: sqlite3.Connection, limit: int, hold: float) -> list[OutboxEntry]:
        # Idle polls only read, so they never wait for the service's writers.
        if db.execute("SELECT 1 FROM meshkit_outbox LIMIT 1").fetchone() is None:
            return []
        with _immediate(db):
            # The time is read once the lock is held: BEGIN IMMEDIATE may wait
            # up to the timeout for it, and a claim stamped before that wait
            # would lapse early, letting another relay take over mid-publish.
            now = self._clock.time()
            holder = db.execute("SELECT holder, expires FROM meshkit_outbox_claim").fetchone()
            if holder is not None and holder[0] != self._holder and holder[1] > now:
                return []  # another relay is publishing
            rows = db.execute(_OLDEST, (limit,)).fetchall()
            if rows:
                db.execute(_CLAIM, (self._holder, now + hold))
                self._holding = True  # if the commit fails, release() finds nothing to delete
        return [outbox_entry(*row) for row in rows]

    def _sent(self, db: sqlite3.Connection, seqs: list[tuple[int]]) -> None:
        with _immediate(db):
            db.executemany("DELETE FROM meshkit_outbox WHERE seq = ?", seqs)
            db.execute(_UNCLAIM, (self._holder,))
        self._holding = False

    def _park(self, db: sqlite3.Connection, row: tuple[str, float, int]) -> None:
        # Copied, then deleted, in one transaction. An entry already gone (a
        # relay that took over after this claim lapsed parked it) copies nothing.
        with _immediate(db):
            db.execute(_PARK, row)
            db.execute("DELETE FROM meshkit_outbox WHERE seq = ?", (row[2],))

    def _release(self, db: sqlite3.Connection) -> None:
        # Only when there may be a claim: a DELETE waits for the write lock
        # even when it matches nothing, and a relay releases after every
        # failure, a locked database's too. Tried once: after a failure the
        # claim lapses on its own, and closing does not wait for the lock again.
        if self._holding:
            self._holding = False
            db.execute(_UNCLAIM, (self._holder,))

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            self._release(db)
        except sqlite3.Error as error:  # the claim lapses on its own after its hold
            _log.debug("outbox: could not release the claim on closing: %s", error)
        finally:
            db.close()

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            # Autocommit (isolation_level None): transactions are the explicit
            # BEGIN IMMEDIATE ones. The journal mode is the service's choice
            # (WAL, for replicas sharing the file), left as it is.
            self._db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        return self._db

    async def _call(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise UsageError("this SqliteOutbox is closed")

        def run() -> T:
            try:
                return op(self._connection())
            except sqlite3.Error as error:
                raise _translate(error, f"the outbox database {self.path}") from error

        return await asyncio.get_running_loop().run_in_executor(self._executor, run)


def _move_parked(db: sqlite3.Connection, seqs: list[int] | None, *, back: bool) -> int:
    """Parked events out of their table (all, or these seqs): into the outbox, after
    what it holds, when ``back``; how many moved."""
    moved = 0
    with _immediate(db):
        for seq in [None] if seqs is None else sorted(seqs):
            where, one = ("", ()) if seq is None else (" WHERE seq = ?", (seq,))
            if back:
                db.execute(f"{_REQUEUE}{where} ORDER BY seq", one)
            discard = f"DELETE FROM meshkit_outbox_parked{where}"  # noqa: S608 (constant, ? marks)
            moved += db.execute(discard, one).rowcount
    return moved


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a COMMIT that failed (busy) leaves it open
            db.execute("ROLLBACK")
        raise


class SqliteInbox(InboxRetention):
    """The ids a consumer group has handled, kept in the group's own transactions.

    In a handler, inside the transaction that makes the handler's change::

        if inbox.record(db, message.id):
            ...  # the change: done once per message id
        # a repeat: already done, nothing to change

    An id is remembered for ``retention`` seconds (default 7 days), then
    forgotten (``prune``, which ``record`` also runs once an hour, and
    again at the next record after one that failed). The tables are
    ``SqliteOutbox.SCHEMA``'s.
    """

    def record(self, db: sqlite3.Connection, message_id: str) -> bool:
        """True the first time ``message_id`` comes for this group (now recorded), else False.

        The record commits with the caller's transaction and rolls back
        with it, so a handler that fails leaves the message new for its
        next delivery. Raises ``UsageError`` outside a transaction
        (``InvalidArgumentError`` on ``db`` if it is not a ``sqlite3.Connection``).
        """
        _in_transaction(db, "SqliteInbox.record()")
        check_message_id(message_id)
        if self._prune_due():
            self.prune(db)
        try:
            cursor = db.execute(
                "INSERT INTO meshkit_inbox (grp, id, seen) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (self.group, message_id, self._stamp()),
            )
        except sqlite3.Error as error:
            raise _translate(error, "the inbox") from error
        return cursor.rowcount == 1

    def prune(self, db: sqlite3.Connection) -> int:
        """Forget this group's ids older than the retention: how many were forgotten."""
        try:
            cursor = db.execute(
                "DELETE FROM meshkit_inbox WHERE grp = ? AND seen < ?",
                (self.group, self._cutoff()),
            )
        except sqlite3.Error as error:
            raise _translate(error, "the inbox") from error
        self._pruned()
        return cursor.rowcount
