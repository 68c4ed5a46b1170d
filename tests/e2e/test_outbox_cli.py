"""`meshkit outbox` on a service's SQLite database: parked events as an operator handles them."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from meshkit.bus import SqliteOutbox


def meshkit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshkit", "outbox", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
async def database(tmp_path: Path) -> Path:
    """A service's database with three events recorded, the first two parked."""
    path = tmp_path / "orders.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SqliteOutbox.SCHEMA)
    db.execute("BEGIN IMMEDIATE")
    for n in range(3):
        SqliteOutbox.record(db, "order.created", {"n": n}, message_id=f"m{n}")
    db.execute("COMMIT")
    db.close()
    store = SqliteOutbox(path)
    try:
        entries = await store.claim(10, hold=30)
        await store.park(entries[0], "MessageRefusedError: payload: too large for the stream")
        await store.park(entries[1], "MessageRefusedError: payload: too large for the stream")
        await store.release()
    finally:
        await store.aclose()
    return path


def outbox_ids(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT id FROM meshkit_outbox ORDER BY seq")]
    finally:
        db.close()


async def test_parked_events_are_listed_requeued_and_discarded(database: Path) -> None:
    """The operator's walk: list, put one back after the outbox's events, drop the rest."""
    listed = meshkit("parked", "--sqlite", str(database), "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [(e["id"], e["payload"]) for e in entries] == [("m0", {"n": 0}), ("m1", {"n": 1})]
    assert entries[0]["error"] == "MessageRefusedError: payload: too large for the stream"
    table = meshkit("parked", "--sqlite", str(database))
    assert "too large for the stream" in table.stdout
    assert "m1" in table.stdout

    requeued = meshkit("requeue", str(entries[1]["seq"]), "--sqlite", str(database))
    assert requeued.stdout.strip() == "requeued 1 parked event", requeued.stderr
    assert outbox_ids(database) == ["m2", "m1"]
    discarded = meshkit("discard", "--all", "--sqlite", str(database))
    assert discarded.stdout.strip() == "discarded 1 parked event", discarded.stderr
    assert meshkit("parked", "--sqlite", str(database)).stdout.strip() == "no parked events"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["parked"], "--sqlite PATH or --postgres DSN"),
        (["parked", "--sqlite", "a.db", "--postgres", "postgresql://x"], "--sqlite PATH or"),
        (["parked", "--sqlite", "/nowhere/orders.sqlite3"], "no database file at"),
        (["requeue", "--sqlite", "DB"], "SEQs, or --all"),
        (["discard", "1", "--all", "--sqlite", "DB"], "SEQs, or --all"),
        (["requeue", "0", "--sqlite", "DB"], "seqs"),
    ],
)
async def test_bad_input_is_one_line_naming_the_problem(
    database: Path, args: list[str], says: str
) -> None:
    result = meshkit(*[str(database) if a == "DB" else a for a in args])
    assert result.returncode == 2
    assert says in result.stderr
    assert "Traceback" not in result.stderr
    assert outbox_ids(database) == ["m2"]  # nothing changed
