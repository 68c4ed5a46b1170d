"""The outbox conformance suite on PostgreSQL, in a database of its own per test, dropped after."""

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from meshkit._clock import Clock
from meshkit.bus import INBOX_RETENTION, OutboxStore
from meshkit.bus.postgres import PostgresInbox, PostgresOutbox
from meshkit.errors import ConfigError, EnvironmentFaultError, MessageRefusedError, UsageError
from meshkit.testing.conformance import Event, OutboxConformance
from meshkit.testing.servers import free_port


class PostgresDatabase:
    """A service's database, reached through one asyncpg connection of the service's."""

    def __init__(self, dsn: str, connection: Any) -> None:
        self.dsn = dsn
        self.connection = connection

    def store(self) -> OutboxStore:
        return PostgresOutbox(self.dsn)

    @contextlib.asynccontextmanager
    async def transaction(self, *, commit: bool = True) -> AsyncIterator[Any]:
        """One transaction, committed at the end (or rolled back), rolled back on an error."""
        transaction = self.connection.transaction()
        await transaction.start()
        try:
            yield self.connection
        except BaseException:
            await transaction.rollback()
            raise
        await (transaction.commit() if commit else transaction.rollback())

    async def record(self, events: Sequence[Event], *, commit: bool = True) -> list[str]:
        async with self.transaction(commit=commit) as connection:
            return [
                await PostgresOutbox.record(
                    connection,
                    e.topic,
                    e.payload,
                    headers=e.headers,
                    key=e.key,
                    message_id=e.message_id,
                )
                for e in events
            ]

    async def receive(
        self,
        group: str,
        message_id: str,
        *,
        clock: Clock | None = None,
        retention: float = INBOX_RETENTION,
        commit: bool = True,
    ) -> bool:
        inbox = PostgresInbox(group, retention=retention, clock=clock)
        async with self.transaction(commit=commit) as connection:
            return await inbox.record(connection, message_id)

    async def prune(self, group: str, *, clock: Clock, retention: float) -> int:
        inbox = PostgresInbox(group, retention=retention, clock=clock)
        async with self.transaction() as connection:
            return await inbox.prune(connection)


@pytest.fixture
async def connection(empty_database: str) -> AsyncIterator[Any]:
    """The service's own connection to a database with meshkit's tables."""
    asyncpg = importlib.import_module("asyncpg")
    store = PostgresOutbox(empty_database)
    await store.ensure_schema()
    await store.aclose()
    connection = await asyncpg.connect(empty_database)
    yield connection
    await connection.close()


class TestPostgresOutbox(OutboxConformance):
    @pytest.fixture
    def database(self, empty_database: str, connection: Any) -> PostgresDatabase:
        return PostgresDatabase(empty_database, connection)


# -- what the suite cannot say for every engine ----------------------------------------


async def test_recording_outside_a_transaction_is_refused(connection: Any) -> None:
    """Outside a transaction the event would commit alone: UsageError, nothing written."""
    with pytest.raises(UsageError, match="transaction"):
        await PostgresOutbox.record(connection, "order.created", {})
    with pytest.raises(UsageError, match="transaction"):
        await PostgresInbox("billing").record(connection, "m-1")
    assert await connection.fetchval("SELECT count(*) FROM meshkit_outbox") == 0
    assert await connection.fetchval("SELECT count(*) FROM meshkit_inbox") == 0


async def test_a_bad_event_raises_before_anything_is_written(connection: Any) -> None:
    """MessageRefusedError names the field, and the transaction can go on without the event."""
    async with connection.transaction():
        await PostgresOutbox.record(connection, "order.created", {"n": 1})
        with pytest.raises(MessageRefusedError) as caught:
            await PostgresOutbox.record(connection, "order.created", {}, headers={"a b": "x"})
        assert caught.value.key == "headers"
    assert await connection.fetchval("SELECT count(*) FROM meshkit_outbox") == 1


