"""The saga log in a service's own SQLite database, written with group commit.

Every transition of every run is a write that must be durable before the
action it announces. One transaction per write would cost a commit each;
here one writer thread takes whatever writes are waiting, runs them all in
one ``BEGIN IMMEDIATE ... COMMIT``, and only then answers each of them. A
burst of a thousand runs' transitions costs one commit (and, with
``synchronous=FULL``, one fsync of the WAL), which is what makes thousands
of durable sagas a second possible on one core.

Local work (``create``'s and ``save_local``'s function of the transaction)
runs on the writer thread, inside the batch's transaction, under a
savepoint of its own: if it raises, only its part rolls back and the
exception goes to its caller; the other writes of the batch commit.
Keep it short: while it runs, no other write of the batch can commit.

Reads (``get``, ``runs``) open their own connection in a worker thread:
WAL mode lets them read the last commit while the writer writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from meshkit.errors import (
    ConflictError,
    EnvironmentFaultError,
    InvalidArgumentError,
    NotFoundError,
    RunTakenError,
    UsageError,
)
from meshkit.policy import _check as check
from meshkit.saga._model import Run, Status
from meshkit.saga._store import Claimed, LocalWork, decode_run, encode_run, readable

__all__ = ["SqliteSagaStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshkit_saga_runs (
    id TEXT PRIMARY KEY,
    saga TEXT NOT NULL,
    status TEXT NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0,
    version INTEGER NOT NULL,
    updated REAL NOT NULL,
    run BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS meshkit_saga_runs_by_status ON meshkit_saga_runs (status, lease_until);
CREATE INDEX IF NOT EXISTS meshkit_saga_runs_by_age ON meshkit_saga_runs (updated);
"""

_INSERT = (
    "INSERT INTO meshkit_saga_runs (id, saga, status, owner, lease_until, version, updated, run)"
    " VALUES (?, ?, ?, ?, ?, 1, ?, ?)"
)
_UPDATE = (
    "UPDATE meshkit_saga_runs SET status = ?, owner = CASE WHEN ? THEN owner END,"
    " lease_until = ?, version = version + 1, updated = ?, run = ? WHERE id = ? AND version = ?"
)
_EXPIRED = (
    "SELECT id, run FROM meshkit_saga_runs WHERE status IN ('running', 'compensating')"
    " AND (lease_until < ? OR owner = ?) LIMIT ?"
)
_CLAIM = (
    "UPDATE meshkit_saga_runs SET owner = ?, lease_until = ?, version = version + 1"
    " WHERE id = ? RETURNING run, version"
)
_TAKE = (
    "UPDATE meshkit_saga_runs SET owner = ?, lease_until = ?, version = version + 1"
    " WHERE id = ? RETURNING version"
)

# A write the writer thread runs: a function of its connection, and where the answer goes.
_Job = tuple[Callable[[sqlite3.Connection], Any], bool, asyncio.Future[Any]]
_STOP: Any = object()
_CHECKPOINT_EVERY = 1.0  # seconds


