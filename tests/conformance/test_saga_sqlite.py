"""The saga store conformance suite on a service's SQLite file."""

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshkit.saga import SagaStore, SqliteSagaStore
from meshkit.testing.conformance import SagaStoreConformance

_TABLE = "CREATE TABLE saga_conformance_rows (value TEXT PRIMARY KEY)"


class SqliteDatabase:
    """The service's database file: local work is a function of the store's connection."""

    sql_error = sqlite3.OperationalError

    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self) -> SagaStore:
        return SqliteSagaStore(self.path)

    def unreachable(self) -> SagaStore:
        blocker = self.path.parent / "a-file"
        blocker.write_text("not a directory")
        return SqliteSagaStore(blocker / "log.sqlite3", timeout=1.0)

    def work(
        self, value: str | None, then: Callable[[], Any] = lambda: None
    ) -> Callable[[sqlite3.Connection], Any]:
        def work(db: sqlite3.Connection) -> Any:
            if value is not None:
                db.execute("INSERT INTO saga_conformance_rows (value) VALUES (?)", (value,))
            return then()

        return work

    def broken(self) -> Callable[[sqlite3.Connection], Any]:
        def work(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO saga_conformance_missing (value) VALUES ('x')")

        return work

    async def rows(self) -> list[str]:
        def read() -> list[str]:
            db = sqlite3.connect(self.path)
            try:
                return sorted(r[0] for r in db.execute("SELECT value FROM saga_conformance_rows"))
            finally:
                db.close()

        return await asyncio.to_thread(read)


class TestSqliteSagaStore(SagaStoreConformance):
    @pytest.fixture
    def database(self, tmp_path: Path) -> SqliteDatabase:
        path = tmp_path / "orders.sqlite3"
        db = sqlite3.connect(path)
        try:
            db.execute(_TABLE)
        finally:
            db.close()
        return SqliteDatabase(path)