async def test_missing_tables_are_a_usage_error_naming_the_schema(empty_database: str) -> None:
    """Without PostgresOutbox.SCHEMA run, recording and claiming say what to do."""
    asyncpg = importlib.import_module("asyncpg")
    connection = await asyncpg.connect(empty_database)
    store = PostgresOutbox(empty_database)
    try:
        async with connection.transaction():
            with pytest.raises(UsageError, match=r"PostgresOutbox\.SCHEMA"):
                await PostgresOutbox.record(connection, "order.created", {})
        with pytest.raises(UsageError, match=r"PostgresOutbox\.SCHEMA"):
            await store.claim(10, hold=5.0)
        await connection.execute(PostgresOutbox.SCHEMA)
        await connection.execute(PostgresOutbox.SCHEMA)  # again: nothing changes
        assert await store.claim(10, hold=5.0) == []
    finally:
        await store.aclose()
        await connection.close()


async def test_an_unreachable_server_is_an_environment_fault_naming_it() -> None:
    """Nothing listening: claim() raises EnvironmentFaultError with the address, no password."""
    port = free_port()
    store = PostgresOutbox(f"postgresql://postgres:secret@127.0.0.1:{port}/x", timeout=2.0)
    try:
        with pytest.raises(EnvironmentFaultError, match=f"127.0.0.1:{port}") as caught:
            await store.claim(10, hold=5.0)
        assert "secret" not in str(caught.value)
    finally:
        await store.aclose()


async def test_the_callers_aborted_transaction_reaches_it_unchanged(connection: Any) -> None:
    """After a failed statement of the caller's, record() and the inbox raise asyncpg's
    InFailedSQLTransactionError, as the caller's own next statement would: not an outage."""
    asyncpg = importlib.import_module("asyncpg")
    transaction = connection.transaction()
    await transaction.start()
    try:
        with pytest.raises(asyncpg.DivisionByZeroError):
            await connection.execute("SELECT 1 / 0")
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await PostgresOutbox.record(connection, "order.created", {})
        with pytest.raises(asyncpg.InFailedSQLTransactionError):
            await PostgresInbox("billing").record(connection, "m-1")
    finally:
        await transaction.rollback()


async def test_a_deadlock_between_handlers_reaches_the_caller_unchanged(
    empty_database: str, connection: Any
) -> None:
    """Two handlers recording two ids in opposite orders: one gets asyncpg's
    DeadlockDetectedError (a TransactionRollbackError, to retry), not EnvironmentFaultError."""
    asyncpg = importlib.import_module("asyncpg")
    other = await asyncpg.connect(empty_database)
    inbox = PostgresInbox("billing")
    try:
        for handler in (connection, other):
            await handler.execute("SET deadlock_timeout = '50ms'")
        first, second = connection.transaction(), other.transaction()
        await first.start()
        await second.start()
        assert await inbox.record(connection, "a")
        assert await inbox.record(other, "b")
        outcomes = await asyncio.wait_for(
            asyncio.gather(
                inbox.record(connection, "b"), inbox.record(other, "a"), return_exceptions=True
            ),
            10,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1
        assert isinstance(errors[0], asyncpg.DeadlockDetectedError)
        assert isinstance(errors[0], asyncpg.TransactionRollbackError)
        await first.rollback()
        await second.rollback()
    finally:
        await other.close()


async def test_a_connection_lost_mid_record_is_an_environment_fault(
    empty_database: str, connection: Any
) -> None:
    """The server ends the caller's session while record() waits: EnvironmentFaultError."""
    asyncpg = importlib.import_module("asyncpg")
    doomed = await asyncpg.connect(empty_database)
    blocker = connection.transaction()
    await blocker.start()
    try:
        await connection.execute("LOCK TABLE meshkit_outbox IN ACCESS EXCLUSIVE MODE")
        pid = await doomed.fetchval("SELECT pg_backend_pid()")
        transaction = doomed.transaction()
        await transaction.start()
        recording = asyncio.create_task(PostgresOutbox.record(doomed, "order.created", {}))
        waiting = "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1"
        async with asyncio.timeout(10):
            while not await connection.fetchval(waiting, pid):
                await asyncio.wait({recording}, timeout=0.01)  # polls, or ends early on an error
        assert await connection.fetchval("SELECT pg_terminate_backend($1)", pid)
        with pytest.raises(EnvironmentFaultError, match="recording an event"):
            await asyncio.wait_for(recording, 10)
    finally:
        await blocker.rollback()
        doomed.terminate()


def test_a_dsn_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        PostgresOutbox("mysql://127.0.0.1/x")
