"""Rollouts: a new definition of a service replacing the running one, step by step.

Three strategies, one shape. A ``Rollout`` is the durable record of one
rollout (its strategy's settings and how far it got); ``plan_rollout(rollout,
fleet, now)`` looks at the service's instances as they are and returns the
record as it goes on and a ``Target``: how many instances of the stable
and of the candidate definition should run, and the candidate version's
share of the traffic (``None``: no split, every instance alike). The
driver makes the instances match the target (starting instances, or
draining and stopping them, the not-ready ones first) and asks again, so
a plan lost in a crash is simply made again from what runs.

- **rolling**: candidates replace stable instances a few at a time; at
  most ``replicas + max_surge`` run, and no stop leaves fewer than
  ``replicas - max_unavailable`` ready. A candidate not ready within
  ``ready_timeout`` rolls the whole rollout back.
- **blue-green**: all the candidates start beside the stable instances,
  with no traffic; once ready (and the smoke requests passed, when there
  are any) all traffic moves to them at once; the stable ones stay
  ``keep`` seconds, so that an undo moves it back at once, then stop.
- **canary**: ``replicas`` of the candidate start with no traffic; then
  its share goes through ``steps``, each held for ``interval`` seconds and
  followed by an analysis (``meshkit.policy.judge``); a failed analysis
  keeps the step and analyses it again, and ``failure_limit`` failures
  roll back. After the last step the rest of the candidates start, take
  all the traffic, and the stable instances stop.

A rollback always ends with the stable version alone, as many instances
of it as when the rollout began, and no split. Times are Unix seconds:
the record outlives the process that drives it.

Everything else that moves a rollout is an event for ``update_rollout``:
what the driver measured when a plan asked (``Analyzed``, ``SmokeTested``)
and a person's commands (``Pause``, ``Resume``, ``Promote``, ``Abort``,
``Undo``; a ``ConflictError`` when the rollout's state does not allow one).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from itertools import pairwise

import msgspec

from meshkit.errors import ConfigError, ConflictError
from meshkit.policy._analysis import Analysis, AnalysisConfig

__all__ = [
    "COMMANDS",
    "Abort",
    "Analyzed",
    "BlueGreenConfig",
    "CanaryConfig",
    "Pause",
    "Phase",
    "Plan",
    "Promote",
    "Replica",
    "Resume",
    "RollingConfig",
    "Rollout",
    "RolloutConfig",
    "RolloutEvent",
    "SmokeTested",
    "Target",
    "Undo",
    "plan_rollout",
    "update_rollout",
]


def _check_timeout(where: str, seconds: float) -> None:
    if not seconds > 0:
        raise ConfigError(f"{where}.ready_timeout", f"must be positive, got {seconds}")


class _Strategy(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="strategy"
):
    """A strategy's settings, named by ``strategy`` when written out."""


class RollingConfig(_Strategy, frozen=True, tag="rolling"):
    """A rolling update: by default one extra instance at a time, none unavailable."""

    max_surge: int = 1
    max_unavailable: int = 0
    ready_timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.max_surge < 0 or self.max_unavailable < 0:
            raise ConfigError("deploy.max_surge", "max_surge and max_unavailable cannot be < 0")
        if self.max_surge == 0 and self.max_unavailable == 0:
            raise ConfigError(
                "deploy.max_surge",
                "max_surge and max_unavailable are both 0: no instance could ever be replaced",
            )
        _check_timeout("deploy", self.ready_timeout)


class BlueGreenConfig(_Strategy, frozen=True, tag="blue-green"):
    """A blue-green switch: ``smoke`` paths that must answer 2xx before it; the old colour
    kept ``keep`` seconds after it."""

    smoke: tuple[str, ...] = ()
    keep: float = 300.0
    ready_timeout: float = 60.0

    def __post_init__(self) -> None:
        for path in self.smoke:
            if not path.startswith("/"):
                raise ConfigError("deploy.smoke", f"a smoke path starts with '/', got {path!r}")
        if self.keep < 0:
            raise ConfigError("deploy.keep", f"cannot be negative, got {self.keep}")
        _check_timeout("deploy", self.ready_timeout)


