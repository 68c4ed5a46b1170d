"""The saga log in a service's PostgreSQL database, through asyncpg, written with group commit.

Needs the ``postgres`` extra: ``pip install 'meshkit[postgres]'``. asyncpg
is imported when first used, so importing this module never fails.

Every transition of every run is a write that must be durable before the
action it announces. Writes queue up; one task takes all that are waiting
and runs them in one transaction on the store's own connection, then
answers each once it has committed. A burst of a thousand runs'
transitions costs one commit (one flush of the WAL), and a few round
trips: the batch's new runs (those without local work) go in one
``INSERT`` and its transitions in one ``UPDATE``, each of ``unnest``-ed
arrays.

The writes of one batch were all waiting at once, none of their callers
answered yet, so any order among them is one their callers could have
seen: the batch runs its new runs first, then its transitions, then the
rest (local work, claims) in the order they came. Each caller's own writes
keep their order, as a caller awaits one before making the next.

Each part of a batch runs under a savepoint of its own, so one that fails
rolls back alone and the rest of the batch commits. Local work
(``create``'s and ``save_local``'s ``async def work(connection)``) is a
part: whatever it raises goes to its caller unchanged. A failed statement
of the store's own is an ``EnvironmentFaultError``; a part of several
writes that fails so (a deadlock with another replica taking runs over)
is tried again one write at a time. A batch whose connection is lost
fails whole, with ``EnvironmentFaultError`` (lost during the commit, it
may have committed: a driver then claims its runs again, at the version
the log holds). Keep local work short: while it runs, the batch waits.

Reads (``get``, ``runs``) go through a small pool of other connections:
they see the last commit and never wait for the writer.

``run`` holds each run as JSON, in UTF-8 bytes (``bytea``: stored and
read without parsing); ``convert_from(run, 'UTF8')::jsonb`` reads it in SQL.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, TypeVar

from meshkit import _postgres
from meshkit.errors import (
    ConflictError,
    EnvironmentFaultError,
    InvalidArgumentError,
    NotFoundError,
    RunTakenError,
    UsageError,
)
from meshkit.policy import _check as check
from meshkit.saga._model import ACTIVE, Run, Status
from meshkit.saga._store import Claimed, LocalWork, decode_run, encode_run, readable

__all__ = ["PostgresSagaStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshkit_saga_runs (
    id text PRIMARY KEY,
    saga text NOT NULL,
    status text NOT NULL,
    owner text,
    lease_until double precision NOT NULL DEFAULT 0,
    version bigint NOT NULL,
    updated double precision NOT NULL,
    run bytea NOT NULL
);
CREATE INDEX IF NOT EXISTS meshkit_saga_runs_by_status ON meshkit_saga_runs (status, lease_until);
CREATE INDEX IF NOT EXISTS meshkit_saga_runs_by_age ON meshkit_saga_runs (updated);
"""

_EXISTS = "SELECT to_regclass('meshkit_saga_runs') IS NOT NULL"
_INSERT = """
INSERT INTO meshkit_saga_runs (id, saga, status, owner, lease_until, version, updated, run)
SELECT id, saga, status, owner, lease_until, 1, updated, run
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::float8[],
            $7::bytea[]) AS new (id, saga, status, owner, lease_until, updated, run)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""
# An ended or stuck run loses its owner, so that no claim finds it.
_UPDATE = """
UPDATE meshkit_saga_runs AS r
SET status = w.status, owner = CASE WHEN w.active THEN r.owner END,
    lease_until = w.lease_until, version = r.version + 1, updated = w.updated, run = w.run
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bool[], $5::float8[], $6::float8[],
            $7::bytea[]) AS w (id, version, status, active, lease_until, updated, run)
