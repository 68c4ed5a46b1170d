"""The SQLite outbox and inbox's own promises: transactions required, checks first, the claim."""

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshkit import SystemClock
from meshkit.bus._outbox_sqlite import SqliteInbox, SqliteOutbox
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    InvalidArgumentError,
    MessageRefusedError,
    UsageError,
)
from meshkit.testing import FakeClock

TOPIC = "order.created"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A service's file with its own table and meshkit's, created as db.py creates them."""
    path = tmp_path / "orders.sqlite3"
    schema = "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY);" + SqliteOutbox.SCHEMA
    for _ in range(2):  # every replica runs it at startup: the second run changes nothing
        setup = sqlite3.connect(path)
        setup.executescript(schema)
        setup.close()
    return path


@pytest.fixture
def db(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection as db.py's transaction() opens it, not yet in a transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    yield db
    db.close()


def count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608 (a test's own table names)


def commit(db: sqlite3.Connection, *payloads: object) -> list[str]:
    db.execute("BEGIN IMMEDIATE")
    ids = [SqliteOutbox.record(db, TOPIC, p) for p in payloads]
    db.execute("COMMIT")
    return ids


def test_recording_outside_a_transaction_is_refused(db: sqlite3.Connection) -> None:
    """In autocommit the event would commit alone: UsageError, and nothing is written."""
    with pytest.raises(UsageError, match="BEGIN IMMEDIATE"):
        SqliteOutbox.record(db, TOPIC, {})
    with pytest.raises(UsageError, match="BEGIN IMMEDIATE"):
        SqliteInbox("billing").record(db, "m-1")
    assert count(db, "meshkit_outbox") == count(db, "meshkit_inbox") == 0


def test_a_bad_event_raises_before_anything_is_written(db: sqlite3.Connection) -> None:
    """MessageRefusedError names the field; the transaction holds only the good event."""
    db.execute("BEGIN IMMEDIATE")
    SqliteOutbox.record(db, TOPIC, {"n": 1})
    with pytest.raises(MessageRefusedError) as caught:
        SqliteOutbox.record(db, TOPIC, {}, message_id="has space")
    assert caught.value.key == "message_id"
    with pytest.raises(MessageRefusedError) as caught:
        SqliteOutbox.record(db, TOPIC, object())  # not JSON
    assert caught.value.key == "payload"
    assert count(db, "meshkit_outbox") == 1
    db.execute("COMMIT")


async def test_missing_tables_are_a_usage_error_naming_the_schema(tmp_path: Path) -> None:
    """A file without SqliteOutbox.SCHEMA run: recording, claiming and the inbox say so."""
    db = sqlite3.connect(tmp_path / "bare.sqlite3", isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    with pytest.raises(UsageError, match=r"SqliteOutbox\.SCHEMA"):
        SqliteOutbox.record(db, TOPIC, {})
    with pytest.raises(UsageError, match=r"SqliteOutbox\.SCHEMA"):
        SqliteInbox("billing").record(db, "m-1")
    db.execute("ROLLBACK")
    db.close()
    store = SqliteOutbox(tmp_path / "bare.sqlite3")
    try:
        with pytest.raises(UsageError, match=r"SqliteOutbox\.SCHEMA"):
            await store.claim(10, hold=5)
    finally:
        await store.aclose()


async def test_a_claim_lapses_after_its_hold_on_the_store_clock(
    path: Path, db: sqlite3.Connection
) -> None:
    """Held for 10 s: others get nothing at 9 s, the events at 11 s; the late holder's
    removal then leaves the new holder's claim in place."""
    clock = FakeClock(start=0.0)
    first, second, third = (SqliteOutbox(path, clock=clock) for _ in range(3))
    ids = commit(db, "a", "b")
    try:
        assert [e.message.id for e in await first.claim(10, hold=10)] == ids
        clock.advance(9)
        assert await second.claim(10, hold=10) == []
        clock.advance(2)
        taken = await second.claim(10, hold=10)
        assert [e.message.id for e in taken] == ids
        await first.sent(taken)  # the hung relay wakes up, and removes what it published
        commit(db, "c")
        assert await third.claim(10, hold=10) == []  # `second` still holds the claim
    finally:
        for store in (first, second, third):
            await store.aclose()


