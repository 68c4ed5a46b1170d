"""Rollouts as the control plane keeps them: one record per rollout, in SQLite.

A record holds the rollout (``meshkit.policy.Rollout``: its strategy, how
far it got), the service's definition before and the one being rolled out
(as ``meshkit.toml`` has them, opaque here: the supervisor reads them),
and its history, a line per transition. At most one rollout of a service
is under way at a time; finished ones stay, as the service's history.

Every write names the ``version`` of the record it read, and a write
from an older version is a ``ConflictError``: the driver and a person's
command (pause, abort) can both change a rollout, and neither may undo
what the other just did. Writes are small and rare (one a second while a
rollout runs), so they are made on the event loop; SQLite in WAL mode,
``synchronous=FULL``: a transition acknowledged survives a crash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from meshkit._sqlite import open_store, transaction
from meshkit.errors import ConflictError, EnvironmentFaultError, NotFoundError
from meshkit.policy import Rollout, RolloutEvent, update_rollout

__all__ = ["HistoryLine", "RolloutRecord", "RolloutStore", "describe"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    service TEXT NOT NULL,
    finished INTEGER NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS rollouts_by_service ON rollouts (service, id);
"""


class HistoryLine(msgspec.Struct, frozen=True):
    at: float  # Unix seconds
    text: str


class RolloutRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One rollout, as stored and as the API answers with it."""

    id: int
    version: int
    rollout: Rollout
    stable: dict[str, Any]  # the service's definition before
    candidate: dict[str, Any]  # the definition rolled out
    history: tuple[HistoryLine, ...] = ()


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(RolloutRecord).decode


def describe(before: Rollout | None, after: Rollout) -> list[str]:
    """What changed, in words, for the history and the logs."""
    if before is None:
        old, new = after.stable_version or "(no version)", after.candidate_version or "(none)"
        return [f"{after.strategy} rollout of {after.service} began: {old} -> {new}"]
    lines = []
    if after.phase is not before.phase:
        reason = (
            f" ({after.reason})" if after.reason and after.phase.value.startswith("roll") else ""
        )
        lines.append(f"{after.phase.value}{reason}")
    if after.paused != before.paused:
        lines.append("paused" if after.paused else "resumed")
    if after.weight != before.weight:
        share = "no split" if after.weight is None else f"{after.weight}% to the candidate"
        lines.append(f"traffic: {share}")
    for analysis in after.analyses[len(before.analyses) :]:
        verdict = "passed" if analysis.passed else "failed: " + "; ".join(analysis.reasons())
        lines.append(f"analysis {verdict}")
    if after.smoke is not None and before.smoke is None:
        lines.append("smoke requests passed" if after.smoke else "smoke requests failed")
    return lines


class RolloutStore:
    """The rollouts in one SQLite file. Methods raise ``EnvironmentFaultError`` when the
    disk fails, ``NotFoundError`` and ``ConflictError`` as each says."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_store(path, _SCHEMA, what="the rollouts", synchronous="FULL")

    def close(self) -> None:
        self._db.close()

    # -- reads -----------------------------------------------------------------------------

    def get(self, rollout_id: int) -> RolloutRecord:
        rows = self._rows("SELECT record FROM rollouts WHERE id = ?", (rollout_id,))
        if not rows:
            raise NotFoundError(f"no rollout has id {rollout_id}")
        return rows[0]

    def latest(self, service: str) -> RolloutRecord:
        """The service's rollout under way, or else its last one."""
        rows = self._rows(
            "SELECT record FROM rollouts WHERE service = ? ORDER BY id DESC LIMIT 1", (service,)
        )
        if not rows:
            raise NotFoundError(f"{service} has never been rolled out")
        return rows[0]

    def find(
        self, *, service: str | None = None, active: bool = False, limit: int = 50
    ) -> list[RolloutRecord]:
        """Rollouts, newest first: of one service, or under way only, at most ``limit``."""
        clauses, parameters = [], []
        if service is not None:
            clauses.append("service = ?")
            parameters.append(service)
        if active:
            clauses.append("finished = 0")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._rows(
            f"SELECT record FROM rollouts {where} ORDER BY id DESC LIMIT ?",  # noqa: S608 (fixed clauses)
            (*parameters, limit),
        )

    # -- writes ----------------------------------------------------------------------------

    def create(
        self, rollout: Rollout, *, stable: dict[str, Any], candidate: dict[str, Any], now: float
    ) -> RolloutRecord:
        """A new rollout; ``ConflictError`` while another of the service is under way."""

        def write(db: sqlite3.Connection) -> RolloutRecord:
            under_way = db.execute(
                "SELECT id FROM rollouts WHERE service = ? AND finished = 0", (rollout.service,)
            ).fetchone()
            if under_way is not None:
                raise ConflictError(
                    f"a rollout of {rollout.service} is under way (id {under_way[0]}): wait for"
                    f" it, or abort it with: meshkit rollout abort {rollout.service}"
                )
            history = tuple(HistoryLine(now, line) for line in describe(None, rollout))
            cursor = db.execute(
                "INSERT INTO rollouts (service, finished, record) VALUES (?, 0, ?)",
                (rollout.service, b""),
            )
            assert cursor.lastrowid is not None
            record = RolloutRecord(
                id=cursor.lastrowid,
                version=1,
                rollout=rollout,
                stable=stable,
                candidate=candidate,
                history=history,
            )
            db.execute("UPDATE rollouts SET record = ? WHERE id = ?", (_encode(record), record.id))
            return record

        return self._transaction(write)

    def save(self, rollout_id: int, version: int, rollout: Rollout, now: float) -> RolloutRecord:
        """``rollout`` as the next state of the record read at ``version``."""

        def write(db: sqlite3.Connection) -> RolloutRecord:
            current = self._read(db, rollout_id)
            if current.version != version:
                raise ConflictError(
                    f"rollout {rollout_id} changed meanwhile (version {current.version},"
                    f" not {version}): read it again"
                )
            return self._write(db, current, rollout, now)

        return self._transaction(write)

    def command(self, service: str, event: RolloutEvent, now: float) -> RolloutRecord:
        """A person's command (or a measurement) applied to the service's latest rollout."""

        def write(db: sqlite3.Connection) -> RolloutRecord:
            row = db.execute(
                "SELECT id FROM rollouts WHERE service = ? ORDER BY id DESC LIMIT 1", (service,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"{service} has never been rolled out")
            current = self._read(db, row[0])
            changed = update_rollout(current.rollout, event, now)
            asked = f"{type(event).__name__.lower()} requested"
            return self._write(db, current, changed, now, first=asked)

        return self._transaction(write)

    # -- internals ---------------------------------------------------------------------------

    def _write(
        self,
        db: sqlite3.Connection,
        current: RolloutRecord,
        rollout: Rollout,
        now: float,
        *,
        first: str | None = None,
    ) -> RolloutRecord:
        lines = ([first] if first else []) + describe(current.rollout, rollout)
        record = msgspec.structs.replace(
            current,
            version=current.version + 1,
            rollout=rollout,
            history=current.history + tuple(HistoryLine(now, line) for line in lines),
        )
        db.execute(
            "UPDATE rollouts SET record = ?, finished = ? WHERE id = ?",
            (_encode(record), int(rollout.phase.finished), record.id),
        )
        return record

    @staticmethod
    def _read(db: sqlite3.Connection, rollout_id: int) -> RolloutRecord:
        row = db.execute("SELECT record FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no rollout has id {rollout_id}")
        return _decode(row[0])

    def _rows(self, sql: str, parameters: tuple[object, ...]) -> list[RolloutRecord]:
        try:
            return [_decode(row[0]) for row in self._db.execute(sql, parameters).fetchall()]
        except sqlite3.Error as error:
            raise EnvironmentFaultError(
                f"cannot read the rollouts at {self.path}: {error}"
            ) from error

    def _transaction(self, write: Callable[[sqlite3.Connection], RolloutRecord]) -> RolloutRecord:
        return transaction(self._db, write, what=f"the rollouts at {self.path}")
