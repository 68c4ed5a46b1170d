"""The embedded broker: the bus log plus each consumer group's place in it.

One process owns the file (the control plane). Groups are kept in memory as
``GroupState`` and written through the log's group commits: a failure, a
dead letter or an ack is on disk before the call that made it returns, so a
restart resumes every group where it stood, give or take the deliveries that
were in flight (they are made again: at-least-once).

Members of a group wait for messages with long polls: ``fetch`` answers at
once when something is ready, else sleeps until a publish to the topic, a
failure put back, a due time or an ack deadline wakes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit._tasks import stop
from meshkit.bus._group import GroupState
from meshkit.bus._log import BusLog, append_op
from meshkit.bus._model import (
    DUPLICATE_WINDOW,
    MAX_AGE,
    REPLAY_HEADER,
    DeadLetter,
    Delivery,
    GroupInfo,
    Message,
    Outgoing,
    Published,
    check_group,
    check_letter_ids,
    check_letter_number,
    check_limit,
    check_redelivery,
    check_topic,
    clip_error,
    decode_headers,
    expired_error,
)
from meshkit.errors import (
    EnvironmentFaultError,
    GroupLostError,
    InvalidArgumentError,
    NotFoundError,
)
from meshkit.policy import Redelivery
from meshkit.policy import _check as check

__all__ = ["BrokerCounts", "EmbeddedBroker"]

# How often upkeep looks for messages past their age; a sweep drops at most
# _SWEEP of them per write, so that publishes wait behind it briefly.
# (Measured here: 1,000 rows of 1 KiB held the writer 10 ms, the time of one
# fsynced commit; 10,000 held it 104 ms.)
_SWEEP_EVERY = 60.0
_SWEEP = 1_000


_SCHEMA = """
CREATE TABLE IF NOT EXISTS groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    floor INTEGER NOT NULL,
    PRIMARY KEY (topic, grp)
) WITHOUT ROWID;
-- Sequences at or above the group's floor that it is done with.
CREATE TABLE IF NOT EXISTS acks (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, sequence)
) WITHOUT ROWID;
-- Deliveries that failed so far, and when the next one is due (Unix time).
CREATE TABLE IF NOT EXISTS failures (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    deliveries INTEGER NOT NULL,
    due REAL NOT NULL,
    error TEXT NOT NULL,
    PRIMARY KEY (topic, grp, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    topic TEXT NOT NULL,
    message_id TEXT NOT NULL,
    key TEXT,
    headers BLOB NOT NULL,
    payload BLOB NOT NULL,
    published REAL NOT NULL,
    deliveries INTEGER NOT NULL,
    error TEXT NOT NULL,
    failed REAL NOT NULL
);
"""

_log = logging.getLogger("meshkit.bus")
_MESSAGE_COLUMNS = "sequence, id, topic, key, headers, payload, published"


class _Bell:
    """Wakes every task waiting for a change; a ring between checks is never missed."""

    __slots__ = ("_rung",)

    def __init__(self) -> None:
        self._rung: asyncio.Future[None] | None = None

    def ring(self) -> None:
        if self._rung is not None and not self._rung.done():
            self._rung.set_result(None)
        self._rung = None

    def waiter(self) -> asyncio.Future[None]:
        if self._rung is None:
            self._rung = asyncio.get_running_loop().create_future()
        return self._rung


@dataclass(slots=True)
class _Group:
    topic: str
    name: str
    state: GroupState
    redelivery: Redelivery = field(default_factory=Redelivery)
    bell: _Bell = field(default_factory=_Bell)


@dataclass(slots=True)
class BrokerCounts:
    """What the broker did since it started, for its metrics: messages appended per
    topic, and messages dead-lettered per ``(topic, group)``."""

    published: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[tuple[str, str], int] = field(default_factory=dict)


class EmbeddedBroker:
    """Topics and groups in one SQLite file: ``await EmbeddedBroker.open(path)``, then ``aclose()``.

    Receipts are ``"sequence.deliveries"``: an ack or failure names the
    delivery it answers, so a late answer for a delivery that already went
    to another member is told apart.
    """

    def __init__(
        self, log: BusLog, *, clock: Clock, window: float, max_age: float | None = MAX_AGE
    ) -> None:
        self.log = log
        self._clock = clock
        self._window = window
        self.max_age = None if max_age is None else check.seconds("max_age", max_age)
        self._groups: dict[tuple[str, str], _Group] = {}
        self._by_topic: dict[str, list[_Group]] = {}
        self._upkeep: asyncio.Task[None] | None = None
        self.counts = BrokerCounts()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Clock | None = None,
        window: float = DUPLICATE_WINDOW,
        max_age: float | None = MAX_AGE,
    ) -> EmbeddedBroker:
        """Open (or create) the broker's file and resume every group recorded in it.

        Messages older than ``max_age`` seconds are dropped by upkeep
        (``None``: kept for ever); dead letters stay until purged.
        """
        log = BusLog.open(path, schema=_SCHEMA)
        broker = cls(log, clock=clock or SystemClock(), window=window, max_age=max_age)
        broker._restore()
        return broker

    def _restore(self) -> None:
        done: dict[tuple[str, str], list[int]] = {}
        for topic, grp, sequence in self.log.read("SELECT topic, grp, sequence FROM acks"):
            done.setdefault((topic, grp), []).append(sequence)
        failures: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
        for topic, grp, sequence, deliveries, due in self.log.read(
            "SELECT topic, grp, sequence, deliveries, due FROM failures"
        ):
            failures.setdefault((topic, grp), []).append((sequence, deliveries, due))
        for topic, grp, floor in self.log.read("SELECT topic, grp, floor FROM groups"):
            state = GroupState.restored(
                floor=floor,
                done=done.get((topic, grp), ()),
                failures=failures.get((topic, grp), ()),
            )
            self._add(_Group(topic, grp, state))

    def _add(self, group: _Group) -> None:
        self._groups[(group.topic, group.name)] = group
        self._by_topic.setdefault(group.topic, []).append(group)

    def start_upkeep(self, *, every: float = 1.0) -> None:
        """In the background until closed: checkpoint the WAL, forget ids past the
        window, and drop messages past their age."""
        self._upkeep = asyncio.create_task(self._keep_up(every))

    async def sweep(self) -> int:
        """Drop every message older than ``max_age`` now: how many went."""
        if self.max_age is None:
            return 0
        before = self._clock.time() - self.max_age
        dropped = 0
        while True:
            count = await self.log.forget_messages(before=before, batch=_SWEEP)
            dropped += count
            if count < _SWEEP:
                return dropped

    async def _keep_up(self, every: float) -> None:
        commits = forgotten = swept = 0.0
        while True:
            await self._clock.sleep(every)
            try:
                if self.log.statistics.commits != commits:
                    commits = self.log.statistics.commits
                    # Off the loop: a checkpoint copies pages and fsyncs the file.
                    await asyncio.to_thread(self.log.checkpoint)
                now = self._clock.time()
                if now - forgotten >= self._window / 2:
                    forgotten = now
                    await self.log.forget_ids(before=now - self._window)
                if now - swept >= _SWEEP_EVERY:
                    swept = now
                    if dropped := await self.sweep():
                        _log.info(
                            "bus log: dropped %d messages older than %gs", dropped, self.max_age
                        )
            except EnvironmentFaultError as error:
                _log.warning("bus log upkeep failed: %s", error)

    async def aclose(self) -> None:
        upkeep, self._upkeep = self._upkeep, None
        if upkeep is not None:
            await stop(upkeep)
        for group in self._groups.values():
            group.bell.ring()
        await self.log.aclose()

    # -- publishing ---------------------------------------------------------------

    async def publish(self, messages: Sequence[Outgoing]) -> list[Published]:
        """Append in order; returns once on disk. Repeats of given ids within the window are not."""
        if not messages:
            return []
        found = await self.log.append(messages, now=self._clock.time(), window=self._window)
        published = self.counts.published
        for message, (_, duplicate) in zip(messages, found, strict=True):
            if not duplicate:
                published[message.topic] = published.get(message.topic, 0) + 1
        for topic in {message.topic for message in messages}:
            for group in self._by_topic.get(topic, ()):
                group.bell.ring()
        return [
            Published(id=message.id, duplicate=duplicate)
            for message, (_, duplicate) in zip(messages, found, strict=True)
        ]

    # -- groups -------------------------------------------------------------------

    async def join(self, topic: str, group: str, redelivery: Redelivery) -> None:
        """Create the group at the topic's earliest retained message, or set its policy."""
        check_topic(topic)
        check_group(group)
        check_redelivery(redelivery)
        known = self._groups.get((topic, group))
        if known is not None:
            known.redelivery = redelivery
            return
        self._add(_Group(topic, group, GroupState(), redelivery))
        await self.log.write(
            lambda db: (
                db.execute("INSERT OR IGNORE INTO groups VALUES (?, ?, 0)", (topic, group)).rowcount
            )
        )

    async def delete_group(self, topic: str, group: str) -> None:
        """Forget the group, in memory and on disk (see ``Bus.delete_group``)."""
        member = self._groups.get((check_topic(topic), check_group(group)))
        if member is None:
            raise NotFoundError(f"no group {group!r} on topic {topic!r}")
        del self._groups[(topic, group)]
        self._by_topic[topic].remove(member)
        member.bell.ring()  # a fetch waiting on it finds it gone

        def op(db: sqlite3.Connection) -> None:
            for table in ("groups", "acks", "failures"):
                db.execute(
                    f"DELETE FROM {table} WHERE topic = ? AND grp = ?",  # noqa: S608 (constant names)
                    (topic, group),
                )

        await self.log.write(op)

    def groups(self) -> list[GroupInfo]:
        """Every group, by topic then name (see ``Bus.groups``); the lag counts the topic's
        messages at or past the group's cursor."""
        found = []
        for (topic, name), member in sorted(self._groups.items()):
            [(lag,)] = self.log.read(
                "SELECT count(*) FROM messages WHERE topic = ? AND sequence >= ?",
                (topic, member.state.cursor),
            )
            counts = member.state.statistics()
            pending = counts["leased"] + counts["waiting"]
            found.append(GroupInfo(topic=topic, group=name, lag=lag, pending=pending))
        return found

    def _group(self, topic: str, group: str) -> _Group:
        """The group a member joined; ``GroupLostError`` if it is gone (deleted meanwhile)."""
        found = self._groups.get((topic, group))
        if found is None:
            raise GroupLostError(f"group {group!r} has not joined topic {topic!r}")
        return found

    async def fetch(self, topic: str, group: str, *, limit: int, wait: float) -> list[Delivery]:
        """Up to ``limit`` deliveries for one member: at once if ready, else within ``wait`` s."""
        check_limit(limit)
        check.seconds("wait", wait, allow_zero=True)
        member = self._group(topic, group)
        deadline = self._clock.monotonic() + wait
        while True:
            if self._groups.get((topic, group)) is not member:
                raise GroupLostError(f"group {group!r} on topic {topic!r} was deleted")
            waiter = member.bell.waiter()  # before looking, so a ring while we look is kept
            await self._expire(member)
            found, skipped = self._take(member, limit)
            if skipped:
                await self._record_done(member, skipped)
            if found:
                return found
            if skipped:
                # The cursor passed messages meant for other groups only (replays):
                # what follows them may be ready, so look again now, not after the wait.
                continue
            if self._clock.monotonic() >= deadline:
                return found
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(waiter), self._sleep(member, deadline))

    def _sleep(self, member: _Group, deadline: float) -> float:
        """Seconds until the fetch should look again, at most until its deadline."""
        now = self._clock.monotonic()
        sleep = deadline - now
        lease_ends = member.state.next_deadline()
        if lease_ends is not None:
            sleep = min(sleep, lease_ends - now)
        due = member.state.next_due()
        if due is not None:
            sleep = min(sleep, due - self._clock.time())
        return max(sleep, 0.0)

    async def _expire(self, member: _Group) -> None:
        """Count every lease past its ack deadline as a failed delivery."""
        expired = member.state.expired(self._clock.monotonic())
        if expired:
            policy = member.redelivery
            error = expired_error(policy.ack_wait)
            # Due again at once, unless that was the last delivery: the wait was the ack deadline.
            await asyncio.gather(
                *(
                    self._failed(
                        member, s, d, error, None if policy.after_failure(d) is None else 0.0
                    )
                    for s, d in expired
                )
            )

    def _take(self, member: _Group, limit: int) -> tuple[list[Delivery], list[int]]:
        """Lease what is ready: the deliveries, and the sequences passed by as not for the group."""
        state = member.state
        due = state.due(self._clock.time(), limit)
        rows = self._rows(due)
        skipped = sorted(set(due) - {row[0] for row in rows})  # gone from the log: nothing to do
        for sequence in skipped:
            state.done(sequence)
        if len(rows) < limit:
            rows += self._new_rows(member, limit - len(rows))
        now = self._clock.monotonic()
        found: list[Delivery] = []
        for row in rows:
            message = _message(row, deliveries=1)
            if not message.for_group(member.name):
                state.done(row[0])
                skipped.append(row[0])
                continue
            deliveries = state.lease(row[0], now=now, ack_wait=member.redelivery.ack_wait)
            if deliveries != 1:
                message = msgspec.structs.replace(message, deliveries=deliveries)
            found.append(Delivery(message=message, receipt=f"{row[0]}.{deliveries}"))
        return found, skipped

    def _rows(self, sequences: list[int]) -> list[tuple[Any, ...]]:
        if not sequences:
            return []
        marks = ",".join("?" * len(sequences))
        return self.log.read(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 (constant columns, ? marks)
            f" WHERE sequence IN ({marks}) ORDER BY sequence",
            tuple(sequences),
        )

    def _new_rows(self, member: _Group, limit: int) -> list[tuple[Any, ...]]:
        """The next ``limit`` messages of the topic the group has not had, moving its cursor."""
        state = member.state
        rows: list[tuple[Any, ...]] = []
        while len(rows) < limit:
            batch = self.log.read(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"  # noqa: S608 (constant columns)
                " WHERE topic = ? AND sequence >= ? ORDER BY sequence LIMIT ?",
                (member.topic, state.cursor, limit - len(rows)),
            )
            if not batch:
                break
            for row in batch:
                state.passed(row[0])
                if state.is_new(row[0]):
                    rows.append(row)
        return rows

    # -- outcomes -----------------------------------------------------------------

    async def ack(self, topic: str, group: str, receipts: Iterable[str]) -> None:
        """These deliveries were handled; returns once that is on disk."""
        member = self._group(topic, group)
        sequences = [_parse(receipt)[0] for receipt in receipts]
        done = [sequence for sequence in sequences if member.state.done(sequence)]
        if done:
            await self._record_done(member, done)

    def _record_done(self, member: _Group, done: list[int]) -> asyncio.Future[None]:
        return self.log.write(self._done_op(member, done))

    def _done_op(self, member: _Group, done: list[int]) -> Callable[[sqlite3.Connection], None]:
        """The write recording ``done`` and the new floor (made after the state changed)."""
        floor = member.state.advance_floor()
        topic, grp = member.topic, member.name

        def op(db: sqlite3.Connection) -> None:
            above = [(topic, grp, sequence) for sequence in done if sequence >= floor]
            db.executemany("INSERT OR IGNORE INTO acks VALUES (?, ?, ?)", above)
            db.executemany(
                "DELETE FROM failures WHERE topic = ? AND grp = ? AND sequence = ?",
                [(topic, grp, sequence) for sequence in done],
            )
            db.execute(
                "UPDATE groups SET floor = ? WHERE topic = ? AND grp = ?", (floor, topic, grp)
            )
            db.execute(
                "DELETE FROM acks WHERE topic = ? AND grp = ? AND sequence < ?", (topic, grp, floor)
            )

        return op

    async def fail(self, topic: str, group: str, receipt: str, error: str) -> None:
        """The delivery's handler failed: it is due again after the backoff, or a dead letter."""
        member = self._group(topic, group)
        sequence, deliveries = _parse(receipt)
        wait = member.redelivery.after_failure(deliveries)
        await self._failed(member, sequence, deliveries, clip_error(error), wait)

    async def _failed(
        self, member: _Group, sequence: int, deliveries: int, error: str, wait: float | None
    ) -> None:
        retry_at = None if wait is None else self._clock.time() + wait
        if not member.state.failed(sequence, deliveries, retry_at=retry_at):
            return  # a late answer for a delivery that is no longer out
        member.bell.ring()
        topic, grp = member.topic, member.name
        if retry_at is not None:
            await self.log.write(
                lambda db: db.execute(
                    "INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, grp, sequence, deliveries, retry_at, error),
                )
            )
            return
        dead = self.counts.dead_lettered
        dead[(topic, grp)] = dead.get((topic, grp), 0) + 1
        rows = self._rows([sequence])
        failed = self._clock.time()
        done = self._done_op(member, [sequence])
        outcome = (deliveries, error, failed)

        def op(db: sqlite3.Connection) -> None:
            if rows:  # else it left the log: nothing to keep
                _, message_id, _, key, headers, payload, published = rows[0]
                db.execute(
                    "INSERT INTO dead_letters (grp, topic, message_id, key, headers, payload,"
                    " published, deliveries, error, failed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (grp, topic, message_id, key, headers, payload, published, *outcome),
                )
            done(db)

        await self.log.write(op)

    # -- dead letters ---------------------------------------------------------------

    def dead_letters(self, *, limit: int = 100) -> list[DeadLetter]:
        check_limit(limit)
        rows = self.log.read(
            f"SELECT {_DEAD_COLUMNS} FROM dead_letters ORDER BY id LIMIT ?",  # noqa: S608 (constant)
            (limit,),
        )
        return [_dead_letter(row) for row in rows]

    def dead_letter(self, letter_id: str) -> DeadLetter:
        rows = self.log.read(
            f"SELECT {_DEAD_COLUMNS} FROM dead_letters WHERE id = ?",  # noqa: S608 (constant columns)
            (check_letter_number(letter_id),),
        )
        if not rows:
            raise NotFoundError(f"no dead letter has id {letter_id!r}")
        return _dead_letter(rows[0])

    async def replay(self, letter_id: str) -> None:
        """Append the dead letter again for its group alone, and remove it, in one write."""
        letter = self.dead_letter(letter_id)
        message = letter.message
        again = Outgoing(
            topic=message.topic,
            id=message.id,
            payload=message.payload,
            headers={**message.headers, REPLAY_HEADER: letter.group},
            key=message.key,
        )
        append = append_op([again], self._clock.time(), self._window)

        def op(db: sqlite3.Connection) -> None:
            if db.execute("DELETE FROM dead_letters WHERE id = ?", (int(letter_id),)).rowcount == 0:
                raise NotFoundError(f"no dead letter has id {letter_id!r}")  # replayed meanwhile
            append(db)

        await self.log.write(op)
        for group in self._by_topic.get(message.topic, ()):
            group.bell.ring()

    async def purge(self, ids: Sequence[str] | None = None) -> int:
        if ids is None:
            return int(
                await self.log.write(lambda db: db.execute("DELETE FROM dead_letters").rowcount)
            )
        numbers = [(check_letter_number(letter_id),) for letter_id in check_letter_ids(ids)]
        if not numbers:
            return 0
        return int(
            await self.log.write(
                lambda db: db.executemany("DELETE FROM dead_letters WHERE id = ?", numbers).rowcount
            )
        )

    def statistics(self) -> dict[str, object]:
        """Counts for the dashboard: each group's leased, waiting and floor, and the log's."""
        return {
            "groups": {f"{t}/{g}": m.state.statistics() for (t, g), m in self._groups.items()},
            "commits": self.log.statistics.commits,
            "writes": self.log.statistics.writes,
        }


_DEAD_COLUMNS = (
    "id, grp, topic, message_id, key, headers, payload, published, deliveries, error, failed"
)


def _message(row: tuple[Any, ...], *, deliveries: int) -> Message:
    _, message_id, topic, key, headers, payload, published = row
    return Message(
        id=message_id,
        topic=topic,
        payload=payload,
        headers=decode_headers(headers),
        key=key,
        published=published,
        deliveries=deliveries,
    )


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    number, grp, topic, message_id, key, headers, payload, published, deliveries, error, failed = (
        row
    )
    message = _message(
        (0, message_id, topic, key, headers, payload, published), deliveries=deliveries
    )
    return DeadLetter(
        id=str(number),
        group=grp,
        message=message,
        deliveries=deliveries,
        error=error,
        failed=failed,
    )


def _parse(receipt: str) -> tuple[int, int]:
    """``(sequence, deliveries)`` from a receipt this broker gave."""
    sequence, dot, deliveries = receipt.partition(".")
    if (
        not (dot and sequence.isdigit() and deliveries.isdigit() and len(receipt) <= 40)
        or int(deliveries) < 1
    ):
        raise InvalidArgumentError("receipt", f"is not one this broker gave: {receipt!r}")
    return int(sequence), int(deliveries)
