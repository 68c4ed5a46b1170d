"""The bus log: durable appends in group commits, the duplicate window, failures kept apart."""

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.bus import Outgoing
from meshkit.bus._log import BusLog
from meshkit.errors import EnvironmentFaultError, UsageError


def entry(topic: str = "order.created", message_id: str = "m1", *, given: bool = False) -> Outgoing:
    return Outgoing(topic=topic, id=message_id, payload=b"{}", given_id=given)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[BusLog]:
    opened = BusLog.open(tmp_path / "bus.db")
    yield opened
    await opened.aclose()


async def test_appends_get_rising_sequences_and_are_on_disk_when_acknowledged(
    tmp_path: Path, log: BusLog
) -> None:
    first = await log.append([entry(message_id="a"), entry(message_id="b")], now=10.0, window=120)
    second = await log.append([entry(message_id="c")], now=11.0, window=120)
    assert first == [(1, False), (2, False)]
    assert second == [(3, False)]
    # A connection of its own, as another process would see the file.
    rows = sqlite3.connect(tmp_path / "bus.db").execute("SELECT id FROM messages").fetchall()
    assert rows == [("a",), ("b",), ("c",)]


async def test_the_log_is_written_with_an_fsync_per_commit_and_no_checkpoint_inside_one(
    log: BusLog,
) -> None:
    assert log.read("PRAGMA journal_mode") == [("wal",)]
    assert log._writer is not None
    assert log._writer.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert log._writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)


async def test_writes_waiting_while_a_commit_runs_share_the_next_one(log: BusLog) -> None:
    writing = threading.Event()
    release = threading.Event()

    def slow(_db: sqlite3.Connection) -> None:
        writing.set()
        release.wait(10)

    first = log.write(slow)
    await asyncio.get_running_loop().run_in_executor(None, writing.wait, 10)
    appends = [log.append([entry(message_id=str(i))], now=1.0, window=1) for i in range(200)]
    release.set()
    await asyncio.gather(first, *appends)
    assert log.statistics.writes == 201
    assert log.statistics.commits == 2
    assert log.read("SELECT count(*) FROM messages") == [(200,)]


async def test_a_given_id_repeated_within_the_window_is_not_appended_again(log: BusLog) -> None:
    once = [entry(message_id="order-1", given=True)]
    assert await log.append(once, now=100.0, window=120) == [(1, False)]
    assert await log.append(once, now=219.0, window=120) == [(1, True)]
    # The same id on another topic is another message.
    other = await log.append([entry("order.paid", "order-1", given=True)], now=219.0, window=120)
    assert other == [(2, False)]
    # Past the window it is new again.
    assert await log.append(once, now=221.0, window=120) == [(3, False)]


async def test_a_repeat_within_one_batch_is_caught_too(log: BusLog) -> None:
    found = await log.append(
        [entry(message_id="x", given=True), entry(message_id="x", given=True)], now=1.0, window=120
    )
    assert found == [(1, False), (1, True)]


async def test_ids_the_broker_made_up_are_not_kept_for_the_window(log: BusLog) -> None:
    await log.append([entry(message_id="generated")], now=1.0, window=120)
    assert log.read("SELECT count(*) FROM ids") == [(0,)]


async def test_forgetting_ids_drops_only_those_out_of_the_window(log: BusLog) -> None:
    await log.append([entry(message_id="old", given=True)], now=1.0, window=120)
    await log.append([entry(message_id="new", given=True)], now=200.0, window=120)
    assert await log.forget_ids(before=80.0) == 1
    assert log.read("SELECT id FROM ids") == [("new",)]


async def test_an_op_that_raises_is_undone_alone(log: BusLog) -> None:
    def half_then_fail(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO messages VALUES (NULL, 't', 'half', NULL, x'', x'', 0)")
        raise UsageError("refused")

    failing = log.write(half_then_fail)
    fine = log.append([entry(message_id="kept")], now=1.0, window=1)
    with pytest.raises(UsageError, match="refused"):
        await failing
    await fine
    assert log.read("SELECT id FROM messages") == [("kept",)]


async def test_a_failed_commit_fails_its_writes_as_the_environments_fault(log: BusLog) -> None:
    def broken(db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO no_such_table VALUES (1)")

    with pytest.raises(EnvironmentFaultError, match="cannot write the bus log"):
        await log.write(broken)
    assert log.statistics.failed_commits == 1
    assert await log.append([entry()], now=1.0, window=1) == [(1, False)]


async def test_reopening_keeps_every_message_and_continues_the_sequence(tmp_path: Path) -> None:
    first = BusLog.open(tmp_path / "bus.db")
    await first.append([entry(message_id="a"), entry(message_id="b")], now=1.0, window=1)
    await first.aclose()
    second = BusLog.open(tmp_path / "bus.db")
    try:
        assert await second.append([entry(message_id="c")], now=2.0, window=1) == [(3, False)]
        assert second.read("SELECT id FROM messages ORDER BY sequence") == [("a",), ("b",), ("c",)]
    finally:
        await second.aclose()


async def test_a_closed_log_refuses_writes_and_reads(tmp_path: Path) -> None:
    log = BusLog.open(tmp_path / "bus.db")
    await log.aclose()
    await log.aclose()  # twice is fine
    with pytest.raises(UsageError, match="closed"):
        await log.append([entry()], now=1.0, window=1)
    with pytest.raises(UsageError, match="closed"):
        log.read("SELECT 1")


async def test_a_log_that_cannot_be_opened_says_where(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EnvironmentFaultError, match="cannot open the bus log"):
        BusLog.open(tmp_path / "file" / "bus.db")


async def test_only_checkpoint_copies_the_wal_into_the_database_file(
    tmp_path: Path, log: BusLog
) -> None:
    database = tmp_path / "bus.db"
    await log.append([entry(message_id=str(i)) for i in range(500)], now=1.0, window=1)
    before = database.stat().st_size  # automatic checkpoints are off: still in the WAL
    log.checkpoint()
    assert database.stat().st_size > before


async def test_closing_waits_for_a_checkpoint_still_running_in_its_thread(
    tmp_path: Path,
) -> None:
    """A checkpoint whose caller was cancelled goes on in its thread; closing the log then
    waits for it instead of closing its connection under it (which crashed the process)."""
    log = BusLog.open(tmp_path / "bus.db")
    await log.append([entry()], now=1.0, window=120)
    started, finished = threading.Event(), threading.Event()
    real = log._checkpointer
    assert real is not None

    class Slow:
        def execute(self, sql: str) -> sqlite3.Cursor:
            started.set()
            threading.Event().wait(0.3)  # a checkpoint copying many pages
            cursor = real.execute(sql)
            finished.set()
            return cursor

        def close(self) -> None:
            assert finished.is_set(), "closed while the checkpoint ran"
            real.close()

    log._checkpointer = Slow()  # type: ignore[assignment]
    checkpoint = asyncio.create_task(asyncio.to_thread(log.checkpoint))
    await asyncio.to_thread(started.wait, 5)
    checkpoint.cancel()  # the caller gives up; the thread does not
    await log.aclose()
    assert finished.is_set()
