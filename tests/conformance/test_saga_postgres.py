"""The saga store conformance suite on PostgreSQL, in a database of its own per test."""

import asyncio
import importlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from meshkit.errors import ConfigError, EnvironmentFaultError
from meshkit.saga import SagaStore
from meshkit.saga.postgres import PostgresSagaStore
from meshkit.testing._saga import run
from meshkit.testing.conformance import SagaStoreConformance
from meshkit.testing.servers import free_port

_TABLE = "CREATE TABLE saga_conformance_rows (value text PRIMARY KEY)"


class PostgresDatabase:
    """The service's database: local work is a coroutine function of the store's connection."""

    def __init__(self, dsn: str, connection: Any) -> None:
        self.dsn = dsn
        self.connection = connection

    @property
    def sql_error(self) -> type[BaseException]:
        error: type[BaseException] = importlib.import_module("asyncpg").UndefinedTableError
        return error

    def store(self) -> SagaStore:
        return PostgresSagaStore(self.dsn)

    def unreachable(self) -> SagaStore:
        return PostgresSagaStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=2.0)

    def work(
        self, value: str | None, then: Callable[[], Any] = lambda: None
    ) -> Callable[[Any], Any]:
        async def work(connection: Any) -> Any:
            if value is not None:
                await connection.execute(
                    "INSERT INTO saga_conformance_rows (value) VALUES ($1)", value
                )
            return then()

        return work

    def broken(self) -> Callable[[Any], Any]:
        async def work(connection: Any) -> None:
            await connection.execute("INSERT INTO saga_conformance_missing (value) VALUES ('x')")

        return work

    async def rows(self) -> list[str]:
        rows = await self.connection.fetch("SELECT value FROM saga_conformance_rows ORDER BY 1")
        return [row[0] for row in rows]


@pytest.fixture
async def connection(empty_database: str) -> AsyncIterator[Any]:
    """The service's own connection, to a database with the suite's table (not meshkit's)."""
    asyncpg = importlib.import_module("asyncpg")
    connection = await asyncpg.connect(empty_database)
    await connection.execute(_TABLE)
    yield connection
    await connection.close()


class TestPostgresSagaStore(SagaStoreConformance):
    @pytest.fixture
    def database(self, empty_database: str, connection: Any) -> PostgresDatabase:
        return PostgresDatabase(empty_database, connection)


# -- what the suite cannot say for every engine ----------------------------------------


async def test_the_tables_are_made_once_and_can_be_made_ahead(
    empty_database: str, connection: Any
) -> None:
    """ensure_schema() creates them, again harmlessly; the SCHEMA script does the same."""
    store = PostgresSagaStore(empty_database)
    try:
        await store.ensure_schema()
        await store.ensure_schema()
        await connection.execute(PostgresSagaStore.SCHEMA)
        exists = "SELECT to_regclass('meshkit_saga_runs') IS NOT NULL"
        assert await connection.fetchval(exists)
        assert await store.purge(ended_before=1.0) == 0
    finally:
        await store.aclose()


async def test_a_lost_writer_connection_is_a_fault_then_the_store_reconnects(
    empty_database: str, connection: Any
) -> None:
    """The server ends the store's sessions: a write in flight may fail as EnvironmentFaultError,
    and the next one succeeds on a new connection."""
    store = PostgresSagaStore(empty_database)
    try:
        await store.create(run("r1"), owner="a", lease_until=100.0)
        assert await store.get("r1") is not None
        ended = await connection.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        assert ended >= 1
        outcomes = []
        async with asyncio.timeout(20):
            for n in range(2, 5):
                try:
                    await store.create(run(f"r{n}"), owner="a", lease_until=100.0)
                    outcomes.append("ok")
                except EnvironmentFaultError:
                    outcomes.append("fault")
        assert outcomes[1:] == ["ok", "ok"], outcomes
        assert await store.get("r4") is not None
    finally:
        await store.aclose()


async def test_an_unreachable_server_is_named_without_the_password() -> None:
    port = free_port()
    store = PostgresSagaStore(f"postgresql://postgres:secret@127.0.0.1:{port}/x", timeout=2.0)
    try:
        with pytest.raises(EnvironmentFaultError, match=f"127.0.0.1:{port}") as caught:
            await store.purge(ended_before=1.0)
        assert "secret" not in str(caught.value)
    finally:
        await store.aclose()


def test_a_dsn_that_is_not_postgresql_is_refused() -> None:
    with pytest.raises(ConfigError, match="postgresql://"):
        PostgresSagaStore("mysql://127.0.0.1/x")
