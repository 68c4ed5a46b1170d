"""A service's own SQLite database, in the data directory meshkit gives it.

Database per service: each service reads and writes only its own file, and
asks other services for their data over HTTP. Two replicas of a service
share its file; SQLite's WAL mode and a busy timeout let two processes on
one machine do that safely.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path


class Database:
    """``shop/<name>.sqlite3`` under ``$MESHKIT_DATA_DIR`` (or ``./.data/<name>``)."""

    def __init__(
        self, name: str, schema: str, seed: Callable[[sqlite3.Connection], None] | None = None
    ) -> None:
        directory = Path(os.environ.get("MESHKIT_DATA_DIR") or Path(".data") / name)
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}.sqlite3"
        setup = sqlite3.connect(self.path, timeout=10)
        try:
            # executescript commits whatever is open first, so it runs on its
            # own; CREATE ... IF NOT EXISTS makes it safe for every replica.
            setup.executescript(schema)
        finally:
            setup.close()
        if seed is not None:
            with self.transaction() as db:
                seed(db)  # written to be idempotent: every replica runs it

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