class CanaryConfig(_Strategy, frozen=True, tag="canary"):
    """A canary: its traffic share by ``steps`` (percent), each held ``interval`` seconds."""

    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval: float = 60.0
    failure_limit: int = 2  # failed analyses that roll back
    replicas: int = 1  # of the candidate, until it is promoted
    ready_timeout: float = 60.0
    analysis: AnalysisConfig = msgspec.field(default_factory=AnalysisConfig)

    def __post_init__(self) -> None:
        if not self.steps:
            raise ConfigError("deploy.steps", "needs at least one step")
        if any(not 0 < step <= 100 for step in self.steps):
            raise ConfigError("deploy.steps", f"each step is a percent from 1 to 100: {self.steps}")
        if any(later <= earlier for earlier, later in pairwise(self.steps)):
            raise ConfigError("deploy.steps", f"must rise from step to step: {self.steps}")
        if not self.interval > 0:
            raise ConfigError("deploy.interval", f"must be positive, got {self.interval}")
        if self.failure_limit < 1:
            raise ConfigError("deploy.failure_limit", "must be at least 1")
        if self.replicas < 1:
            raise ConfigError("deploy.replicas", "a canary runs at least one instance")
        _check_timeout("deploy", self.ready_timeout)


RolloutConfig = RollingConfig | BlueGreenConfig | CanaryConfig


class Phase(enum.StrEnum):
    PROGRESSING = "progressing"
    SWITCHED = "switched"  # blue-green: traffic on the candidates, the stable ones kept
    PROMOTING = "promoting"  # canary: past its steps, the candidates taking over
    ROLLING_BACK = "rolling-back"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled-back"

    @property
    def finished(self) -> bool:
        return self in (Phase.COMPLETED, Phase.ROLLED_BACK)


class Replica(msgspec.Struct, frozen=True):
    """An instance of the service as the planner sees it (those being stopped are left out)."""

    id: str
    candidate: bool  # runs the new definition
    ready: bool  # registered, and answering its readiness check
    started: float  # Unix seconds


class Target(msgspec.Struct, frozen=True):
    """How many instances of each definition should run, and the candidate's traffic share."""

    stable: int
    candidate: int
    weight: int | None  # percent to the candidate version; None: no split


class Rollout(msgspec.Struct, frozen=True, kw_only=True):
    """One rollout of one service: what it does, and how far it got."""

    service: str
    config: RolloutConfig
    stable_version: str
    candidate_version: str
    stable_replicas: int  # running when it began: what a rollback restores
    replicas: int  # of the candidate, once it has taken over
    started_at: float
    phase: Phase = Phase.PROGRESSING
    paused: bool = False
    step: int = -1  # canary: the step whose share is set; -1 before the first
    step_started: float = 0.0  # canary: when that step's interval began
    failures: int = 0  # canary: failed analyses so far
    analyses: tuple[Analysis, ...] = ()
    smoke: bool | None = None  # blue-green: did the smoke requests pass
    switched_at: float = 0.0  # blue-green: when the traffic moved
    weight: int | None = None  # the candidate's share the last plan set
    reason: str = ""  # why it rolled back
    finished_at: float = 0.0

    @property
    def strategy(self) -> str:
        tag = msgspec.inspect.type_info(type(self.config)).tag  # type: ignore[attr-defined]
        return str(tag)

    def __post_init__(self) -> None:
        if self.replicas < 1 or self.stable_replicas < 0:
            raise ConfigError("replicas", "a rollout runs at least one instance")
        if isinstance(self.config, RollingConfig):
            return
        if not self.stable_version or not self.candidate_version:
            # Traffic is split by the versions instances register with.
            raise ConfigError(
                "version",
                f"a {self.strategy} rollout splits traffic by version: give {self.service}"
                " a version (version = ...) before and after",
            )
        if self.stable_version == self.candidate_version:
            # Two definitions of one version cannot be told apart.
            raise ConfigError(
                "version",
                f"a {self.strategy} rollout needs a new version: {self.service} runs"
                f" {self.stable_version!r} and the new definition says the same",
            )


