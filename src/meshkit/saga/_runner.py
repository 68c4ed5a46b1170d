"""The saga driver: it carries out what the run machine decides, writing ahead each time.

One task drives each run: it asks ``advance`` what to do, writes the run
that announces it, and does it (an action, a compensation, a wait). The
run's task is not the caller's: a request that started a saga and went
away leaves it going. The runner holds a lease on each run it drives and
renews them together; a runner that dies stops renewing, and another
runner sharing the database claims the runs whose lease lapsed. Every
write names the run's version, so a runner that lost a run to another
(it hung past its lease) fails its next write and lets go.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import os
import secrets
import signal
from collections.abc import Callable, Iterable
from contextvars import Context
from typing import Any

import msgspec
from opentelemetry import trace

from meshkit._clock import Clock, SystemClock
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    InvalidArgumentError,
    MeshkitError,
    NotFoundError,
    RunTakenError,
    UsageError,
)
from meshkit.observe import LIFECYCLE
from meshkit.observe._prometheus import exemplar
from meshkit.policy import Backoff
from meshkit.policy import _check as check
from meshkit.saga._definition import Saga, Step, StepContext, StepFailed
from meshkit.saga._machine import (
    Action,
    Compensate,
    Event,
    Failed,
    Finish,
    Resume,
    Retry,
    RunStep,
    Succeeded,
    Transition,
    UndoFailed,
    Undone,
    Unknown,
    Wait,
    advance,
)
from meshkit.saga._model import ACTIVE, Run, RunChange, Status, StepState
from meshkit.saga._sqlite import SqliteSagaStore
from meshkit.saga._store import SagaStore
from meshkit.saga._trace import action_span, current_context, ended, outcome, run_span

__all__ = ["SagaRunner"]

_log = logging.getLogger("meshkit.saga")

_MAX_ERROR = 500
# Between tries of a saga's on_end that raised.
_END_BACKOFF = Backoff(initial=0.5, maximum=30.0)


def _builtins(value: Any) -> Any:
    """What msgspec cannot encode itself: pydantic models (``model_dump``)."""
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError(f"cannot log a {type(value).__name__} as JSON")


def _plain(value: Any) -> Any:
    """``value`` as JSON holds it (what the log keeps); ``TypeError`` if it cannot be."""
    return msgspec.to_builtins(value, enc_hook=_builtins)


class SagaRunner:
    """Starts and drives the runs of ``sagas``, logged in ``store``: ``async with`` it.

    ``owner`` names this runner in the log's leases: give the same name to
    a process restarted in its place (a service's instance id), so it takes
    its runs back at once instead of after the lease. ``lease`` is how long
    a runner that stopped renewing keeps its runs; every ``scan`` seconds
    the runner claims runs whose lease lapsed. Ended runs are purged after
    ``keep`` seconds (a week by default). The runner owns ``store``.

    ``crash_at`` is for reliability tests: the process kills itself (SIGKILL,
    as ``kill -9``) the first time a run it began reaches that point:
    ``begun`` (the run is logged), ``before:STEP`` (the step is logged
    started), ``after:STEP`` (its action returned, not yet logged),
    ``logged:STEP`` (its outcome is logged); ``STEP:undo`` in place of
    ``STEP`` for its compensation. ``meshkit up`` passes it to a service
    as ``MESHKIT_SAGA_CRASH_AT``.
    """

    def __init__(
        self,
        store: SagaStore,
        sagas: Iterable[Saga],
        *,
        owner: str | None = None,
        lease: float = 10.0,
        scan: float = 1.0,
        keep: float = 7 * 86400.0,
        clock: Clock | None = None,
        crash_at: str | None = None,
    ) -> None:
        self.store = store
        self.sagas: dict[str, Saga] = {}
        for saga in sagas:
            if saga.name in self.sagas:
                raise ConfigError("sagas", f"two sagas named {saga.name!r}")
            if not saga.steps:
                raise ConfigError("sagas", f"saga {saga.name!r} has no steps")
            if isinstance(store, SqliteSagaStore):
                _check_blocking(saga)
            self.sagas[saga.name] = saga
        self._plans = {
            name: tuple(step.plan() for step in saga.steps) for name, saga in self.sagas.items()
        }
        self.owner = owner or f"runner-{secrets.token_hex(6)}"
        # Run ids: a random prefix per runner and a counter. Unique across
        # replicas (48 random bits; the log refuses a duplicate id anyway),
        # and far cheaper than reading the OS's randomness for each run.
        self._ids = map(f"{secrets.token_hex(6)}-{{:x}}".format, itertools.count(1))
        self.lease = check.seconds("lease", lease)
        self.scan = check.seconds("scan", scan)
        if self.scan >= self.lease:
            raise ConfigError("scan", f"must be shorter than the lease ({self.lease:g} s)")
        self.keep = check.seconds("keep", keep)
        self._clock = clock or SystemClock()
        self._driving: dict[str, asyncio.Task[Run]] = {}
        self._loops: list[asyncio.Task[None]] = []
        self._closed = False
        self._crash_at = crash_at
        self._begun: set[str] = set()
        # Instrumentation: each run begun here, and each run that came to rest here.
        self.on_run: list[Callable[[RunChange], None]] = []

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Take back this owner's unfinished runs and those whose lease lapsed; drive them."""
        if self._loops or self._closed:
            raise UsageError("a SagaRunner starts once")
        await self._claim(own=True)
        self._loops = [
            asyncio.create_task(self._every(self.lease / 3, self._renew), name="saga-renew"),
            asyncio.create_task(self._every(self.scan, self._claim), name="saga-claim"),
            asyncio.create_task(self._every(60.0, self._purge), name="saga-purge"),
        ]

    async def aclose(self) -> None:
        """Stop driving and close the store. The runs stay in the log, their leases ended,
        for another runner sharing it to take over at its next scan (or for this owner's
        successor to take back when it starts)."""
        if self._closed:
            return
        self._closed = True
        driven = list(self._driving)
        try:
            tasks: list[asyncio.Task[Any]] = [*self._loops, *self._driving.values()]
            for task in tasks:
                task.cancel()
            if tasks:  # each task's own failure was logged where it happened
                await asyncio.wait(tasks)
            self._driving.clear()
            if driven:
                await self.store.renew(driven, owner=self.owner, lease_until=0.0)
        except MeshkitError as error:  # they lapse with their lease instead
            _log.warning("saga runner: could not hand its runs over: %s", error)
        finally:
            await self.store.aclose()

    async def __aenter__(self) -> SagaRunner:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    # -- starting and reading runs -------------------------------------------------------

    async def begin(
        self,
        saga: Saga | str,
        input: Any = None,  # noqa: A002 (the saga's input, as DBOS and Temporal name it)
        *,
        run_id: str | None = None,
        local: Callable[[Any], Any] | None = None,
    ) -> Run:
        """Log a new run of ``saga`` and start driving it: the run as logged.

        ``input`` is anything JSON can hold (pydantic models too). With
        ``local``, ``local(tx)`` runs in the transaction that logs the run
        (the order's row and the run commit together); what it returns,
        unless ``None``, is the run's input (the new order's id, say). For
        a PostgreSQL store it is a coroutine function. Raises
        ``InvalidArgumentError`` for an unknown saga, an input JSON cannot
        hold, or a ``run_id`` in use; whatever ``local`` raises propagates.
        """
        if self._closed:
            raise UsageError("the saga runner is closed: no new runs")
        definition = self._saga(saga)
        run_id = run_id or next(self._ids)
        plan = self._plans[definition.name]
        made: list[Transition] = []

        def first(value: Any) -> Run:
            try:
                plain = _plain(value)
            except (TypeError, msgspec.EncodeError) as error:
                raise InvalidArgumentError("input", str(error)) from error
            now = self._clock.time()
            fresh = Run(
                id=run_id,
                saga=definition.name,
                plan=plan,
                steps=tuple(StepState() for _ in plan),
                input=plain,
                created=now,
                updated=now,
                trace_context=current_context(),
            )
            made.append(advance(fresh, Resume(), now))
            return made[-1].run

        def work(tx: Any) -> Any:
            assert local is not None
            given = local(tx)
            if inspect.isawaitable(given):
                return _after(given, lambda value: first(input if value is None else value))
            return first(input if given is None else given)

        lease_until = self._clock.time() + self.lease
        new = first(input) if local is None else work
        run, version = await self.store.create(new, owner=self.owner, lease_until=lease_until)
        if self._crash_at is not None:
            self._begun.add(run.id)
            self._crash("begun", None, run.id)
        self._drive(made[-1], version)
        if self.on_run:
            self._report(run)
        return run

    async def wait(self, run_id: str, timeout: float) -> Run:  # noqa: ASYNC109 (a bound, not a deadline)
        """The run once it ends or is stuck, or as it stands after ``timeout`` seconds.

        ``NotFoundError`` if the log has no such run.
        """
        task = self._driving.get(run_id)
        if task is not None:
            # asyncio.wait, not wait_for: the run's task must go on when the wait ends.
            await asyncio.wait((task,), timeout=timeout)
            if task.done() and not task.cancelled():
                driven = task.result()
                if driven.status not in ACTIVE:
                    return driven  # else it was taken over, or the log failed: read it
        run = await self.store.get(run_id)
        if run is None:
            raise NotFoundError(f"no saga run {run_id!r}")
        return run

    async def get(self, run_id: str) -> Run | None:
        return await self.store.get(run_id)

    async def runs(
        self, *, status: Status | None = None, saga: str | None = None, limit: int = 100
    ) -> list[Run]:
        return await self.store.runs(status=status, saga=saga, limit=limit)

    async def retry(self, run_id: str) -> Run:
        """Set the stuck run ``run_id`` going again, driven here: the run as it now stands.

        ``NotFoundError`` if there is no such run, ``ConflictError`` if it is not stuck.
        """
        now = self._clock.time()
        claimed = await self.store.take(run_id, owner=self.owner, lease_until=now + self.lease)
        _log.info("saga run %s retried", run_id)
        retried = advance(claimed.run, Retry(), now)
        version = await self.store.save(
            retried.run, version=claimed.version, lease_until=now + self.lease
        )
        self._drive(retried, version)
        return retried.run

    @property
    def driving(self) -> int:
        """How many runs this runner drives now."""
        return len(self._driving)

    # -- driving ------------------------------------------------------------------------

    def _drive(self, transition: Transition, version: int, *, found: Run | None = None) -> None:
        """Drive a run from ``transition``: written already, or decided from the run ``found``
        in the log (then written first, before the action it announces)."""
        run_id = transition.run.id
        # A context of its own: a run started by a request must not inherit the
        # request's deadline (or anything else of it), since it outlives it.
        task = asyncio.create_task(
            self._carry_out(transition, version, found=found),
            name=f"saga-{run_id}",
            context=Context(),
        )
        self._driving[run_id] = task

        def forget(done: asyncio.Task[Run]) -> None:
            if self._driving.get(run_id) is done:
                del self._driving[run_id]

        task.add_done_callback(forget)

    async def _carry_out(self, transition: Transition, version: int, *, found: Run | None) -> Run:
        with run_span(transition.run, resumed=found is not None) as span:
            run = await self._carry_out_traced(transition, version, found=found)
            ended(span, run)
            return run

    async def _carry_out_traced(
        self, transition: Transition, version: int, *, found: Run | None
    ) -> Run:
        run, action = transition
        saga = self.sagas[run.saga]
        results: dict[str, Any] = {}
        try:
            if found is not None:  # a run taken back: what it decided is written before it acts
                (run, action), version = await self._write(saga, found, transition, version, None)
            while not isinstance(action, Finish):
                point = _point(run, action) if self._crash_at else None
                self._crash("before", point, run.id)
                if isinstance(action, RunStep) and run.plan[action.step].local:
                    with action_span(run, action.step, action.attempt, undo=False):
                        (run, action), version = await self._local(
                            saga, run, action, results, version
                        )
                    self._crash("logged", point, run.id)
                    continue
                event = await self._act(saga, run, action, results)
                self._crash("after", point, run.id)
                if isinstance(event, Unknown | UndoFailed):
                    _log_failure(run, action, event)
                following = advance(run, event, self._clock.time())
                (run, action), version = await self._write(saga, run, following, version, point)
        except RunTakenError:
            _log.info("saga run %s: taken over by another runner", run.id)
        except MeshkitError as error:
            # The log cannot be written: stop, and let the lease lapse so that
            # this runner's next scan (or another's) takes it back.
            _log.warning("saga run %s: stopped, the log failed: %s", run.id, error)
        else:
            if action.status == "stuck":
                _log.error("saga run %s of %s is stuck: %s", run.id, run.saga, run.note)
            if self.on_run:
                self._report(run)
        return run

    def _report(self, run: Run) -> None:
        found = exemplar()
        change = RunChange(
            saga=run.saga,
            run_id=run.id,
            status=run.status,
            duration=0.0 if run.status == "running" else max(0.0, run.updated - run.created),
            trace_id=None if found is None else found["trace_id"],
        )
        for hook in self.on_run:
            hook(change)

    async def _write(
        self, saga: Saga, run: Run, following: Transition, version: int, point: str | None
    ) -> tuple[Transition, int]:
        """Write ``following``'s run if it changed (its end with the saga's on_end): then act."""
        if following.run is run:
            return following, version
        if isinstance(following.action, Finish) and saga.end_hook is not None:
            version = await self._end(saga, following, version)
        else:
            version = await self.store.save(
                following.run, version=version, lease_until=self._clock.time() + self.lease
            )
        self._crash("logged", point, run.id)
        return following, version

    async def _act(self, saga: Saga, run: Run, action: Action, results: dict[str, Any]) -> Event:
        if isinstance(action, Wait):
            await self._clock.sleep(max(0.0, action.until - self._clock.time()))
            return Resume()
        assert isinstance(action, RunStep | Compensate)
        undo = isinstance(action, Compensate)
        step = saga.steps[action.step]
        context = self._context(run, action.step, action.attempt, results, undo=undo)
        with action_span(run, action.step, action.attempt, undo=undo) as span:
            event = await (_undo(step, context) if undo else _attempt(step, context))
            outcome(span, event)
            return event

    async def _local(
        self, saga: Saga, run: Run, action: RunStep, results: dict[str, Any], version: int
    ) -> tuple[Transition, int]:
        """Run a local step in the transaction that logs its outcome."""
        step = saga.steps[action.step]
        context = self._context(run, action.step, action.attempt, results, undo=False)
        done: list[Transition] = []

        def logged(tx: Any, result: Any) -> Any:
            transition = advance(run, Succeeded(_plain(result)), self._clock.time())
            done.append(transition)
            if isinstance(transition.action, Finish) and saga.end_hook is not None:
                # The run's end is logged in this transaction: its local work joins it.
                ended = saga.end_hook(tx, transition.run)
                if inspect.isawaitable(ended):
                    return _after(ended, lambda _: transition.run)
            return transition.run

        def work(tx: Any) -> Any:
            result = step.action(tx, context)  # type: ignore[call-arg]
            if inspect.isawaitable(result):
                return _after(result, lambda value: logged(tx, value))
            return logged(tx, result)

        now = self._clock.time()
        try:
            _, version = await self.store.save_local(
                run.id, work, version=version, lease_until=now + self.lease
            )
        except (EnvironmentFaultError, RunTakenError):
            raise  # the log failed, not the step: nothing is counted against it
        except StepFailed as refusal:
            refused = Failed(refusal.detail, refusal.status, refusal.data)
            outcome(trace.get_current_span(), refused)
            failed = advance(run, refused, self._clock.time())
            return await self._write(saga, run, failed, version, None)
        except Exception as error:  # noqa: BLE001 (the step's failure: its transaction rolled back)
            failure = Unknown(_describe(error))
            outcome(trace.get_current_span(), failure)
            _log_failure(run, action, failure)
            failed = advance(run, failure, self._clock.time())
            version = await self.store.save(
                failed.run, version=version, lease_until=now + self.lease
            )
            return failed, version
        for callback in context._after_commit:
            _call_quietly(callback, run.id)
        return done[-1], version

    async def _end(self, saga: Saga, ending: Transition, version: int) -> int:
        """Log the run's end with the saga's on_end in one transaction: the new version.

        A hook that raises is tried again, with a backoff, until it passes:
        the end is decided, and the steps are not run again for it.
        """
        hook = saga.end_hook
        assert hook is not None

        def work(tx: Any) -> Any:
            outcome = hook(tx, ending.run)
            if inspect.isawaitable(outcome):
                return _after(outcome, lambda _: ending.run)
            return ending.run

        for failures in itertools.count(1):
            lease_until = self._clock.time() + self.lease
            try:
                _, version = await self.store.save_local(
                    ending.run.id, work, version=version, lease_until=lease_until
                )
            except MeshkitError:
                raise
            except Exception:  # noqa: BLE001 (the application's hook: logged, tried again)
                _log.exception(
                    "saga run %s of %s: its on_end failed (%d times); trying again",
                    ending.run.id,
                    ending.run.saga,
                    failures,
                )
                await self._clock.sleep(_END_BACKOFF.ceiling(failures))
                continue
            return version
        raise AssertionError("unreachable")  # pragma: no cover

    def _context(
        self, run: Run, index: int, attempt: int, results: dict[str, Any], *, undo: bool
    ) -> StepContext:
        """What step ``index`` is told; ``results`` holds the run's results as far as known."""
        if undo:
            for plan, state in zip(run.plan, run.steps, strict=True):
                if state.phase in ("done", "undoing", "undone"):
                    results[plan.name] = state.result
        else:  # going forward, every step before this one is done: add the newest
            for number in range(len(results), index):
                results[run.plan[number].name] = run.steps[number].result
        name = run.plan[index].name
        own = run.steps[index]
        return StepContext(
            run_id=run.id,
            saga=run.saga,
            step=name,
            attempt=attempt,
            idempotency_key=f"{run.id}:{name}{':undo' if undo else ''}",
            input=run.input,
            results=results,
            result=own.result if undo else None,
        )

    def _crash(self, when: str, point: str | None, run_id: str) -> None:
        """Die here (SIGKILL) if this is the test's crash point: ``when:point``, or ``begun``."""
        if self._crash_at is None or run_id not in self._begun:
            return
        if self._crash_at == (f"{when}:{point}" if point is not None else when):
            _log.warning(
                "saga run %s: crashing at %s (MESHKIT_SAGA_CRASH_AT)", run_id, self._crash_at
            )
            os.kill(os.getpid(), signal.SIGKILL)

    # -- leases -------------------------------------------------------------------------

    async def _renew(self) -> None:
        if self._driving:
            until = self._clock.time() + self.lease
            await self.store.renew(list(self._driving), owner=self.owner, lease_until=until)

    async def _claim(self, *, own: bool = False) -> None:
        if len(self._driving) >= 10_000:
            return  # enough on hand: leave the rest to other runners, or the next scan
        now = self._clock.time()
        claimed = await self.store.claim(
            owner=self.owner, now=now, lease_until=now + self.lease, limit=500, own=own
        )
        for run, version in claimed:
            if run.saga not in self.sagas:
                _log.error("saga run %s: no saga %r defined here", run.id, run.saga)
                continue
            stale = self._driving.pop(run.id, None)
            if stale is not None:
                # Its lease lapsed under it (the loop stalled longer than the lease):
                # the claim fenced its next write off; drive the run anew.
                stale.cancel()
            # On the console too: a run taken back after a crash is news there.
            _log.info(
                "saga run %s of %s: resumed (%s)", run.id, run.saga, run.status, extra=LIFECYCLE
            )
            self._drive(advance(run, Resume(), now), version, found=run)

    async def _purge(self) -> None:
        purged = await self.store.purge(ended_before=self._clock.time() - self.keep)
        if purged:
            _log.info("purged %d ended saga runs", purged)

    async def _every(self, seconds: float, work: Callable[[], Any]) -> None:
        while True:
            await self._clock.sleep(seconds)
            try:
                await work()
            except MeshkitError as error:
                _log.warning("saga runner: %s", error)
            except Exception:  # noqa: BLE001 (a dead loop would stop takeovers for good)
                _log.exception("saga runner: %s failed", getattr(work, "__name__", work))

    def _saga(self, saga: Saga | str) -> Saga:
        name = saga if isinstance(saga, str) else saga.name
        found = self.sagas.get(name)
        if found is None:
            raise InvalidArgumentError("saga", f"no saga {name!r} in this runner")
        return found


async def _attempt(step: Step, context: StepContext) -> Event:
    limit = asyncio.timeout(step.timeout)
    try:
        async with limit:
            result = await step.action(context)  # type: ignore[call-arg]
    except StepFailed as failure:
        return Failed(failure.detail, failure.status, failure.data)
    except TimeoutError as error:
        # The step's own limit, or a deadline of the call it made (also a TimeoutError).
        return Unknown(
            f"timed out after {step.timeout:g} s" if limit.expired() else _describe(error)
        )
    except Exception as error:  # noqa: BLE001 (an unknown outcome: the machine retries it)
        return Unknown(_describe(error))
    try:
        return Succeeded(_plain(result))
    except (TypeError, msgspec.EncodeError) as error:
        return Unknown(f"its result cannot be logged: {error}")


async def _undo(step: Step, context: StepContext) -> Event:
    assert step.undo is not None
    limit = asyncio.timeout(step.undo_timeout)
    try:
        async with limit:
            await step.undo(context)
    except TimeoutError as error:
        expired = limit.expired()
        return UndoFailed(
            f"timed out after {step.undo_timeout:g} s" if expired else _describe(error)
        )
    except Exception as error:  # noqa: BLE001 (retried by the machine, then stuck)
        return UndoFailed(_describe(error))
    return Undone()


def _check_blocking(saga: Saga) -> None:
    """SQLite runs local work on its writer thread: plain functions only."""
    local = [step.action for step in saga.steps if step.local]
    for work in [*local, *([saga.end_hook] if saga.end_hook else [])]:
        if inspect.iscoroutinefunction(work):
            name = getattr(work, "__name__", repr(work))
            raise ConfigError(
                "sagas", f"{saga.name}: {name} must be a plain def for a SQLite saga log"
            )


def _point(run: Run, action: Action) -> str:
    """Where a run stands, as crash points name it: ``STEP`` or ``STEP:undo``."""
    if isinstance(action, RunStep):
        return run.plan[action.step].name
    if isinstance(action, Compensate):
        return f"{run.plan[action.step].name}:undo"
    return "wait"


def _log_failure(run: Run, action: Action, event: Unknown | UndoFailed) -> None:
    """A warning for each failed attempt: an outage shows while the run retries through it."""
    assert isinstance(action, RunStep | Compensate)
    what = "step" if isinstance(action, RunStep) else "compensation of"
    _log.warning(
        "saga run %s of %s: %s %s, attempt %d: %s",
        run.id,
        run.saga,
        what,
        run.plan[action.step].name,
        action.attempt,
        event.error,
    )


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= _MAX_ERROR else text[: _MAX_ERROR - 1] + "…"


async def _after(awaitable: Any, then: Callable[[Any], Any]) -> Any:
    """``then`` of what ``awaitable`` gives, awaited too if it is awaitable (local async work)."""
    value = then(await awaitable)
    if inspect.isawaitable(value):
        value = await value
    return value


def _call_quietly(callback: Callable[[], object], run_id: str) -> None:
    try:
        callback()
    except Exception:  # noqa: BLE001 (the step is logged done; a callback cannot undo that)
        _log.exception("saga run %s: an on_commit callback failed", run_id)
