"""The saga store conformance suite: what every saga log must do, on the real engine.

An engine takes part through a ``SagaDatabase``: a fresh database, on which
it makes stores (each replica of a service makes its own), local work that
writes a row of the suite's own table in the store's transaction, and a way
to read that table back. Local work is the engine's (a function of a
``sqlite3.Connection``, a coroutine function of an asyncpg connection), so
the database makes it. The times given to the store (``now``, leases,
``updated``) are the suite's own numbers: a store never reads a clock.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import msgspec
import pytest

from meshkit._clock import SystemClock
from meshkit.errors import (
    ConflictError,
    EnvironmentFaultError,
    InvalidArgumentError,
    MeshkitError,
    NotFoundError,
    RunTakenError,
    UsageError,
)
from meshkit.policy import Backoff
from meshkit.saga import Failure, Run, SagaStore, Status, StepPlan, StepState

__all__ = ["SagaDatabase", "SagaStoreConformance"]

WITHIN = 20.0  # seconds any one expectation may take on a loaded machine
_CLOCK = SystemClock()

_PLAN = (
    StepPlan(
        name="reserve", attempts=3, backoff=Backoff(), undo_attempts=5, undo_backoff=Backoff()
    ),
    StepPlan(
        name="charge", attempts=1, backoff=Backoff(), undo_attempts=None, undo_backoff=Backoff()
    ),
    StepPlan(
        name="confirm",
        attempts=1,
        backoff=Backoff(),
        undo_attempts=None,
        undo_backoff=Backoff(),
        local=True,
    ),
)


async def _create(
    store: SagaStore,
    run: Run,
    *,
    owner: str,
    lease_until: float,
    local: Callable[[Any], Any] | None = None,
) -> int:
    """Log ``run`` (after ``local``'s work, in the same transaction): its version."""
    new: Run | Callable[[Any], Any] = run if local is None else _then(local, run)
    _, version = await store.create(new, owner=owner, lease_until=lease_until)
    return version


def _then(work: Callable[[Any], Any], run: Run) -> Callable[[Any], Any]:
    """Local work that does ``work``, then returns ``run`` to be logged."""

    def both(tx: Any) -> Any:
        done = work(tx)
        if inspect.isawaitable(done):

            async def after() -> Run:
                await done
                return run

            return after()
        return run

    return both


class SagaDatabase(Protocol):
    """One fresh database of one engine, with the suite's table, as the suite drives it.

    The suite's table holds one text column, each value once (a primary key).
    """

    @property
    def sql_error(self) -> type[BaseException]:
        """What the engine's driver raises for a statement on a table that does not exist."""
        ...

    def store(self) -> SagaStore:
        """A new store on this database: each replica has its own."""
        ...

    def unreachable(self) -> SagaStore:
        """A store on a database that cannot be reached (nothing listening, a path unusable)."""
        ...

    def work(
        self, value: str | None, then: Callable[[], Any] = lambda: None
    ) -> Callable[[Any], Any]:
        """Local work that inserts ``value`` (unless ``None``) into the suite's table, then
        returns ``then()`` (which may raise)."""
        ...

    def broken(self) -> Callable[[Any], Any]:
        """Local work whose statement names a table that does not exist."""
        ...

    async def rows(self) -> list[str]:
        """The values in the suite's table, sorted, as committed."""
        ...


class _RefusedError(Exception):
    """What the suite's local work raises: its caller must get this very object back."""


def run(
    run_id: str,
    *,
    saga: str = "order",
    status: Status = "running",
    updated: float = 1.0,
    **changes: Any,
) -> Run:
    """A run of a three-step saga, as a driver would log it."""
    fields: dict[str, Any] = {
        "id": run_id,
        "saga": saga,
        "plan": _PLAN,
        "status": status,
        "steps": (StepState(), StepState(), StepState()),
        "input": {"order": run_id, "items": [1, 2]},
        "created": 1.0,
        "updated": updated,
    }
    fields.update(changes)
    return Run(**fields)


def _same(value: object) -> object:
    return value


def _advanced(base: Run, **changes: Any) -> Run:
    advanced: Run = msgspec.structs.replace(base, **changes)
    return advanced


class SagaStoreConformance:
    """What every ``SagaStore`` must do. Provide a ``database`` fixture.

    ``database`` is a ``SagaDatabase`` on a fresh database of the engine; the
    suite closes every store it makes.
    """

    @pytest.fixture
    async def store(self, database: SagaDatabase) -> AsyncIterator[SagaStore]:
        store = database.store()
        yield store
        await store.aclose()

    # -- create ------------------------------------------------------------------------

    async def test_a_fresh_log_has_no_runs(self, store: SagaStore) -> None:
        """get() is None and runs() empty before anything was written."""
        assert await store.get("r1") is None
        assert await store.runs() == []

    async def test_create_logs_the_run_intact_with_its_local_work(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """The run reads back field for field; the local work's row committed with it."""
        logged = run(
            "r1",
            status="compensating",
            cursor=1,
            steps=(
                StepState(phase="done", attempts=2, result={"reservation": "x-1"}, started=5.0),
                StepState(phase="failed", attempts=1, error="declined", ended=6.5),
                StepState(),
            ),
            wake=7.25,
            failure=Failure(step="charge", detail="declined", final=True, status=402, data=[1]),
            note="ünïcode ✓",
        )
        version = await _create(
            store, logged, owner="one", lease_until=100.0, local=database.work("a")
        )
        assert await store.get("r1") == logged
        assert await database.rows() == ["a"]
        other = database.store()
        try:
            assert await other.get("r1") == logged
        finally:
            await other.aclose()
        assert await store.save(logged, version=version, lease_until=100.0) != version

    async def test_local_work_that_raises_leaves_nothing_and_its_error_propagates(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """The very exception reaches the caller; neither its row nor the run is written."""
        refusal = _RefusedError("out of stock")

        def refuse() -> None:
            raise refusal

        with pytest.raises(_RefusedError) as caught:
            await _create(
                store, run("r1"), owner="one", lease_until=100.0, local=database.work("a", refuse)
            )
        assert caught.value is refusal
        assert await store.get("r1") is None
        assert await database.rows() == []
        await _create(store, run("r1"), owner="one", lease_until=100.0, local=database.work("b"))
        assert await database.rows() == ["b"]

    async def test_a_taken_id_is_refused_and_its_local_work_rolled_back(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """InvalidArgumentError on ``id``, with or without local work; the first run stays."""
        first = run("r1")
        await _create(store, first, owner="one", lease_until=100.0)
        for local in (None, database.work("b")):
            with pytest.raises(InvalidArgumentError) as caught:
                await _create(
                    store, run("r1", saga="refund"), owner="two", lease_until=100.0, local=local
                )
            assert caught.value.key == "run_id"
        assert await store.get("r1") == first
        assert await database.rows() == []

    # -- save --------------------------------------------------------------------------

    async def test_save_writes_over_the_named_version_only(self, store: SagaStore) -> None:
        """A stale version is RunTakenError and changes nothing; each save gives a new version."""
        first = run("r1")
        v1 = await _create(store, first, owner="one", lease_until=100.0)
        second = _advanced(first, cursor=1, updated=2.0)
        v2 = await store.save(second, version=v1, lease_until=100.0)
        assert v2 != v1
        assert await store.get("r1") == second
        with pytest.raises(RunTakenError):
            await store.save(_advanced(first, cursor=2, updated=3.0), version=v1, lease_until=100.0)
        assert await store.get("r1") == second
        third = _advanced(second, cursor=2, updated=3.0)
        assert await store.save(third, version=v2, lease_until=100.0) not in (v1, v2)
        assert await store.get("r1") == third

    async def test_saving_a_run_not_in_the_log_is_run_taken(self, store: SagaStore) -> None:
        """Nothing to write over: RunTakenError, and nothing is created."""
        with pytest.raises(RunTakenError):
            await store.save(run("ghost"), version=1, lease_until=100.0)
        assert await store.get("ghost") is None

    async def test_ended_and_stuck_runs_lose_their_owner(self, store: SagaStore) -> None:
        """Completed, compensated and stuck runs are neither renewed nor claimed, even by
        their last owner; an active one still is."""
        versions = {}
        for name in ("done", "undone", "stuck", "active"):
            versions[name] = await _create(store, run(name), owner="one", lease_until=100.0)
        ends: dict[str, Status] = {
            "done": "completed",
            "undone": "compensated",
            "stuck": "stuck",
            "active": "compensating",
        }
        for name, status in ends.items():
            await store.save(run(name, status=status), version=versions[name], lease_until=100.0)
        renewed = await store.renew(list(ends), owner="one", lease_until=200.0)
        assert renewed == 1
        claimed = await store.claim(owner="one", now=1e9, lease_until=2e9, limit=10, own=True)
        assert [c.run.id for c in claimed] == ["active"]
        assert claimed[0].run.status == "compensating"

    # -- save_local --------------------------------------------------------------------

    async def test_save_local_commits_its_work_and_the_run_it_returns(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """The run the work returns is written in its transaction: that run and a new version."""
        first = run("r1")
        v1 = await _create(store, first, owner="one", lease_until=100.0)
        second = _advanced(first, cursor=1, updated=2.0)
        saved, v2 = await store.save_local(
            "r1", database.work("x", lambda: second), version=v1, lease_until=100.0
        )
        assert saved == second
        assert v2 != v1
        assert await store.get("r1") == second
        assert await database.rows() == ["x"]
        with pytest.raises(RunTakenError):
            await store.save(second, version=v1, lease_until=100.0)
        await store.save(second, version=v2, lease_until=100.0)

    async def test_save_local_that_raises_rolls_back_its_work_and_the_run(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """The very exception reaches the caller; the run keeps its version."""
        first = run("r1")
        v1 = await _create(store, first, owner="one", lease_until=100.0)
        refusal = _RefusedError("declined")

        def refuse() -> Run:
            raise refusal

        with pytest.raises(_RefusedError) as caught:
            await store.save_local("r1", database.work("x", refuse), version=v1, lease_until=100.0)
        assert caught.value is refusal
        assert await database.rows() == []
        assert await store.get("r1") == first
        await store.save(_advanced(first, updated=2.0), version=v1, lease_until=100.0)

    async def test_save_local_at_a_stale_version_rolls_back_its_work(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """RunTakenError, and the local work's row is not written."""
        first = run("r1")
        v1 = await _create(store, first, owner="one", lease_until=100.0)
        v2 = await store.save(_advanced(first, updated=2.0), version=v1, lease_until=100.0)
        later = _advanced(first, cursor=1, updated=3.0)
        with pytest.raises(RunTakenError):
            await store.save_local(
                "r1", database.work("x", lambda: later), version=v1, lease_until=100.0
            )
        assert await database.rows() == []
        assert (await store.get("r1")) == _advanced(first, updated=2.0)
        assert await store.save(later, version=v2, lease_until=100.0) != v2

    async def test_save_local_must_return_its_own_run(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """Work that returns something else is a UsageError, and its row rolls back."""
        v1 = await _create(store, run("r1"), owner="one", lease_until=100.0)
        for wrong in (None, run("r2")):
            with pytest.raises(UsageError):
                await store.save_local(
                    "r1",
                    database.work("x", functools.partial(_same, wrong)),
                    version=v1,
                    lease_until=100.0,
                )
        assert await database.rows() == []
        assert await store.get("r2") is None

    async def test_a_local_database_error_reaches_its_caller_and_fails_nothing_else(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """The driver's own error, unchanged, to that caller only: writes made with it land."""
        created = [
            await _create(store, run(f"r{n}"), owner="one", lease_until=100.0) for n in range(20)
        ]
        outcomes = await asyncio.gather(
            _create(store, run("bad"), owner="one", lease_until=100.0, local=database.broken()),
            *(
                store.save(run(f"r{n}", updated=2.0), version=version, lease_until=100.0)
                for n, version in enumerate(created)
            ),
            _create(store, run("good"), owner="one", lease_until=100.0, local=database.work("g")),
            return_exceptions=True,
        )
        error = outcomes[0]
        assert type(error) is database.sql_error, error
        assert not isinstance(error, MeshkitError)
        assert not any(isinstance(o, BaseException) for o in outcomes[1:]), outcomes
        assert await store.get("bad") is None
        assert await database.rows() == ["g"]
        assert all(
            r.updated == 2.0 for r in await store.runs(saga="order", limit=50) if r.id != "good"
        )

    # -- claim -------------------------------------------------------------------------

    async def _lapsed(self, store: SagaStore) -> None:
        """Runs of every kind: ``old-*`` lapsed at 100, ``live`` leased until 300."""
        await _create(store, run("old-run"), owner="a", lease_until=100.0)
        await _create(store, run("old-undo", status="compensating"), owner="a", lease_until=100.0)
        await _create(store, run("old-b"), owner="b", lease_until=100.0)
        await _create(store, run("live"), owner="a", lease_until=300.0)
        ends: list[tuple[str, Status]] = [("ended", "completed"), ("stuck", "stuck")]
        for name, status in ends:
            version = await _create(store, run(name), owner="a", lease_until=100.0)
            await store.save(run(name, status=status), version=version, lease_until=100.0)

    async def test_claim_takes_the_active_runs_whose_lease_lapsed(self, store: SagaStore) -> None:
        """Running and compensating runs past their lease, as logged; then they are leased."""
        await self._lapsed(store)
        claimed = await store.claim(owner="c", now=200.0, lease_until=1200.0, limit=10)
        assert sorted(c.run.id for c in claimed) == ["old-b", "old-run", "old-undo"]
        for c in claimed:
            assert c.run == await store.get(c.run.id)
        assert await store.renew(["old-run", "old-b", "live"], owner="c", lease_until=1300.0) == 2

    async def test_a_claimed_lease_holds_until_it_lapses(self, store: SagaStore) -> None:
        """Nobody claims a run again before its new lease ends; after, anyone does."""
        await self._lapsed(store)
        first = await store.claim(owner="c", now=200.0, lease_until=1200.0, limit=10)
        assert len(first) == 3
        again = await store.claim(owner="d", now=1000.0, lease_until=2000.0, limit=10)
        assert [c.run.id for c in again] == ["live"]
        later = await store.claim(owner="e", now=1300.0, lease_until=2300.0, limit=10)
        assert sorted(c.run.id for c in later) == ["old-b", "old-run", "old-undo"]

    async def test_claim_with_own_also_takes_this_owners_runs(self, store: SagaStore) -> None:
        """A restarted owner takes back its unlapsed runs too; without ``own`` it does not."""
        await self._lapsed(store)
        without = await store.claim(owner="a", now=50.0, lease_until=1000.0, limit=10)
        assert without == []
        mine = await store.claim(owner="a", now=50.0, lease_until=1000.0, limit=10, own=True)
        assert sorted(c.run.id for c in mine) == ["live", "old-run", "old-undo"]

    async def test_claim_takes_at_most_its_limit(self, store: SagaStore) -> None:
        """The limit bounds each claim; the rest wait for the next; limit 0 is refused."""
        for n in range(5):
            await _create(store, run(f"r{n}"), owner="a", lease_until=100.0)
        first = await store.claim(owner="b", now=200.0, lease_until=1000.0, limit=2)
        rest = await store.claim(owner="b", now=200.0, lease_until=1000.0, limit=10)
        assert len(first) == 2
        assert len(rest) == 3
        assert sorted(c.run.id for c in first + rest) == [f"r{n}" for n in range(5)]
        with pytest.raises(InvalidArgumentError):
            await store.claim(owner="b", now=200.0, lease_until=1000.0, limit=0)

    async def test_a_claim_fences_out_the_run_s_old_holder(self, store: SagaStore) -> None:
        """The old holder's next save is RunTakenError and its renewal holds nothing; the new
        holder writes at the claimed version."""
        first = run("r1")
        old = await _create(store, first, owner="a", lease_until=100.0)
        [claimed] = await store.claim(owner="b", now=200.0, lease_until=1000.0, limit=10)
        assert claimed.run == first
        assert claimed.version != old
        with pytest.raises(RunTakenError):
            await store.save(_advanced(first, cursor=1), version=old, lease_until=300.0)
        assert await store.renew(["r1"], owner="a", lease_until=5000.0) == 0
        assert await store.renew(["r1"], owner="b", lease_until=1100.0) == 1
        await store.save(_advanced(first, cursor=2), version=claimed.version, lease_until=1100.0)
        assert (await store.get("r1")) == _advanced(first, cursor=2)

    async def test_two_stores_claiming_at_once_never_share_a_run(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """Replicas scanning together split the lapsed runs between them, each run once."""
        await asyncio.gather(
            *(_create(store, run(f"r{n:03}"), owner="dead", lease_until=100.0) for n in range(200))
        )
        one, other = database.store(), database.store()

        async def scan(replica: SagaStore, owner: str) -> list[str]:
            taken: list[str] = []
            while claimed := await replica.claim(owner=owner, now=200.0, lease_until=1e6, limit=7):
                taken += [c.run.id for c in claimed]
            return taken

        try:
            async with asyncio.timeout(WITHIN):
                found = await asyncio.gather(
                    scan(one, "one"), scan(other, "other"), scan(one, "one"), scan(other, "other")
                )
        finally:
            await one.aclose()
            await other.aclose()
        everything = [run_id for taken in found for run_id in taken]
        assert sorted(everything) == [f"r{n:03}" for n in range(200)]
        by_one = set(found[0] + found[2])
        assert await store.renew(sorted(by_one), owner="one", lease_until=2e6) == len(by_one)

    # -- take --------------------------------------------------------------------------

    async def test_take_takes_a_stuck_run_only(self, store: SagaStore) -> None:
        """NotFoundError for no run, ConflictError for one not stuck; a stuck one is leased to
        the taker, at a version its next save names."""
        with pytest.raises(NotFoundError):
            await store.take("ghost", owner="b", lease_until=100.0)
        await self._lapsed(store)
        for name in ("old-run", "live", "ended"):
            with pytest.raises(ConflictError) as caught:
                await store.take(name, owner="b", lease_until=100.0)
            assert not isinstance(caught.value, RunTakenError)
        claimed = await store.take("stuck", owner="b", lease_until=500.0)
        assert claimed.run == run("stuck", status="stuck")
        assert await store.renew(["stuck"], owner="b", lease_until=600.0) == 1
        retried = run("stuck", status="running", updated=5.0)
        await store.save(retried, version=claimed.version, lease_until=600.0)
        assert await store.get("stuck") == retried
        early = await store.claim(owner="c", now=550.0, lease_until=900.0, limit=10)
        late = await store.claim(owner="c", now=700.0, lease_until=900.0, limit=10)
        assert [c.run.id for c in early + late if c.run.id == "stuck"] == ["stuck"]
        assert [c.run.id for c in late] == ["stuck"]

    # -- renew -------------------------------------------------------------------------

    async def test_renew_extends_only_this_owner_s_leases(self, store: SagaStore) -> None:
        """It counts the runs the owner held; others' and unknown ids are left alone."""
        await _create(store, run("mine"), owner="a", lease_until=100.0)
        await _create(store, run("theirs"), owner="b", lease_until=100.0)
        renewed = await store.renew(["mine", "theirs", "ghost"], owner="a", lease_until=1000.0)
        assert renewed == 1
        assert await store.renew([], owner="a", lease_until=1000.0) == 0
        claimed = await store.claim(owner="c", now=500.0, lease_until=2000.0, limit=10)
        assert [c.run.id for c in claimed] == ["theirs"]

    # -- reading -----------------------------------------------------------------------

    async def test_runs_are_listed_most_recent_first_by_status_and_saga(
        self, store: SagaStore
    ) -> None:
        """Filters combine; the limit keeps the most recent; a bad limit is refused."""
        logged = [
            ("a", "order", "running", 5.0),
            ("b", "order", "stuck", 3.0),
            ("c", "refund", "stuck", 4.0),
            ("d", "order", "completed", 1.0),
            ("e", "refund", "running", 2.0),
        ]
        for run_id, saga, status, updated in logged:
            version = await _create(store, run(run_id, saga=saga), owner="a", lease_until=100.0)
            await store.save(
                run(run_id, saga=saga, status=status, updated=updated),  # type: ignore[arg-type]
                version=version,
                lease_until=100.0,
            )

        async def ids(**filters: Any) -> list[str]:
            return [r.id for r in await store.runs(**filters)]

        assert await ids() == ["a", "c", "b", "e", "d"]
        assert await ids(status="stuck") == ["c", "b"]
        assert await ids(saga="refund") == ["c", "e"]
        assert await ids(status="running", saga="order") == ["a"]
        assert await ids(status="compensated") == []
        assert await ids(limit=2) == ["a", "c"]
        assert (await store.runs(status="stuck"))[0] == run(
            "c", saga="refund", status="stuck", updated=4.0
        )
        assert await store.get("e") == run("e", saga="refund", updated=2.0)
        for limit in (0, 10_001):
            with pytest.raises(InvalidArgumentError):
                await store.runs(limit=limit)

    async def test_purge_deletes_only_ended_runs_older_than_its_bound(
        self, store: SagaStore
    ) -> None:
        """Completed and compensated runs changed before the bound go; the rest stay."""
        logged: list[tuple[str, Status, float]] = [
            ("old-done", "completed", 100.0),
            ("old-undone", "compensated", 100.0),
            ("new-done", "completed", 300.0),
            ("old-stuck", "stuck", 100.0),
            ("old-running", "running", 100.0),
        ]
        for run_id, status, updated in logged:
            version = await _create(store, run(run_id), owner="a", lease_until=100.0)
            await store.save(
                run(run_id, status=status, updated=updated), version=version, lease_until=100.0
            )
        assert await store.purge(ended_before=200.0) == 2
        assert sorted(r.id for r in await store.runs()) == ["new-done", "old-running", "old-stuck"]
        assert await store.get("old-done") is None
        assert await store.purge(ended_before=200.0) == 0

    # -- many writers ------------------------------------------------------------------

    async def test_many_concurrent_writes_all_land(
        self, database: SagaDatabase, store: SagaStore
    ) -> None:
        """A hundred runs, each created and saved five times, all at once: every write lands,
        and every run reads back as its last save."""

        async def drive(n: int) -> int:
            version = await _create(
                store,
                run(f"r{n:03}"),
                owner="a",
                lease_until=100.0,
                local=database.work(f"v{n:03}"),
            )
            for step in range(1, 6):
                version = await store.save(
                    run(f"r{n:03}", cursor=step % 3, updated=float(step)),
                    version=version,
                    lease_until=100.0,
                )
            return version

        async with asyncio.timeout(WITHIN):
            await asyncio.gather(*(drive(n) for n in range(100)))
        assert await database.rows() == [f"v{n:03}" for n in range(100)]
        logged = await store.runs(limit=1000)
        assert len(logged) == 100
        assert all(r.updated == 5.0 and r.cursor == 2 for r in logged)

    # -- closing and failing -------------------------------------------------------------

    async def test_aclose_finishes_the_writes_already_made(self, database: SagaDatabase) -> None:
        """Writes made before aclose() commit; one made after is a UsageError."""
        store = database.store()
        writes = [
            asyncio.create_task(_create(store, run(f"r{n}"), owner="a", lease_until=100.0))
            for n in range(50)
        ]
        await _CLOCK.sleep(0)  # every write made, none answered
        await store.aclose()
        async with asyncio.timeout(WITHIN):
            await asyncio.gather(*writes)
        with pytest.raises(UsageError):
            await _create(store, run("late"), owner="a", lease_until=100.0)
        await store.aclose()  # again: nothing to do
        reader = database.store()
        try:
            assert len(await reader.runs(limit=100)) == 50
        finally:
            await reader.aclose()

    async def test_an_unreachable_database_is_an_environment_fault_each_time(
        self, database: SagaDatabase
    ) -> None:
        """Writes and reads raise EnvironmentFaultError, again and again, never hang."""
        store = database.unreachable()
        try:
            async with asyncio.timeout(WITHIN):
                for _ in range(2):
                    with pytest.raises(EnvironmentFaultError):
                        await _create(store, run("r1"), owner="a", lease_until=100.0)
                    with pytest.raises(EnvironmentFaultError):
                        await store.claim(owner="a", now=1.0, lease_until=2.0, limit=10)
                    with pytest.raises(EnvironmentFaultError):
                        await store.get("r1")
        finally:
            await store.aclose()