class Plan(msgspec.Struct, frozen=True):
    """The rollout as it goes on; what should run; what to measure before asking again.

    ``analyze``: run the canary analysis over the interval from this time
    to now, and hand it to ``update_rollout`` as ``Analyzed``. ``smoke``:
    send the smoke requests to the candidates, and hand the outcome over
    as ``SmokeTested``.
    """

    rollout: Rollout
    target: Target
    analyze: float | None = None
    smoke: bool = False


def plan_rollout(rollout: Rollout, fleet: Sequence[Replica], now: float) -> Plan:
    """The next plan for ``rollout``, given the instances that run now."""
    old = [replica for replica in fleet if not replica.candidate]
    new = [replica for replica in fleet if replica.candidate]
    if rollout.phase is Phase.ROLLING_BACK:
        return _rolling_back(rollout, old, new, now)
    if rollout.phase.finished:
        return _finished(rollout)
    late = _late(new, rollout.config.ready_timeout, now)
    if late is not None:
        return _rolling_back(_roll_back(rollout, late), old, new, now)
    config = rollout.config
    if isinstance(config, RollingConfig):
        return _rolling(rollout, config, old, new, now)
    if isinstance(config, BlueGreenConfig):
        return _blue_green(rollout, config, old, new, now)
    return _canary(rollout, config, old, new, now)


def _late(new: list[Replica], timeout: float, now: float) -> str | None:
    """Why the rollout must roll back: a candidate not ready for ``timeout`` s (since it
    started, or since it was last ready: the driver says which in ``started``)."""
    for replica in new:
        if not replica.ready and now - replica.started > timeout:
            return f"{replica.id} was not ready for {timeout:g} s"
    return None


def _roll_back(rollout: Rollout, reason: str) -> Rollout:
    return msgspec.structs.replace(rollout, phase=Phase.ROLLING_BACK, paused=False, reason=reason)


def _finish(rollout: Rollout, phase: Phase, now: float) -> Plan:
    done = msgspec.structs.replace(rollout, phase=phase, weight=None, finished_at=now)
    return _finished(done)


def _finished(rollout: Rollout) -> Plan:
    if rollout.phase is Phase.COMPLETED:
        return Plan(rollout, Target(stable=0, candidate=rollout.replicas, weight=None))
    return Plan(rollout, Target(stable=rollout.stable_replicas, candidate=0, weight=None))


def _hold(rollout: Rollout, old: list[Replica], new: list[Replica]) -> Plan:
    """Paused: what runs keeps running, the share stays."""
    return Plan(rollout, Target(stable=len(old), candidate=len(new), weight=rollout.weight))


def _set(rollout: Rollout, stable: int, candidate: int, weight: int | None) -> Plan:
    """A plan that sets ``weight`` and says so in the record."""
    if rollout.weight != weight:
        rollout = msgspec.structs.replace(rollout, weight=weight)
    return Plan(rollout, Target(stable=stable, candidate=candidate, weight=weight))


def _rolling_back(rollout: Rollout, old: list[Replica], new: list[Replica], now: float) -> Plan:
    """Back to the stable instances alone, the way forward went: the stable ones come back
    first, the candidates taking no traffic under a split but still running, and stop only
    once as many stable instances as before are ready; then it is done."""
    stable = rollout.stable_replicas
    back = len(old) >= stable and all(replica.ready for replica in old)
    if back and not new:
        return _finish(rollout, Phase.ROLLED_BACK, now)
    # A rolling update split nothing: its candidates serve, by count, until the stable
    # instances are back (they may be all that is ready).
    weight = None if isinstance(rollout.config, RollingConfig) or not new else 0
    return _set(rollout, stable, 0 if back else len(new), weight)


