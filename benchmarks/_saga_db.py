"""The databases the saga benchmark runs on, and the figures each side reports.

Every run gets a database of its own, removed after it: a SQLite file in a
temporary directory, or a uniquely named PostgreSQL database on the
machine's server (127.0.0.1:5432, user ``postgres``, trust authentication),
dropped after. Both sides, DBOS and meshkit, run on databases made here, so
they store on the same disk and the same server.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import msgspec

from benchmarks._load import pinned

__all__ = [
    "KINDS",
    "POSTGRES",
    "Database",
    "Kind",
    "Latency",
    "Throughput",
    "database",
    "postgres_answers",
    "run_child",
]

Kind = Literal["sqlite", "postgres"]
KINDS: tuple[Kind, ...] = ("sqlite", "postgres")
# The machine's PostgreSQL; the benchmark creates and drops databases on it.
POSTGRES = "postgresql://postgres@127.0.0.1:5432"


@dataclass(frozen=True, slots=True)
class Database:
    """Where one run stores: ``url`` is SQLAlchemy's form (``sqlite:///PATH`` or a DSN)."""

    kind: Kind
    url: str

    @property
    def path(self) -> Path:
        """The SQLite file; raises ValueError for PostgreSQL."""
        if self.kind != "sqlite":
            raise ValueError(f"a {self.kind} database has no file")
        return Path(self.url.removeprefix("sqlite:///"))


class Throughput(msgspec.Struct, frozen=True):
    """Many in flight for a while: completed a second, and the CPU time of each."""

    count: int
    seconds: float
    rate: float
    # The measuring process's own CPU time (all its threads), per completion;
    # a PostgreSQL server's work is not in it.
    cpu_ms: float


class Latency(msgspec.Struct, frozen=True):
    """Started at a steady rate: start-to-end times, in ms."""

    count: int
    p50: float
    p99: float
    # Completed a second, from the first start to the last end: below the
    # rate asked for, the side fell behind and its times include the backlog.
    rate: float
    cpu_ms: float


@contextlib.contextmanager
def database(kind: Kind) -> Iterator[Database]:
    """A new empty database of ``kind``; removed (dropped) when the block ends."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="meshkit-saga-bench-") as directory:
            yield Database("sqlite", f"sqlite:///{Path(directory) / 'saga.sqlite3'}")
        return
    name = f"meshkit_saga_bench_{secrets.token_hex(6)}"
    _admin(f'CREATE DATABASE "{name}"')
    try:
        yield Database("postgres", f"{POSTGRES}/{name}")
    finally:
        # FORCE (PostgreSQL 13+): a child killed mid-run may leave sessions behind.
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_answers() -> bool:
    """Whether the machine's PostgreSQL takes connections."""
    try:
        _admin("SELECT 1")
    except OSError:
        return False
    return True


def _admin(statement: str) -> None:
    """One statement on the server's ``postgres`` database, outside a transaction."""
    # The postgres extra (untyped); imported here so a SQLite-only run needs none.
    import asyncpg  # type: ignore[import-untyped]
    import uvloop

    async def run() -> None:
        connection = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    uvloop.run(run())


Result = TypeVar("Result", bound=msgspec.Struct)
_ROOT = Path(__file__).resolve().parent.parent


def run_child(module: str, argv: list[str], into: type[Result], *, within: float) -> Result:
    """One run of ``python -m module argv`` on core 0: the result it printed last, as JSON."""
    command = pinned([sys.executable, "-m", module, *argv], 0)
    try:
        done = subprocess.run(
            command, cwd=_ROOT, capture_output=True, text=True, timeout=within, check=False
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{module} did not finish within {within:g} s: {argv}") from None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-20:])
        raise RuntimeError(f"{module} exited with {done.returncode}: {argv}\n{tail}")
    return msgspec.json.decode(done.stdout.splitlines()[-1], type=into)