WHERE r.id = w.id AND r.version = w.version
RETURNING r.id
"""
# SKIP LOCKED: a run another store is claiming (or writing) right now is not
# waited for; it is either that store's, or found again at the next scan.
_CLAIM = """
UPDATE meshkit_saga_runs SET owner = $1, lease_until = $2, version = version + 1
WHERE id IN (
    SELECT id FROM meshkit_saga_runs
    WHERE status IN ('running', 'compensating') AND (lease_until < $3 OR owner = $4)
    LIMIT $5 FOR UPDATE SKIP LOCKED
)
RETURNING run, version, id
"""
_TAKE = """
UPDATE meshkit_saga_runs SET owner = $1, lease_until = $2, version = version + 1
WHERE id = $3 AND status = 'stuck'
RETURNING run, version
"""
_STATUS = "SELECT status FROM meshkit_saga_runs WHERE id = $1"
_RENEW = "UPDATE meshkit_saga_runs SET lease_until = $1 WHERE owner = $2 AND id = ANY($3::text[])"
_PURGE = (
    "DELETE FROM meshkit_saga_runs WHERE status IN ('completed', 'compensated') AND updated < $1"
)
_GET = "SELECT run FROM meshkit_saga_runs WHERE id = $1"
_RUNS = """
SELECT run FROM meshkit_saga_runs
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR saga = $2)
ORDER BY updated DESC LIMIT $3
"""


class _New(NamedTuple):
    run: Run
    data: bytes  # the run, encoded by its caller: a run JSON cannot hold fails there
    owner: str
    lease_until: float


class _Move(NamedTuple):
    run: Run
    data: bytes
    version: int
    lease_until: float


# A function of the writer's connection, run in a batch under its own savepoint.
_Work = Callable[[Any], Awaitable[Any]]


@dataclass(slots=True)
class _Job:
    write: _New | _Move | _Work
    answer: asyncio.Future[Any]


_Outcome = tuple[_Job, Any, BaseException | None]
_W = TypeVar("_W", _New, _Move)


class PostgresSagaStore:
    """Saga runs in the PostgreSQL database at ``dsn``: a ``SagaStore``.

    The tables (``SCHEMA``) are created on first use if they are missing,
    or by ``ensure_schema()``; they are found on the connection's
    ``search_path``. ``timeout`` bounds connecting and each statement,
    local work's included. ``batch`` bounds the writes of one commit;
    ``readers`` is how many connections ``get`` and ``runs`` may use at once.
    The store connects on first use, and again after losing a connection.
    """

    SCHEMA: ClassVar[str] = _SCHEMA

    def __init__(
        self, dsn: str, *, timeout: float = 10.0, batch: int = 1000, readers: int = 2
    ) -> None:
        self.where = _postgres.where(dsn)  # named in errors, without the password
        self._dsn = dsn
        self.timeout = check.seconds("timeout", timeout)
        self._batch = check.whole("batch", batch, minimum=1, maximum=100_000)
        self._readers = check.whole("readers", readers, minimum=1, maximum=100)
        self._asyncpg = _postgres.asyncpg("meshkit.saga.postgres")
        self._faults = _postgres.faults(self._asyncpg)
        self._queue: collections.deque[_Job] = collections.deque()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._connection: Any = None
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()
        self._closed = False

    # -- the protocol ---------------------------------------------------------------

    async def create(
        self, new: Run | LocalWork, *, owner: str, lease_until: float
    ) -> tuple[Run, int]:
        if isinstance(new, Run):
            await self._write(_New(new, encode_run(new), owner, float(lease_until)))
            return new, 1

        async def insert(connection: Any) -> tuple[Run, int]:
            run = await _call(new, connection)
            if not isinstance(run, Run):
                raise UsageError("local work of a new saga run must return the run")
            row = _New(run, encode_run(run), owner, float(lease_until))
            with self._translated("logging a saga run"):
                written = await _insert(connection, [row])
            if not written:
                raise _taken_id(run.id)
            return run, 1

        created: tuple[Run, int] = await self._write(insert)
        return created

    async def save(self, run: Run, *, version: int, lease_until: float) -> int:
        return int(await self._write(_Move(run, encode_run(run), version, float(lease_until))))

    async def save_local(
        self, run_id: str, local: LocalWork, *, version: int, lease_until: float
    ) -> tuple[Run, int]:
        async def update(connection: Any) -> tuple[Run, int]:
            run = await _call(local, connection)
            if not isinstance(run, Run) or run.id != run_id:
                raise UsageError(f"local work of saga run {run_id} must return that run")
            move = _Move(run, encode_run(run), version, float(lease_until))
            with self._translated("logging a saga run"):
                written = await _update(connection, [move])
            if not written:
                raise _stale(run_id, version)
            return run, version + 1

        result: tuple[Run, int] = await self._write(update)
        return result

    async def claim(
        self, *, owner: str, now: float, lease_until: float, limit: int, own: bool = False
    ) -> list[Claimed]:
        check.whole("limit", limit, minimum=1, maximum=10_000)
        arguments = (owner, float(lease_until), float(now), owner if own else None, limit)

        async def take(connection: Any) -> list[Claimed]:
            with self._translated("claiming saga runs"):
                rows = await connection.fetch(_CLAIM, *arguments)
            # A run this meshkit cannot read stays claimed until its lease lapses,
            # for a runner that can (a newer meshkit, in a rolling upgrade).
            runs = ((readable(row["id"], row[0]), row[1]) for row in rows)
            return [Claimed(run, version) for run, version in runs if run is not None]

        claimed: list[Claimed] = await self._write(take)
        return claimed

    async def take(self, run_id: str, *, owner: str, lease_until: float) -> Claimed:
        async def take(connection: Any) -> Claimed:
            with self._translated("taking a saga run"):
                row = await connection.fetchrow(_TAKE, owner, float(lease_until), run_id)
                status = None if row is not None else await connection.fetchval(_STATUS, run_id)
            if row is not None:
                return Claimed(decode_run(row[0]), row[1])
            if status is None:
                raise NotFoundError(f"no saga run {run_id!r}")
            raise ConflictError(f"saga run {run_id} is {status}, not stuck")

        claimed: Claimed = await self._write(take)
        return claimed

    async def renew(self, run_ids: Sequence[str], *, owner: str, lease_until: float) -> int:
        ids = list(run_ids)
        if not ids:
            return 0

        async def renew(connection: Any) -> int:
            with self._translated("renewing saga leases"):
                return _count(await connection.execute(_RENEW, float(lease_until), owner, ids))

        return int(await self._write(renew))

    async def get(self, run_id: str) -> Run | None:
        rows = await self._read(_GET, run_id)
        return decode_run(rows[0][0]) if rows else None

    async def runs(
        self, *, status: Status | None = None, saga: str | None = None, limit: int = 100
    ) -> list[Run]:
        check.whole("limit", limit, minimum=1, maximum=10_000)
        return [decode_run(row[0]) for row in await self._read(_RUNS, status, saga, limit)]

    async def purge(self, *, ended_before: float) -> int:
        async def purge(connection: Any) -> int:
            with self._translated("purging saga runs"):
                return _count(await connection.execute(_PURGE, float(ended_before)))

        return int(await self._write(purge))

    async def ensure_schema(self) -> None:
        """Create the tables if they are missing (``SCHEMA``), in the next batch."""

        async def create(connection: Any) -> None:
            with self._translated("creating the saga log's tables"):
                await connection.execute(_postgres.SCHEMA_LOCK)
                await connection.execute(_SCHEMA)

        await self._write(create)

    async def aclose(self) -> None:
        """Finish the writes already made, then close the connections."""
        self._closed = True
        self._wake.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer
        connection, self._connection = self._connection, None
        pool, self._pool = self._pool, None
        # A connection that cannot close cleanly (broken, or past the timeout)
        # is aborted by close() itself: nothing is left to do about it.
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close(timeout=self.timeout)
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.timeout)
            except Exception:  # noqa: BLE001 (a reader stuck past the timeout: end it)
                pool.terminate()

    # -- the writer -----------------------------------------------------------------

    async def _write(self, write: _New | _Move | _Work) -> Any:
        """Run ``write`` in the next batch: its result once committed."""
        if self._closed:
            raise UsageError("the saga store is closed")
        job = _Job(write, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._writes(), name="meshkit-saga-writer")
        self._wake.set()
        return await job.answer

    async def _writes(self) -> None:
        """Commit what waits, batch after batch, until closed with nothing left."""
        while self._queue or not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            jobs = [self._queue.popleft() for _ in range(min(self._batch, len(self._queue)))]
            try:
                outcomes = await self._commit(jobs)
            except asyncio.CancelledError:
                _answer([(job, None, UsageError("the saga store is closed")) for job in jobs])
                raise
            _answer(outcomes)

    async def _commit(self, jobs: list[_Job]) -> list[_Outcome]:
        """Run ``jobs`` in one transaction: each job's result or error, once committed."""
        try:
            connection = await self._connect()
            return await _batch(connection, jobs, self.where)
        except BaseException as error:
            # The connection is lost, or in a state nobody can trust: start afresh.
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.terminate()
            if not isinstance(error, Exception):
                raise
            fault = _fault("writing the saga log", self.where, error)
            return [(job, None, fault) for job in jobs]

    async def _connect(self) -> Any:
        if self._connection is None or self._connection.is_closed():
            connection = await self._asyncpg.connect(
                self._dsn, timeout=self.timeout, command_timeout=self.timeout
            )
            self._connection = connection
            if not await connection.fetchval(_EXISTS):
                async with connection.transaction():
                    await connection.execute(_postgres.SCHEMA_LOCK)
                    await connection.execute(_SCHEMA)
        return self._connection

    # -- reads and errors -------------------------------------------------------------

    async def _read(self, query: str, *arguments: object) -> list[Any]:
        if self._closed:
            raise UsageError("the saga store is closed")
        with self._translated("reading the saga log"):
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await self._asyncpg.create_pool(
                        self._dsn,
                        min_size=0,
                        max_size=self._readers,
                        timeout=self.timeout,
                        command_timeout=self.timeout,
                    )
                pool = self._pool
            try:
                rows: list[Any] = await pool.fetch(query, *arguments)
            except self._asyncpg.UndefinedTableError:
                return []  # nothing was ever logged here
        return rows

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """asyncpg's and the network's errors in the store's own statements, as meshkit's."""
        try:
            yield
        except self._faults as error:
            raise _fault(what, self.where, error) from error