def _rolling(
    rollout: Rollout, config: RollingConfig, old: list[Replica], new: list[Replica], now: float
) -> Plan:
    replicas = rollout.replicas
    if len(new) >= replicas and not old and all(replica.ready for replica in new):
        return _finish(rollout, Phase.COMPLETED, now)
    if rollout.paused:
        return _hold(rollout, old, new)
    ready = sum(replica.ready for replica in old) + sum(replica.ready for replica in new)
    old_unready = sum(not replica.ready for replica in old)
    # Not-ready stable instances may always go (the driver stops those first);
    # ready ones while at least replicas - max_unavailable stay ready.
    spare = max(0, ready - (replicas - config.max_unavailable))
    stable = len(old) - min(len(old), old_unready + spare)
    room = max(0, replicas + config.max_surge - (stable + len(new)))
    candidate = min(replicas, len(new) + room)
    return _set(rollout, stable, candidate, None)


def _blue_green(
    rollout: Rollout, config: BlueGreenConfig, old: list[Replica], new: list[Replica], now: float
) -> Plan:
    replicas, stable = rollout.replicas, rollout.stable_replicas
    if rollout.phase is Phase.SWITCHED:
        ready = len(new) >= replicas and all(replica.ready for replica in new)
        if rollout.paused or now < rollout.switched_at + config.keep or not ready:
            # The old colour stays until the new one serves whole (after a restart of
            # the driver, its replicas start again).
            return _set(rollout, stable, replicas, 100)
        if not old:
            return _finish(rollout, Phase.COMPLETED, now)
        return _set(rollout, 0, replicas, 100)
    if rollout.paused:
        return _hold(rollout, old, new)
    everyone_ready = len(new) >= replicas and all(replica.ready for replica in new)
    if not everyone_ready:
        return _set(rollout, stable, replicas, 0)
    if config.smoke and rollout.smoke is None:
        return msgspec.structs.replace(_set(rollout, stable, replicas, 0), smoke=True)
    switched = msgspec.structs.replace(rollout, phase=Phase.SWITCHED, switched_at=now)
    return _set(switched, stable, replicas, 100)


def _canary(
    rollout: Rollout, config: CanaryConfig, old: list[Replica], new: list[Replica], now: float
) -> Plan:
    stable = rollout.stable_replicas
    if rollout.phase is Phase.PROMOTING:
        return _promoting(rollout, old, new, now)
    if rollout.paused:
        return _hold(rollout, old, new)
    if rollout.step < 0:
        if len(new) >= config.replicas and all(replica.ready for replica in new):
            first = msgspec.structs.replace(rollout, step=0, step_started=now)
            return _set(first, stable, config.replicas, config.steps[0])
        return _set(rollout, stable, config.replicas, 0)
    weighted = _set(rollout, stable, config.replicas, config.steps[rollout.step])
    if now >= rollout.step_started + config.interval:
        return msgspec.structs.replace(weighted, analyze=rollout.step_started)
    return weighted


def _promoting(rollout: Rollout, old: list[Replica], new: list[Replica], now: float) -> Plan:
    """Past the steps: every candidate starts, then takes all the traffic; the stable ones stop."""
    replicas = rollout.replicas
    if rollout.paused:
        return _hold(rollout, old, new)
    if len(new) < replicas or not all(replica.ready for replica in new):
        return _set(rollout, rollout.stable_replicas, replicas, rollout.weight)
    if not old:
        return _finish(rollout, Phase.COMPLETED, now)
    return _set(rollout, 0, replicas, 100)


# -- events: what the driver measured, and a person's commands --------------------------------


class Analyzed(msgspec.Struct, frozen=True, tag="analyzed"):
    """The analysis a plan asked for."""

    analysis: Analysis


class SmokeTested(msgspec.Struct, frozen=True, tag="smoke-tested"):
    """The outcome of the smoke requests a plan asked for; ``detail`` says what failed."""

    passed: bool
    detail: str = ""


class Pause(msgspec.Struct, frozen=True, tag="pause"):
    """Hold the rollout where it is: no step, switch or stop until ``Resume``."""


class Resume(msgspec.Struct, frozen=True, tag="resume"):
    """Go on from a pause; a canary's step gets a whole interval again."""


class Promote(msgspec.Struct, frozen=True, tag="promote"):
    """Skip what is left: a canary's steps, a blue-green's smoke or its keeping of the old."""


class Abort(msgspec.Struct, frozen=True, tag="abort"):
    """Roll back now, saying why (a person's abort, or something the driver found)."""

    reason: str = "aborted"


