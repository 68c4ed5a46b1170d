"""The outbox conformance suite on a service's SQLite file, as the shop's services keep theirs."""

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from meshkit._clock import Clock
from meshkit.bus import INBOX_RETENTION, OutboxStore
from meshkit.bus._outbox_sqlite import SqliteInbox, SqliteOutbox
from meshkit.testing.conformance import Event, OutboxConformance


class SqliteDatabase:
    """A service's database file: one ``BEGIN IMMEDIATE`` transaction per call, as db.py does."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def store(self) -> OutboxStore:
        return SqliteOutbox(self.path)

    @contextlib.contextmanager
    def transaction(self, *, commit: bool = True) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT" if commit else "ROLLBACK")
        finally:
            db.close()

    async def record(self, events: Sequence[Event], *, commit: bool = True) -> list[str]:
        def run() -> list[str]:
            with self.transaction(commit=commit) as db:
                return [
                    SqliteOutbox.record(
                        db,
                        e.topic,
                        e.payload,
                        headers=e.headers,
                        key=e.key,
                        message_id=e.message_id,
                    )
                    for e in events
                ]

        return await asyncio.to_thread(run)

    async def receive(
        self,
        group: str,
        message_id: str,
        *,
        clock: Clock | None = None,
        retention: float = INBOX_RETENTION,
        commit: bool = True,
    ) -> bool:
        inbox = SqliteInbox(group, retention=retention, clock=clock)

        def run() -> bool:
            with self.transaction(commit=commit) as db:
                return inbox.record(db, message_id)

        return await asyncio.to_thread(run)

    async def prune(self, group: str, *, clock: Clock, retention: float) -> int:
        inbox = SqliteInbox(group, retention=retention, clock=clock)

        def run() -> int:
            with self.transaction() as db:
                return inbox.prune(db)

        return await asyncio.to_thread(run)


class TestSqliteOutbox(OutboxConformance):
    @pytest.fixture
    async def database(self, tmp_path: Path) -> SqliteDatabase:
        path = tmp_path / "orders.sqlite3"
        store = SqliteOutbox(path)
        await store.ensure_schema()
        await store.aclose()
        return SqliteDatabase(path)