class SqliteSagaStore:
    """Saga runs in the SQLite database at ``path`` (created, with the tables, if missing).

    ``synchronous`` is SQLite's setting for the writer's connection:
    ``"FULL"`` (the default) makes each commit survive a power cut, not
    only a crash of the process; ``"NORMAL"`` only the latter, for less.
    ``timeout`` bounds a wait for SQLite's write lock, which the service's
    own transactions share. ``batch`` bounds the writes of one commit.
    """

    SCHEMA: ClassVar[str] = _SCHEMA

    def __init__(
        self,
        path: str | Path,
        *,
        timeout: float = 10.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        batch: int = 1000,
    ) -> None:
        self.path = Path(path)
        self.timeout = check.seconds("timeout", timeout)
        if synchronous not in ("FULL", "NORMAL"):
            raise InvalidArgumentError(
                "synchronous", f"must be FULL or NORMAL, got {synchronous!r}"
            )
        self._synchronous = synchronous
        self._batch = check.whole("batch", batch, minimum=1, maximum=100_000)
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()

    # -- the protocol ---------------------------------------------------------------

    async def create(
        self, new: Run | LocalWork, *, owner: str, lease_until: float
    ) -> tuple[Run, int]:
        def insert(db: sqlite3.Connection) -> tuple[Run, int]:
            run = new if isinstance(new, Run) else _returned_run(new(db), None)
            row = (run.id, run.saga, run.status, owner, lease_until, run.updated, encode_run(run))
            try:
                db.execute(_INSERT, row)
            except sqlite3.IntegrityError as error:
                raise InvalidArgumentError("run_id", f"a saga run {run.id!r} exists") from error
            return run, 1

        created: tuple[Run, int] = await self._write(insert, guarded=not isinstance(new, Run))
        return created

    async def save(self, run: Run, *, version: int, lease_until: float) -> int:
        def update(db: sqlite3.Connection) -> int:
            _update(db, run, version, lease_until)
            return version + 1

        return int(await self._write(update, guarded=False))

    async def save_local(
        self, run_id: str, local: LocalWork, *, version: int, lease_until: float
    ) -> tuple[Run, int]:
        def update(db: sqlite3.Connection) -> tuple[Run, int]:
            run = _returned_run(local(db), run_id)
            _update(db, run, version, lease_until)
            return run, version + 1

        result: tuple[Run, int] = await self._write(update, guarded=True)
        return result

    async def claim(
        self, *, owner: str, now: float, lease_until: float, limit: int, own: bool = False
    ) -> list[Claimed]:
        check.whole("limit", limit, minimum=1, maximum=10_000)

        def take(db: sqlite3.Connection) -> list[Claimed]:
            found = db.execute(_EXPIRED, (now, owner if own else None, limit)).fetchall()
            taken = []
            for run_id, data in found:
                run = readable(run_id, data)
                if run is not None:  # else left as it is, for a runner that can read it
                    (version,) = db.execute(_TAKE, (owner, lease_until, run_id)).fetchone()
                    taken.append(Claimed(run, version))
            return taken

        claimed: list[Claimed] = await self._write(take, guarded=False)
        return claimed

    async def take(self, run_id: str, *, owner: str, lease_until: float) -> Claimed:
        def take(db: sqlite3.Connection) -> Claimed:
            row = db.execute(
                "SELECT status FROM meshkit_saga_runs WHERE id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no saga run {run_id!r}")
            if row[0] != "stuck":
                raise ConflictError(f"saga run {run_id} is {row[0]}, not stuck")
            data, version = db.execute(_CLAIM, (owner, lease_until, run_id)).fetchone()
            return Claimed(decode_run(data), version)

        claimed: Claimed = await self._write(take, guarded=False)
        return claimed

    async def renew(self, run_ids: Sequence[str], *, owner: str, lease_until: float) -> int:
        ids = list(run_ids)

        def renew(db: sqlite3.Connection) -> int:
            renewed = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                cursor = db.execute(
                    f"UPDATE meshkit_saga_runs SET lease_until = ? WHERE owner = ?"  # noqa: S608 (marks only)
                    f" AND id IN ({marks})",
                    (lease_until, owner, *chunk),
                )
                renewed += cursor.rowcount
            return renewed

        return int(await self._write(renew, guarded=False)) if ids else 0

    async def get(self, run_id: str) -> Run | None:
        rows = await self._read("SELECT run FROM meshkit_saga_runs WHERE id = ?", (run_id,))
        return decode_run(rows[0][0]) if rows else None

    async def runs(
        self, *, status: Status | None = None, saga: str | None = None, limit: int = 100
    ) -> list[Run]:
        check.whole("limit", limit, minimum=1, maximum=10_000)
        rows = await self._read(
            "SELECT run FROM meshkit_saga_runs WHERE (? IS NULL OR status = ?)"
            " AND (? IS NULL OR saga = ?) ORDER BY updated DESC LIMIT ?",
            (status, status, saga, saga, limit),
        )
        return [decode_run(row[0]) for row in rows]

    async def purge(self, *, ended_before: float) -> int:
        def purge(db: sqlite3.Connection) -> int:
            return db.execute(
                "DELETE FROM meshkit_saga_runs WHERE status IN ('completed', 'compensated')"
                " AND updated < ?",
                (ended_before,),
            ).rowcount

        return int(await self._write(purge, guarded=False))

    async def aclose(self) -> None:
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            done = asyncio.get_running_loop().create_future()
            self._jobs.put((_STOP, False, done))
            await asyncio.to_thread(thread.join)

    # -- the writer -----------------------------------------------------------------

    async def _write(self, work: Callable[[sqlite3.Connection], Any], *, guarded: bool) -> Any:
        """Run ``work`` in the next batch's transaction: its result once committed.

        ``work`` runs in the writer's thread, in a copy of the caller's
        context, as ``asyncio.to_thread`` runs a function: the span current
        where a local step was called is current in the step (and in the
        events it adds to an outbox).
        """
        if self._closed or self._thread is None:
            self._start_writer()
        answer = asyncio.get_running_loop().create_future()
        context = contextvars.copy_context()
        self._jobs.put((lambda db: context.run(work, db), guarded, answer))
        return await answer

    def _start_writer(self) -> None:
        with self._lock:
            if self._closed:
                raise UsageError("the saga store is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._writer, name="meshkit-saga-writer", daemon=True
                )
                self._thread.start()

    def _writer(self) -> None:
        try:
            db = self._connect()
        except EnvironmentFaultError as error:
            with self._lock:
                self._thread = None  # the next write starts another writer, to try again
            self._fail_all(error)
            return
        checkpoints = threading.Thread(
            target=self._checkpointer, name="meshkit-saga-checkpoints", daemon=True
        )
        checkpoints.start()
        try:
            with contextlib.closing(db):
                self._write_batches(db)
        finally:
            self._stopped.set()
            checkpoints.join()

    def _write_batches(self, db: sqlite3.Connection) -> None:
        while True:
            jobs = [self._jobs.get()]
            while len(jobs) < self._batch:
                try:
                    jobs.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            stop = [job for job in jobs if job[0] is _STOP]
            work = [job for job in jobs if job[0] is not _STOP]
            if work:
                _deliver(_commit(db, work))
            if stop:
                self._fail_all(UsageError("the saga store is closed"))
                return

    def _checkpointer(self) -> None:
        """Copy the WAL into the database every second, off the writer's commit path.

        SQLite checkpoints in the connection whose commit fills the WAL past
        1,000 pages, so one commit in a few hundred would wait for the copy
        and its fsync (tens of ms here). The writer has automatic
        checkpoints off; a PASSIVE checkpoint here waits for no writer.
        """
        try:
            db = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False)
        except sqlite3.Error:
            return  # the writer failed to open it too, and says why
        with contextlib.closing(db):
            while not self._stopped.wait(_CHECKPOINT_EVERY):
                with contextlib.suppress(sqlite3.Error):  # busy: the next one will do
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpointer
            db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise EnvironmentFaultError(f"cannot open the saga log {self.path}: {error}") from error
        return db

    def _fail_all(self, error: BaseException) -> None:
        left = []
        with contextlib.suppress(queue.Empty):
            while True:
                left.append(self._jobs.get_nowait())
        _deliver([(job, None, error) for job in left])

    async def _read(self, sql: str, parameters: tuple[object, ...]) -> list[Any]:
        def read() -> list[Any]:
            try:
                db = sqlite3.connect(self.path, timeout=self.timeout)
            except sqlite3.Error as error:
                raise EnvironmentFaultError(f"cannot read the saga log: {error}") from error
            try:
                return db.execute(sql, parameters).fetchall()
            except sqlite3.OperationalError as error:
                if "no such table" in str(error):
                    return []  # nothing was ever logged here
                raise EnvironmentFaultError(f"cannot read the saga log: {error}") from error
            finally:
                db.close()

        return await asyncio.to_thread(read)