class Undo(msgspec.Struct, frozen=True, tag="undo"):
    """Back to the stable version: at once after a blue-green switch (its instances still
    run), otherwise as ``Abort``. A completed rollout cannot be undone: deploy the old again."""


Command = Pause | Resume | Promote | Abort | Undo
RolloutEvent = Analyzed | SmokeTested | Command
COMMANDS: dict[str, type[Command]] = {
    "pause": Pause,
    "resume": Resume,
    "promote": Promote,
    "abort": Abort,
    "undo": Undo,
}


def update_rollout(rollout: Rollout, event: RolloutEvent, now: float) -> Rollout:
    """The rollout after ``event``. Measurements that come too late (the rollout moved on
    meanwhile) are ignored; a command its state does not allow is a ``ConflictError``."""
    if isinstance(event, Analyzed):
        return _analyzed(rollout, event.analysis, now)
    if isinstance(event, SmokeTested):
        return _smoke_tested(rollout, passed=event.passed, detail=event.detail)
    if isinstance(event, Undo) and rollout.phase is Phase.COMPLETED:
        raise ConflictError(
            f"the rollout of {rollout.service} completed and its old instances are gone:"
            f" deploy version {rollout.stable_version!r} again to go back"
        )
    name = type(event).__name__.lower()
    if rollout.phase.finished or rollout.phase is Phase.ROLLING_BACK:
        raise ConflictError(
            f"cannot {name} the rollout of {rollout.service}: it is {rollout.phase.value}"
        )
    if isinstance(event, Pause):
        return msgspec.structs.replace(rollout, paused=True)
    if isinstance(event, Resume):
        if not rollout.paused:
            raise ConflictError(f"the rollout of {rollout.service} is not paused")
        return msgspec.structs.replace(rollout, paused=False, step_started=now)
    if isinstance(event, Promote):
        return _promoted(rollout, now)
    return _roll_back(rollout, event.reason if isinstance(event, Abort) else "undone")


def _analyzed(rollout: Rollout, analysis: Analysis, now: float) -> Rollout:
    """On to the next step (or promotion), the same step again, or, at the
    ``failure_limit``-th failure, a rollback."""
    config = rollout.config
    if (
        not isinstance(config, CanaryConfig)
        or rollout.phase is not Phase.PROGRESSING
        or rollout.paused
        or rollout.step < 0
    ):
        return rollout
    analyses = (*rollout.analyses, analysis)
    if analysis.passed:
        if rollout.step + 1 < len(config.steps):
            return msgspec.structs.replace(
                rollout, analyses=analyses, step=rollout.step + 1, step_started=now
            )
        return msgspec.structs.replace(rollout, analyses=analyses, phase=Phase.PROMOTING)
    failures = rollout.failures + 1
    failed = msgspec.structs.replace(
        rollout, analyses=analyses, failures=failures, step_started=now
    )
    if failures >= config.failure_limit:
        reasons = "; ".join(analysis.reasons())
        return _roll_back(failed, f"analysis failed {failures} time(s): {reasons}")
    return failed


def _smoke_tested(rollout: Rollout, *, passed: bool, detail: str) -> Rollout:
    if not isinstance(rollout.config, BlueGreenConfig) or rollout.phase is not Phase.PROGRESSING:
        return rollout
    if passed:
        return msgspec.structs.replace(rollout, smoke=True)
    return _roll_back(msgspec.structs.replace(rollout, smoke=False), f"smoke requests: {detail}")


def _promoted(rollout: Rollout, now: float) -> Rollout:
    config = rollout.config
    if isinstance(config, RollingConfig):
        raise ConflictError(
            f"the rolling update of {rollout.service} has no steps to skip: it goes as fast"
            " as its instances become ready"
        )
    if isinstance(config, BlueGreenConfig):
        if rollout.phase is Phase.SWITCHED:
            return msgspec.structs.replace(rollout, paused=False, switched_at=now - config.keep)
        return msgspec.structs.replace(rollout, paused=False, smoke=True)
    return msgspec.structs.replace(rollout, paused=False, phase=Phase.PROMOTING)