async def test_a_claim_that_waited_for_the_lock_is_held_for_its_whole_hold(
    path: Path, db: sqlite3.Connection
) -> None:
    """The hold counts from when the lock was taken: a claim that waited 8 s for a writer
    still excludes others 9 s after it was taken (17 s after it was asked for)."""
    clock = FakeClock(start=0.0)
    first, second = SqliteOutbox(path, clock=clock), SqliteOutbox(path, clock=clock)
    ids = commit(db, "a")
    try:
        db.execute("BEGIN IMMEDIATE")  # a service's writer holds the lock
        claiming = asyncio.create_task(first.claim(10, hold=10))
        await SystemClock().sleep(0)  # the claim is asked for, and waits for the lock
        clock.advance(8)
        db.execute("ROLLBACK")
        assert [e.message.id for e in await claiming] == ids
        clock.advance(9)
        assert await second.claim(10, hold=10) == []
    finally:
        await first.aclose()
        await second.aclose()


async def test_closing_after_a_failed_release_does_not_wait_for_the_lock_again(
    path: Path, db: sqlite3.Connection
) -> None:
    """A release that timed out on a locked file is not tried again by aclose(): the claim
    lapses on its own, and closing a relay takes one timeout, not two."""
    commit(db, "a")
    store, clock = SqliteOutbox(path, timeout=1.0), SystemClock()
    try:
        assert len(await store.claim(10, hold=60)) == 1
        db.execute("BEGIN IMMEDIATE")
        with pytest.raises(EnvironmentFaultError, match="locked"):
            await store.release()
        started = clock.monotonic()
        await store.aclose()
        assert clock.monotonic() - started < 0.5
    finally:
        if db.in_transaction:
            db.execute("ROLLBACK")
        await store.aclose()


async def test_closing_a_store_releases_its_claim(path: Path, db: sqlite3.Connection) -> None:
    """Another relay need not wait for the hold of one that shut down cleanly."""
    ids = commit(db, "a")
    first, second = SqliteOutbox(path), SqliteOutbox(path)
    try:
        assert len(await first.claim(10, hold=60)) == 1
        await first.aclose()
        assert [e.message.id for e in await second.claim(10, hold=60)] == ids
    finally:
        await second.aclose()
    await first.aclose()  # again: nothing to do
    with pytest.raises(UsageError, match="closed"):
        await first.claim(10, hold=60)


async def test_sequence_numbers_are_not_reused_after_the_outbox_empties(
    path: Path, db: sqlite3.Connection
) -> None:
    """So a relay whose claim lapsed can only ever remove events that were published."""
    store = SqliteOutbox(path)
    try:
        commit(db, "a", "b")
        claimed = await store.claim(10, hold=5)
        await store.sent(claimed)
        commit(db, "c")
        [again] = await store.claim(10, hold=5)
        assert again.seq > max(e.seq for e in claimed)
        await store.release()
    finally:
        await store.aclose()


async def test_a_locked_database_is_an_environment_fault_and_the_store_recovers(
    path: Path, db: sqlite3.Connection
) -> None:
    """A writer holding the lock past the timeout: EnvironmentFaultError naming the file."""
    commit(db, "a")
    store = SqliteOutbox(path, timeout=0.05)
    try:
        db.execute("BEGIN IMMEDIATE")
        with pytest.raises(EnvironmentFaultError, match="locked") as caught:
            await store.claim(10, hold=5)
        assert str(path) in str(caught.value)
        db.execute("ROLLBACK")
        assert len(await store.claim(10, hold=5)) == 1
    finally:
        await store.aclose()


