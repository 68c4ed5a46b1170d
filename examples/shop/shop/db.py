"""A service's own SQLite database, in the data directory meshkit gives it.

Database per service: each service reads and writes only its own file, and
asks other services for their data over HTTP. Two replicas of a service
share its file; SQLite's WAL mode and a busy timeout let two processes on
one machine do that safely.

Nothing here touches the disk at import: ``Database.lifespan``, the app's
FastAPI lifespan, creates the tables and the demo data when the app starts.
Calls are blocking: make them from sync (``def``) handlers, which FastAPI
runs in a thread pool, or through ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path


class Database:
    """``<name>.sqlite3`` in ``directory``: ``$MESHKIT_DATA_DIR``, else ``./.data/<name>``."""

    def __init__(
        self,
        name: str,
        schema: str,
        seed: Callable[[sqlite3.Connection], None] | None = None,
        *,
        directory: Path | None = None,
    ) -> None:
        directory = directory or Path(os.environ.get("MESHKIT_DATA_DIR") or Path(".data") / name)
        self.path = directory / f"{name}.sqlite3"
        self._schema = schema
        self._seed = seed
        self._lock = threading.Lock()
        self.opened = False

    def open(self) -> None:
        """Create the directory, the tables and the demo data where missing; later calls return.

        Every replica runs it: the schema is ``CREATE ... IF NOT EXISTS``
        and seeds are written to be idempotent.
        """
        with self._lock:
            if self.opened:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            setup = sqlite3.connect(self.path, timeout=10)
            try:
                # executescript commits whatever is open first, so it runs on its own.
                setup.executescript(self._schema)
            finally:
                setup.close()
            if self._seed is not None:
                with self.transaction() as db:
                    self._seed(db)
            self.opened = True

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: object) -> AsyncIterator[None]:
        """A FastAPI lifespan that opens the database, off the event loop."""
        await asyncio.to_thread(self.open)
        yield

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A connection inside one write transaction, committed on success."""
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def read(self, sql: str, parameters: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        db = sqlite3.connect(self.path, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, parameters).fetchall()
        finally:
            db.close()