# -- one batch ---------------------------------------------------------------------------


async def _batch(connection: Any, jobs: list[_Job], where: str) -> list[_Outcome]:
    """Run ``jobs`` in one transaction, each part under a savepoint; commit."""
    new: list[tuple[_Job, _New]] = []
    moves: list[tuple[_Job, _Move]] = []
    works: list[tuple[_Job, _Work]] = []
    for job in jobs:
        if isinstance(job.write, _New):
            new.append((job, job.write))
        elif isinstance(job.write, _Move):
            moves.append((job, job.write))
        else:
            works.append((job, job.write))
    outcomes: list[_Outcome] = []
    async with connection.transaction():
        for new_part in _apart(new):
            outcomes += await _together(connection, new_part, _inserted, where)
        for moves_part in _apart(moves):
            outcomes += await _together(connection, moves_part, _updated, where)
        for job, work in works:
            outcomes.append(await _alone(connection, job, work))
    return outcomes


def _apart(writes: list[tuple[_Job, _W]]) -> list[list[tuple[_Job, _W]]]:
    """``writes`` in parts that name each run once, so that one statement can write a part."""
    parts: list[dict[str, tuple[_Job, _W]]] = []
    for job, write in writes:
        part = next((p for p in parts if write.run.id not in p), None)
        if part is None:
            part = {}
            parts.append(part)
        part[write.run.id] = (job, write)
    return [list(part.values()) for part in parts]


