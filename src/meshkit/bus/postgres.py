"""The outbox and the inbox in a service's PostgreSQL database, through asyncpg.

Needs the ``postgres`` extra: ``pip install 'meshkit[postgres]'``. asyncpg
is imported when first used, so importing this module never fails.

Recording runs on the caller's connection, inside the caller's transaction.
The relay's store (``PostgresOutbox``) has a connection of its own, and its
claim is a transaction on it holding an advisory lock on the outbox table
(``pg_try_advisory_xact_lock``), open from the claim until the batch is
removed. The lock is the whole outbox's, not its rows': ``FOR UPDATE SKIP
LOCKED`` would let a second relay take the next rows and publish them
before the first relay's, out of order. A session lock would survive the
batch, and needs unlocking by hand; a transaction's lock ends with the
transaction, so a relay that crashes, or whose connection drops, frees the
outbox at once. A relay that hangs is bounded too: the claim sets
``idle_in_transaction_session_timeout`` to its hold, and PostgreSQL ends a
session that sits in the transaction for longer.

The open transaction takes no row locks and writes nothing until its
``DELETE``, so the service's inserts never wait for it.

Events are published in ``seq`` order, which is the order the recording
transactions drew their numbers. Two concurrent transactions may commit in
the other order; an event recorded after another's commit (one that causes
it, say) always has the higher number, so causes go out before effects.
Sent events are deleted, as in SQLite, and for the same reasons; events the
bus refuses for good move to ``meshkit_outbox_parked``, in the claim's
transaction.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from meshkit import _postgres
from meshkit._clock import Clock, SystemClock
from meshkit._postgres import SCHEMA_LOCK as _SCHEMA_LOCK
from meshkit._postgres import where as _where
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
from meshkit.errors import ConfigError, EnvironmentFaultError, UsageError
from meshkit.policy import _check as check

__all__ = ["PostgresConnection", "PostgresInbox", "PostgresOutbox"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meshkit_outbox (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL,
    topic text NOT NULL,
    payload bytea NOT NULL,
    headers text NOT NULL,
    key text
);
CREATE TABLE IF NOT EXISTS meshkit_outbox_parked (
    seq bigint PRIMARY KEY,
    id text NOT NULL,
    topic text NOT NULL,
    payload bytea NOT NULL,
    headers text NOT NULL,
    key text,
    error text NOT NULL,
    parked double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS meshkit_inbox (
    grp text NOT NULL,
    id text NOT NULL,
    seen double precision NOT NULL,
    PRIMARY KEY (grp, id)
);
CREATE INDEX IF NOT EXISTS meshkit_inbox_by_age ON meshkit_inbox (grp, seen);
"""

# The claim's advisory lock key: "mkob" in the high half, and the table's oid
# (unique in its database, whatever its schema) in the low half.
_CLAIM = """
SELECT pg_try_advisory_xact_lock(7884518039339663360 | 'meshkit_outbox'::regclass::oid::bigint),
       set_config('idle_in_transaction_session_timeout', $1, true)
"""
_OLDEST = "SELECT seq, id, topic, payload, headers, key FROM meshkit_outbox ORDER BY seq LIMIT $1"
_INSERT = (
    "INSERT INTO meshkit_outbox (id, topic, payload, headers, key) VALUES ($1, $2, $3, $4, $5)"
)
_PARK = """
WITH moved AS (
    DELETE FROM meshkit_outbox WHERE seq = $1 RETURNING seq, id, topic, payload, headers, key
)
INSERT INTO meshkit_outbox_parked (seq, id, topic, payload, headers, key, error, parked)
SELECT seq, id, topic, payload, headers, key, $2, $3 FROM moved
"""
_PARKED = """
SELECT seq, id, topic, payload, headers, key, error, parked FROM meshkit_outbox_parked
ORDER BY seq LIMIT $1
"""
# $1: the seqs, or NULL for all of them.
_REQUEUE = """
WITH moved AS (
    DELETE FROM meshkit_outbox_parked WHERE $1::bigint[] IS NULL OR seq = ANY($1::bigint[])
    RETURNING seq, id, topic, payload, headers, key
)
INSERT INTO meshkit_outbox (id, topic, payload, headers, key)
SELECT id, topic, payload, headers, key FROM moved ORDER BY seq
"""
_DISCARD = """
DELETE FROM meshkit_outbox_parked WHERE $1::bigint[] IS NULL OR seq = ANY($1::bigint[])
"""
_INBOX = """
INSERT INTO meshkit_inbox (grp, id, seen) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING true
"""
# The claim's hold becomes idle_in_transaction_session_timeout, an integer
# of milliseconds (at most 2**31 - 1: 24.8 days).
_MAX_HOLD = (2**31 - 1) / 1000


class PostgresConnection(Protocol):
    """What the outbox and the inbox use of an asyncpg connection (a pool's connection too)."""

    def is_in_transaction(self) -> bool: ...

    async def execute(self, query: str, *args: Any) -> str: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...


