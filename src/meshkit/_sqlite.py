"""SQLite files kept by meshkit's own stores: opened one way, written in one kind of transaction.

WAL mode (readers never wait for the writer), a 5 s busy timeout, and the
durability each store asks for: ``NORMAL`` survives the process being
killed (what a registry needs), ``FULL`` survives the machine losing power
too. Errors become ``EnvironmentFaultError`` naming the store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from meshkit.errors import EnvironmentFaultError

__all__ = ["open_store", "transaction"]

T = TypeVar("T")


def open_store(
    path: Path, schema: str, *, what: str, synchronous: Literal["NORMAL", "FULL"]
) -> sqlite3.Connection:
    """The SQLite file at ``path`` (created, with its directory, if missing) with ``schema``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(schema)
    except (sqlite3.Error, OSError) as error:
        raise EnvironmentFaultError(f"cannot open {what} at {path}: {error}") from error
    return db


def transaction(
    db: sqlite3.Connection, write: Callable[[sqlite3.Connection], T], *, what: str
) -> T:
    """``write(db)`` in one immediate transaction: all of it, or (on any exception) none."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            result = write(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as error:
        raise EnvironmentFaultError(f"cannot write {what}: {error}") from error
    return result