def _returned_run(run: object, run_id: str | None) -> Run:
    if not isinstance(run, Run) or (run_id is not None and run.id != run_id):
        raise UsageError(f"local work of saga run {run_id or '(new)'} must return that run")
    return run


def _update(db: sqlite3.Connection, run: Run, version: int, lease_until: float) -> None:
    active = run.status in ("running", "compensating")
    cursor = db.execute(
        _UPDATE,
        (
            run.status,
            active,
            lease_until if active else 0.0,
            run.updated,
            encode_run(run),
            run.id,
            version,
        ),
    )
    if cursor.rowcount == 0:
        raise RunTakenError(f"saga run {run.id} is no longer at version {version}")


_Outcome = tuple[_Job, Any, BaseException | None]


def _commit(db: sqlite3.Connection, jobs: list[_Job]) -> list[_Outcome]:
    """Run ``jobs`` in one transaction: each job's result or error, once committed."""
    outcomes: list[_Outcome] = []
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes.extend(_run_job(db, job) for job in jobs)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as error:
        fault = EnvironmentFaultError(f"cannot write the saga log: {error}")
        fault.__cause__ = error
        return [(job, None, fault) for job in jobs]
    return outcomes


def _run_job(db: sqlite3.Connection, job: _Job) -> _Outcome:
    work, guarded, _ = job
    if guarded:
        db.execute("SAVEPOINT job")
    try:
        result = work(db)
    except Exception as error:
        if not guarded:
            if isinstance(error, sqlite3.OperationalError):
                raise  # the database itself failed: the whole batch fails
            return (job, None, error)
        # Local work's own SQL may fail (a missing table): its caller's error,
        # unchanged. A savepoint that will not roll back means the database
        # itself failed, and then the whole batch fails.
        db.execute("ROLLBACK TO job")
        db.execute("RELEASE job")
        return (job, None, error)
    if guarded:
        db.execute("RELEASE job")
    return (job, result, None)


def _deliver(outcomes: list[_Outcome]) -> None:
    """Answer each job on its own event loop, with one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0][2].get_loop(), []).append(outcome)
    for loop, answers in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
            loop.call_soon_threadsafe(_answer, answers)


def _answer(outcomes: list[_Outcome]) -> None:
    for (_, _, future), result, error in outcomes:
        if future.done():
            continue  # its caller was cancelled
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