def _asyncpg() -> Any:
    return _postgres.asyncpg("meshkit.bus.postgres")


def _missing_tables(where: str, error: Exception) -> UsageError:
    return UsageError(
        f"{where}: meshkit's tables are missing; run PostgresOutbox.SCHEMA first ({error})"
    )


@contextlib.contextmanager
def _translated(where: str) -> Iterator[None]:
    """asyncpg's and the network's errors as meshkit's, from the original: on the store's own."""
    asyncpg = _asyncpg()
    try:
        yield
    except asyncpg.UndefinedTableError as error:
        raise _missing_tables(where, error) from error
    except _postgres.faults(asyncpg) as error:
        raise EnvironmentFaultError(f"{where} failed: {type(error).__name__}: {error}") from error


@contextlib.contextmanager
def _in_callers_transaction(where: str) -> Iterator[None]:
    """Only meshkit's tables missing, and the connection lost, as meshkit's errors.

    This departs from translating every library error, on purpose. The
    statement runs in the caller's transaction, among the caller's own
    statements, and its other failures are that transaction's: a
    serialization failure or a deadlock (``TransactionRollbackError``),
    which the caller retries whole, a transaction an earlier statement
    already aborted (``InFailedSQLTransactionError``), a statement timeout
    the caller set. Code that handles those for its own statements must
    see them from ours unchanged, not as an outage.
    """
    asyncpg = _asyncpg()
    try:
        yield
    except asyncpg.UndefinedTableError as error:
        raise _missing_tables(where, error) from error
    except (
        asyncpg.PostgresConnectionError,  # SQLSTATE class 08, and the connection dropped
        asyncpg.AdminShutdownError,  # the server ended the session (57P01, 57P02)
        asyncpg.CrashShutdownError,
        OSError,
    ) as error:
        raise EnvironmentFaultError(f"{where} failed: {type(error).__name__}: {error}") from error


def _in_transaction(connection: PostgresConnection, what: str) -> None:
    if not connection.is_in_transaction():
        raise UsageError(
            f"{what} needs the caller's open transaction (async with connection.transaction()): "
            "outside one it would commit on its own, whatever becomes of the change"
        )


