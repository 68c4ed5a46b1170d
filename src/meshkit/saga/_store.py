"""The saga log's interface: where runs are written before each action, and found again.

A store keeps each run as one row: the run itself (``Run``, encoded), its
status, who drives it and until when (the lease), and a version that every
write bumps. Writes are fenced by the version: a driver that lost its run
to another replica (its lease lapsed and the other claimed it) fails its
next write with ``RunTakenError`` instead of overwriting the new owner's.

Local work joins the log's transaction: ``create`` and ``save_local`` take
a function of the store's transaction (a plain function of a
``sqlite3.Connection`` for SQLite, a coroutine function of an asyncpg
connection for PostgreSQL) that writes the service's own rows and returns
the run to write, so those rows and the run commit together or not at all,
as the outbox's events commit with the change that caused them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from meshkit.errors import InvalidArgumentError
from meshkit.saga._model import ACTIVE, ENDED, Run, Status

__all__ = [
    "Claimed",
    "SagaStore",
    "check_status",
    "decode_run",
    "encode_run",
    "readable",
]

# What a store does with local work: call it with its transaction. For a
# store of blocking connections (SQLite), a plain function run on the
# store's writer thread; for an async one (PostgreSQL), a coroutine function.
LocalWork = Callable[[Any], Any]

STATUSES: frozenset[str] = ACTIVE | ENDED | {"stuck"}

_log = logging.getLogger("meshkit.saga")

_encode = msgspec.json.encode
_decode = msgspec.json.Decoder(Run).decode


def encode_run(run: Run) -> bytes:
    return _encode(run)


def decode_run(data: bytes | str) -> Run:
    return _decode(data)


def readable(run_id: str, data: bytes | str) -> Run | None:
    """The run in ``data``, or ``None`` (logged) when this version of meshkit cannot read it.

    A claim passes over such a run rather than failing every run with it:
    a newer meshkit (a rolling upgrade) may have written it.
    """
    try:
        return _decode(data)
    except msgspec.DecodeError as error:  # ValidationError is one too
        _log.error("saga run %s cannot be read here, passed over: %s", run_id, error)
        return None


def check_status(status: object) -> Status | None:
    """A status to list runs by, or ``None`` for all; ``InvalidArgumentError`` otherwise."""
    if status is None or status in STATUSES:
        return status  # type: ignore[return-value]
    raise InvalidArgumentError(
        "status", f"must be one of {', '.join(sorted(STATUSES))}; got {status!r}"
    )


class Claimed(NamedTuple):
    """A run a store handed to a driver, and the version its next write must name."""

    run: Run
    version: int


class SagaStore(Protocol):
    """Where a service's saga runs are logged.

    Errors: ``RunTakenError`` when a write names a version that is no
    longer the run's (another driver has it now); ``EnvironmentFaultError``
    when the database cannot be reached; ``NotFoundError`` for a run id not
    in the log, where a method says so. Whatever a local function raises
    propagates unchanged, after its part of the transaction rolled back.
    """

    async def create(
        self, new: Run | LocalWork, *, owner: str, lease_until: float
    ) -> tuple[Run, int]:
        """Log a new run, driven by ``owner`` until ``lease_until``: the run and its version.

        ``new`` is the run, or local work: a function of the transaction
        that writes the service's rows and returns the run to log, built
        from what it wrote (a new order's id in the run's input, say), so
        that the two commit together or not at all.
        ``InvalidArgumentError`` when the run's id is taken.
        """
        ...

    async def save(self, run: Run, *, version: int, lease_until: float) -> int:
        """Write ``run`` over the one at ``version``: the new version.

        An ended or stuck run is written without an owner, so no driver
        claims it (``take`` does, for a retry).
        """
        ...

    async def save_local(
        self, run_id: str, local: LocalWork, *, version: int, lease_until: float
    ) -> tuple[Run, int]:
        """Call ``local(tx)``, which returns the run to write, and write it in the same
        transaction: that run and the new version."""
        ...

    async def claim(
        self, *, owner: str, now: float, lease_until: float, limit: int, own: bool = False
    ) -> list[Claimed]:
        """Take up to ``limit`` running or compensating runs whose lease ended before ``now``
        (with ``own``, also those ``owner`` held: a restarted process takes its runs back)."""
        ...

    async def take(self, run_id: str, *, owner: str, lease_until: float) -> Claimed:
        """Take the stuck run ``run_id`` to retry it. ``NotFoundError`` if there is no such
        run; ``ConflictError`` if it is not stuck."""
        ...

    async def renew(self, run_ids: Sequence[str], *, owner: str, lease_until: float) -> int:
        """Extend ``owner``'s leases on these runs: how many it still held."""
        ...

    async def get(self, run_id: str) -> Run | None:
        """The run as last written, or ``None``."""
        ...

    async def runs(
        self,
        *,
        status: Status | None = None,
        saga: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs, most recently changed first: at most ``limit`` (1 to 10,000)."""
        ...

    async def purge(self, *, ended_before: float) -> int:
        """Delete completed and compensated runs last changed before ``ended_before``."""
        ...

    async def aclose(self) -> None:
        """Finish the writes under way and close the connections."""
        ...
