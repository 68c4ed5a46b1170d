"""The rollout driver: runs in ``meshkit up``, which owns the instances a rollout changes.

Every second it reads the rollouts under way from the control plane and
takes each one step: it looks at the service's replicas (ready or not),
asks the planner (``meshkit.policy.plan_rollout``) for the next target,
sets the traffic weights in the registry (before starting candidates, so
none gets traffic it was not meant to), starts or stops replicas to
match (the not-ready ones, then the newest, first; stopping drains), runs
the analysis or the smoke requests when the plan asks, and writes the
rollout back, naming the version it read. A person's command that came
in between makes that write a conflict: the step is simply taken again
from the new state at the next tick.

Nothing here is kept only in memory that a restart would need: the
record says where the rollout stands and the replicas say what runs. The
canary analysis keeps the metrics it read at the start of a step; after a
restart it reads them anew, and the step's analysis waits one interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

import msgspec

from meshkit._clock import Clock
from meshkit._plane_client import PlaneClient
from meshkit.control import RolloutRecord
from meshkit.deploy._analysis_sources import source_for
from meshkit.deploy._config import ServiceConfig
from meshkit.deploy._metrics_source import Counts
from meshkit.deploy._replica import Replica
from meshkit.errors import ConflictError, DeadlineExceededError, MeshkitError, PeerError
from meshkit.http import HTTPClient, Timeouts
from meshkit.policy import (
    Abort,
    Analyzed,
    BlueGreenConfig,
    CanaryConfig,
    Phase,
    Plan,
    RollingConfig,
    Rollout,
    SmokeTested,
    judge,
    plan_rollout,
    update_rollout,
)
from meshkit.policy import Replica as Seen
from meshkit.policy import (
    Target as PlanTarget,
)
from meshkit.registry import RemoteRegistry

if TYPE_CHECKING:
    from meshkit.deploy._supervisor import Supervisor

__all__ = ["RolloutDriver"]

log = logging.getLogger("meshkit.rollout")

_TICK = 1.0  # seconds between steps
_Records = msgspec.json.Decoder(dict[str, list[RolloutRecord]])


class RolloutDriver:
    """Drives the rollouts under way of the project ``supervisor`` runs."""

    def __init__(self, supervisor: Supervisor, plane_url: str, token: str, *, clock: Clock) -> None:
        self._supervisor = supervisor
        self._clock = clock
        self._http = HTTPClient(timeouts=Timeouts(connect=1.0, read=5.0))
        self._plane = PlaneClient(plane_url, token=token, http=self._http)
        self._registry = RemoteRegistry(plane_url, token=token, http=self._http)
        # The metrics read when a canary step began: (rollout id, step start) -> counts.
        self._baselines: dict[tuple[int, float], tuple[float, Counts]] = {}
        self._last_ready: dict[str, float] = {}  # by replica id: when it last answered ready

    async def aclose(self) -> None:
        await self._http.aclose()

    async def under_way(self) -> list[RolloutRecord]:
        """The rollouts under way, newest first."""
        answer = await self._plane.call("GET", "/v1/rollouts?active=true&limit=1000")
        return msgspec.convert(answer["rollouts"], list[RolloutRecord])

    @staticmethod
    def stable(record: RolloutRecord) -> ServiceConfig:
        return msgspec.convert(record.stable, ServiceConfig)

    async def run(self) -> None:
        """Step every rollout under way, every second, until cancelled."""
        failing = False
        while True:
            try:
                records = await self.under_way()
                failing = False
            except MeshkitError as error:
                # The control plane restarting, say: keep what runs, try again.
                if not failing:
                    log.warning("rollouts: %s; trying again every second", error)
                failing, records = True, []
            for record in records:
                if record.rollout.service not in self._supervisor.services:
                    continue  # a service this project no longer has: not ours to drive
                # One rollout's trouble (its Prometheus unreachable) holds up no other.
                try:
                    await self.step(record)
                except MeshkitError as error:
                    log.warning("rollout %d of %s: %s", record.id, record.rollout.service, error)
                except Exception:  # a bug here must not leave rollouts undriven for good
                    log.exception("rollout %d: a step failed; trying again", record.id)
            await self._clock.sleep(_TICK)

    async def step(self, record: RolloutRecord) -> None:
        """Take one rollout one step: plan, measure, save, and only then act, so a plan
        from a record a command changed meanwhile is never acted on."""
        service = record.rollout.service
        candidate = msgspec.convert(record.candidate, ServiceConfig)
        replicas = self._supervisor.replicas(service)
        ready = await asyncio.gather(*(self._supervisor.ready(r) for r in replicas))
        now = self._clock.time()
        for replica, up in zip(replicas, ready, strict=True):
            if up:
                self._last_ready[replica.id] = now
        # "Not ready for ready_timeout": since it started, or since it was last ready.
        seen = [
            Seen(r.id, r.candidate, up, max(r.started, self._last_ready.get(r.id, 0.0)))
            for r, up in zip(replicas, ready, strict=True)
        ]
        rollout = record.rollout
        wrong = await self._wrong_version(rollout, replicas)
        if wrong is not None:
            rollout = update_rollout(rollout, Abort(reason=wrong), now)
        made = plan_rollout(rollout, seen, now)
        candidates = [up for r, up in zip(replicas, ready, strict=True) if r.candidate]
        everyone = bool(candidates) and all(candidates)
        after = await self._measure(record.id, made, replicas, now, candidates_ready=everyone)
        if after != record.rollout:
            try:
                await self._plane.call(
                    "PUT",
                    f"/v1/rollouts/{record.id}",
                    body=msgspec.json.encode({"version": record.version, "rollout": after}),
                )
            except ConflictError:
                return  # a command came in meanwhile: the next tick plans from it
        await self._set_weights(made.rollout, made.target)
        self._match(service, made.target, candidate, replicas, ready)
        if after.phase is Phase.COMPLETED:
            self._supervisor.adopt(service, candidate)
        if after.phase.finished:
            self._baselines = {k: v for k, v in self._baselines.items() if k[0] != record.id}
            gone = {replica.id for replica in replicas}
            self._last_ready = {k: v for k, v in self._last_ready.items() if k not in gone}

    async def _wrong_version(self, rollout: Rollout, replicas: list[Replica]) -> str | None:
        """Why a split cannot work: an instance registered with another version than its
        definition's (its code's ``Service(version=...)`` overrides meshkit.toml's); a split
        by version would send it traffic meant for another, or none."""
        if isinstance(rollout.config, RollingConfig) or rollout.phase.finished:
            return None
        if rollout.phase is Phase.ROLLING_BACK:
            return None
        expected = {
            replica.id: rollout.candidate_version if replica.candidate else rollout.stable_version
            for replica in replicas
        }
        for instance in (await self._registry.lookup(rollout.service)).instances:
            wanted = expected.get(instance.id)
            if wanted is not None and instance.version != wanted:
                return (
                    f"{instance.id} registered as version {instance.version!r}, not"
                    f" {wanted!r}: traffic is split by the version instances register with"
                    " (does its code pass Service(version=...)?)"
                )
        return None

    async def _set_weights(self, rollout: Rollout, target: PlanTarget) -> None:
        weights = (
            None
            if target.weight is None
            else {
                rollout.candidate_version: target.weight,
                rollout.stable_version: 100 - target.weight,
            }
        )
        await self._registry.set_weights(rollout.service, weights)

    def _match(
        self,
        service: str,
        target: PlanTarget,
        candidate: ServiceConfig,
        replicas: list[Replica],
        ready: list[bool],
    ) -> None:
        """Start or stop replicas of each definition until the target's counts hold."""
        readiness = {r.id: is_ready for r, is_ready in zip(replicas, ready, strict=True)}
        stable = self._supervisor.definition(service)
        for is_candidate, wanted, config in (
            (False, target.stable, stable),
            (True, target.candidate, candidate),
        ):
            mine = [r for r in replicas if r.candidate == is_candidate]
            # Not ready first (they serve nobody), then the newest.
            going = sorted(mine, key=lambda r: (readiness[r.id], -r.started))
            for replica in going[: max(0, len(mine) - wanted)]:
                log.info("rollout of %s: stopping %s", service, replica.id)
                self._supervisor.stop_replica(replica)
            for _ in range(wanted - len(mine)):
                started = self._supervisor.start_replica(service, config, candidate=is_candidate)
                log.info("rollout of %s: started %s", service, started.id)

    async def _measure(
        self,
        rollout_id: int,
        made: Plan,
        replicas: list[Replica],
        now: float,
        *,
        candidates_ready: bool,
    ) -> Rollout:
        """The analysis or the smoke requests the plan asks for, applied to its rollout."""
        rollout = made.rollout
        if made.smoke:
            passed, detail = await self._smoke(rollout, replicas)
            return update_rollout(rollout, SmokeTested(passed=passed, detail=detail), now)
        config = rollout.config
        if (
            not isinstance(config, CanaryConfig)
            or rollout.phase is not Phase.PROGRESSING
            or rollout.step < 0
        ):
            return rollout
        source = source_for(config.analysis, self._http)
        key = (rollout_id, rollout.step_started)
        if key not in self._baselines:
            if not candidates_ready:
                # Started again (after a restart, say): the interval measures the step
                # only once its candidates serve.
                return rollout
            self._baselines[key] = (now, await source.begin(replicas))
            return rollout
        if made.analyze is None:
            return rollout
        since, mark = self._baselines[key]
        if now - since < config.interval:
            return rollout  # read late (after a restart): the step gets a whole interval
        canary, stable = await source.windows(mark, replicas, rollout, since, now)
        del self._baselines[key]  # measured: a failure above keeps it for the next try
        analysis = judge(canary, stable, config.analysis, now)
        return update_rollout(rollout, Analyzed(analysis), now)

    async def _smoke(self, rollout: Rollout, replicas: list[Replica]) -> tuple[bool, str]:
        """Every smoke path on every candidate must answer 2xx."""
        paths = rollout.config.smoke if isinstance(rollout.config, BlueGreenConfig) else ()
        failed = []
        for replica in (r for r in replicas if r.candidate):
            for path in paths:
                status = 0
                with contextlib.suppress(PeerError, DeadlineExceededError):
                    answer = await self._http.request("GET", "127.0.0.1", replica.port, path)
                    status = answer.status
                if not 200 <= status < 300:
                    failed.append(f"{replica.id} {path}: {status or 'no answer'}")
        return not failed, "; ".join(failed)