class PostgresOutbox:
    """An ``OutboxStore`` on the PostgreSQL database at ``dsn``, and ``record()`` to fill it.

    ``SCHEMA`` creates meshkit's tables (the outbox and the inbox) if they
    are missing; run it with the service's own schema, or ``await
    store.ensure_schema()``. The tables are found on the connection's
    ``search_path``. ``timeout`` (at most an hour) bounds connecting and
    each statement. The store connects on first use, and again after any
    error. ``clock`` stamps parked events (wall time).
    """

    SCHEMA: ClassVar[str] = _SCHEMA

    def __init__(self, dsn: str, *, timeout: float = 10.0, clock: Clock | None = None) -> None:
        self.where = _where(dsn)  # named in errors, without the password
        self._dsn = dsn
        self._timeout = check_timeout("timeout", timeout)
        self._clock = clock or SystemClock()
        self._asyncpg = _asyncpg()
        self._connection: Any = None
        self._claim: Any = None  # the open transaction that holds the claim

    @property
    def timeout(self) -> float:
        return self._timeout

    @staticmethod
    async def record(
        connection: PostgresConnection,
        topic: str,
        payload: object,
        *,
        headers: Mapping[str, str] | None = None,
        key: str | None = None,
        message_id: str | None = None,
    ) -> str:
        """Record an event in the caller's open transaction on ``connection``: its message id.

        Checked as ``outgoing()`` checks it (``MessageRefusedError`` naming
        the bad field, before anything is written), with a random id unless
        ``message_id`` is given; published after, and only if, the
        transaction commits. Raises ``UsageError`` outside a transaction or
        without the tables, ``EnvironmentFaultError`` if the connection is
        lost; the transaction's own failures (a serialization failure, a
        deadlock, an aborted transaction) are asyncpg's, unchanged.
        """
        _in_transaction(connection, "PostgresOutbox.record()")
        row = outbox_row(topic, payload, headers=headers, key=key, message_id=message_id)
        with _in_callers_transaction("recording an event"):
            await connection.execute(_INSERT, *row)
        return row[0]

    async def ensure_schema(self) -> None:
        """Create meshkit's tables if they are missing (``SCHEMA``)."""
        with self._errors():
            connection = await self._connect()
            async with connection.transaction():
                await connection.execute(_SCHEMA_LOCK)
                await connection.execute(_SCHEMA)

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        check_limit(limit)
        if check.seconds("hold", hold) > _MAX_HOLD:
            raise ConfigError("hold", f"must be at most {_MAX_HOLD:.0f} seconds, got {hold!r}")
        idle = str(math.ceil(hold * 1000))  # milliseconds
        if self._claim is not None:
            raise UsageError("claim() while holding a claim: end it with sent() or release()")
        with self._errors():
            connection = await self._connect()
            transaction = connection.transaction()
            await transaction.start()
            self._claim = transaction
            locked = await connection.fetchval(_CLAIM, idle)
            rows = await connection.fetch(_OLDEST, limit) if locked else []
            if not rows:
                self._claim = None
                await transaction.rollback()
                return []
        return [outbox_entry(*row) for row in rows]

    async def sent(self, entries: Sequence[OutboxEntry]) -> None:
        transaction, self._claim = self._claim, None
        if transaction is None:
            raise UsageError("sent() without a claim: claim() the entries first")
        with self._errors():
            await self._connection.execute(
                "DELETE FROM meshkit_outbox WHERE seq = ANY($1::bigint[])",
                [entry.seq for entry in entries],
            )
            await transaction.commit()

    async def park(self, entry: OutboxEntry, error: str) -> None:
        if self._claim is None:
            raise UsageError("park() without a claim: claim() the entry first")
        with self._errors():
            await self._connection.execute(_PARK, entry.seq, clip_error(error), self._clock.time())

    async def parked(self, *, limit: int = 100) -> list[ParkedEntry]:
        check_limit(limit)
        with self._errors():
            connection = await self._connect()
            rows = await connection.fetch(_PARKED, limit)
        return [parked_entry(*row) for row in rows]

    async def requeue(self, seqs: Sequence[int] | None = None) -> int:
        if self._claim is not None:
            raise UsageError("requeue() while holding a claim: sent() or release() it first")
        return await self._moved(_REQUEUE, check_seqs(seqs))

    async def discard(self, seqs: Sequence[int] | None = None) -> int:
        if self._claim is not None:
            raise UsageError("discard() while holding a claim: sent() or release() it first")
        return await self._moved(_DISCARD, check_seqs(seqs))

    async def _moved(self, statement: str, seqs: list[int] | None) -> int:
        with self._errors():
            connection = await self._connect()
            status = await connection.execute(statement, seqs)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 n" or "DELETE n"

    async def release(self) -> None:
        transaction, self._claim = self._claim, None
        if transaction is not None:
            with self._errors():
                await transaction.rollback()

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        self._claim = None
        if connection is not None:
            # Closing ends the claim's transaction too. A connection that
            # cannot close cleanly (broken, or past the timeout) is aborted by
            # close() itself: nothing is left to do about it.
            with contextlib.suppress(Exception):
                await connection.close(timeout=self._timeout)

    # -- the connection ----------------------------------------------------------

    async def _connect(self) -> Any:
        if self._connection is None:
            self._connection = await self._asyncpg.connect(
                self._dsn, timeout=self._timeout, command_timeout=self._timeout
            )
        return self._connection

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Translated errors; after any, the connection (and any claim on it) is dropped."""
        try:
            with _translated(self.where):
                yield
        except BaseException:
            connection, self._connection = self._connection, None
            self._claim = None
            if connection is not None:
                connection.terminate()  # in a state nobody can trust: start afresh
            raise


class PostgresInbox(InboxRetention):
    """The ids a consumer group has handled, kept in the group's own transactions.

    In a handler, inside the transaction that makes the handler's change::

        async with connection.transaction():
            if await inbox.record(connection, message.id):
                ...  # the change: done once per message id

    An id is remembered for ``retention`` seconds (default 7 days), then
    forgotten (``prune``, which ``record`` also runs once an hour, and
    again at the next record after one that failed). Two deliveries of one
    message handled at once are safe: the second insert waits for the
    first transaction, then finds the id (or, if the first rolled back,
    records it). The tables are ``PostgresOutbox.SCHEMA``'s.
    """

    async def record(self, connection: PostgresConnection, message_id: str) -> bool:
        """True the first time ``message_id`` comes for this group (now recorded), else False.

        The record commits and rolls back with the caller's transaction.
        Raises ``UsageError`` outside a transaction or without the tables,
        ``EnvironmentFaultError`` if the connection is lost; the
        transaction's own failures are asyncpg's, unchanged (as ``record``'s
        of ``PostgresOutbox``).
        """
        _in_transaction(connection, "PostgresInbox.record()")
        check_message_id(message_id)
        if self._prune_due():
            await self.prune(connection)
        with _in_callers_transaction("the inbox"):
            new = await connection.fetchval(_INBOX, self.group, message_id, self._stamp())
        return new is not None

    async def prune(self, connection: PostgresConnection) -> int:
        """Forget this group's ids older than the retention: how many were forgotten."""
        with _in_callers_transaction("the inbox"):
            status = await connection.execute(
                "DELETE FROM meshkit_inbox WHERE grp = $1 AND seen < $2",
                self.group,
                self._cutoff(),
            )
        self._pruned()
        return int(status.rsplit(" ", 1)[-1])  # "DELETE 12"