async def _together(
    connection: Any,
    part: list[tuple[_Job, _W]],
    written: Callable[[Any, list[_W]], Awaitable[list[Any]]],
    where: str,
) -> list[_Outcome]:
    """``part`` in one statement under a savepoint; if that fails, one write at a time.

    ``written`` gives each write's result, or the error for its caller. A
    savepoint that cannot be rolled back (the connection is lost) fails the batch.
    """
    savepoint = connection.transaction()
    await savepoint.start()
    try:
        results = await written(connection, [write for _, write in part])
    except Exception as error:  # noqa: BLE001 (the statement failed: its writes are told)
        await savepoint.rollback()
        if len(part) == 1:
            return [(part[0][0], None, _fault("writing the saga log", where, error))]
        return [
            outcome
            for one in part
            for outcome in await _together(connection, [one], written, where)
        ]
    await savepoint.commit()
    return [
        (job, None, result) if isinstance(result, BaseException) else (job, result, None)
        for (job, _), result in zip(part, results, strict=True)
    ]


async def _alone(connection: Any, job: _Job, work: _Work) -> _Outcome:
    """``work`` under a savepoint: what it raises rolls back its part only."""
    savepoint = connection.transaction()
    await savepoint.start()
    try:
        result = await work(connection)
    except Exception as error:  # noqa: BLE001 (handed to the job's caller, unchanged)
        await savepoint.rollback()
        return (job, None, error)
    await savepoint.commit()
    return (job, result, None)