def test_the_inbox_prunes_on_its_own_at_most_once_an_hour(db: sqlite3.Connection) -> None:
    """record() forgets ids past the retention at its first call and an hour after, not between."""
    clock = FakeClock(start=0.0)
    inbox = SqliteInbox("billing", retention=100, clock=clock)

    def record(message_id: str) -> bool:
        db.execute("BEGIN IMMEDIATE")
        try:
            return inbox.record(db, message_id)
        finally:
            db.execute("COMMIT")

    assert record("a")
    clock.advance(200)  # "a" is past the retention, but no prune is due
    assert not record("a")
    clock.advance(3600)
    assert record("b")  # the hourly prune ran first: "a" is forgotten
    assert record("a")
    assert count(db, "meshkit_inbox") == 2


def test_a_prune_that_failed_is_tried_again_at_the_next_record(tmp_path: Path) -> None:
    """A failed prune does not count as done: the next record prunes, not an hour later."""
    clock = FakeClock(start=0.0)
    inbox = SqliteInbox("billing", retention=100, clock=clock)
    db = sqlite3.connect(tmp_path / "late.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        with pytest.raises(UsageError, match=r"SqliteOutbox\.SCHEMA"):
            inbox.record(db, "a")  # no tables yet: the prune, first, fails
        db.execute("ROLLBACK")
        db.executescript(SqliteOutbox.SCHEMA)
        db.execute("INSERT INTO meshkit_inbox VALUES ('billing', 'old', ?)", (clock.time() - 200,))
        db.execute("BEGIN IMMEDIATE")
        assert inbox.record(db, "b")
        db.execute("COMMIT")
        assert [row[0] for row in db.execute("SELECT id FROM meshkit_inbox")] == ["b"]
    finally:
        db.close()


def test_recording_on_something_not_a_connection_is_a_usage_error_naming_it() -> None:
    """A path, or an asyncpg connection, passed as ``db``: InvalidArgumentError (a UsageError,
    not configuration) on db."""
    with pytest.raises(UsageError) as caught:
        SqliteOutbox.record("orders.sqlite3", TOPIC, {})  # type: ignore[arg-type]
    assert isinstance(caught.value, InvalidArgumentError)
    assert not isinstance(caught.value, ConfigError)
    assert caught.value.key == "db"
    assert "sqlite3.Connection" in str(caught.value)
    with pytest.raises(InvalidArgumentError) as caught:
        SqliteInbox("billing").record(None, "m-1")  # type: ignore[arg-type]
    assert caught.value.key == "db"


@pytest.mark.parametrize("timeout", [0, 3601, float("nan")])
def test_a_bad_timeout_is_a_config_error(tmp_path: Path, timeout: float) -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteOutbox(tmp_path / "x.sqlite3", timeout=timeout)
    assert caught.value.key == "timeout"


def test_an_inbox_group_must_be_a_group_name() -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteInbox("Billing Team")
    assert caught.value.key == "group"
    with pytest.raises(ConfigError) as caught:
        SqliteInbox("billing", retention=0)
    assert caught.value.key == "retention"


def test_in_the_sqlite3_modules_default_mode_the_implicit_transaction_counts(
    path: Path,
) -> None:
    """With the default isolation level the INSERT opens the transaction the caller ends."""
    legacy = sqlite3.connect(path)  # isolation_level "": BEGIN before the first write
    try:
        SqliteOutbox.record(legacy, TOPIC, "rolled back")
        legacy.rollback()
        assert count(legacy, "meshkit_outbox") == 0
        SqliteOutbox.record(legacy, TOPIC, "committed")
        assert SqliteInbox("billing").record(legacy, "m-1")
        legacy.commit()
        assert count(legacy, "meshkit_outbox") == count(legacy, "meshkit_inbox") == 1
    finally:
        legacy.close()