async def _inserted(connection: Any, new: list[_New]) -> list[Any]:
    written = await _insert(connection, new)
    return [1 if n.run.id in written else _taken_id(n.run.id) for n in new]


async def _updated(connection: Any, moves: list[_Move]) -> list[Any]:
    written = await _update(connection, moves)
    return [m.version + 1 if m.run.id in written else _stale(m.run.id, m.version) for m in moves]


async def _insert(connection: Any, new: Sequence[_New]) -> set[str]:
    """Insert the runs not yet in the log: the ids inserted."""
    rows = await connection.fetch(
        _INSERT,
        [n.run.id for n in new],
        [n.run.saga for n in new],
        [n.run.status for n in new],
        [n.owner for n in new],
        [n.lease_until for n in new],
        [n.run.updated for n in new],
        [n.data for n in new],
    )
    return {row[0] for row in rows}


async def _update(connection: Any, moves: Sequence[_Move]) -> set[str]:
    """Write each run over the one at its version: the ids written."""
    active = [m.run.status in ACTIVE for m in moves]
    rows = await connection.fetch(
        _UPDATE,
        [m.run.id for m in moves],
        [m.version for m in moves],
        [m.run.status for m in moves],
        active,
        [m.lease_until if a else 0.0 for m, a in zip(moves, active, strict=True)],
        [m.run.updated for m in moves],
        [m.data for m in moves],
    )
    return {row[0] for row in rows}


async def _call(local: LocalWork, connection: Any) -> Any:
    """``local(connection)``, awaited if it is a coroutine function (or returns an awaitable)."""
    result = local(connection)
    if inspect.isawaitable(result):
        result = await result
    return result


def _fault(what: str, where: str, error: BaseException) -> EnvironmentFaultError:
    fault = EnvironmentFaultError(f"{what} on {where} failed: {type(error).__name__}: {error}")
    fault.__cause__ = error
    return fault


def _taken_id(run_id: str) -> InvalidArgumentError:
    return InvalidArgumentError("run_id", f"a saga run {run_id!r} exists")


def _stale(run_id: str, version: int) -> RunTakenError:
    return RunTakenError(f"saga run {run_id} is no longer at version {version}")


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])  # "UPDATE 3", "DELETE 12"


def _answer(outcomes: list[_Outcome]) -> None:
    for job, result, error in outcomes:
        if job.answer.done():
            continue  # its caller was cancelled
        if error is not None:
            job.answer.set_exception(error)
        else:
            job.answer.set_result(result)
