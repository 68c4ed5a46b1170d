"""The rollout driver against a real control plane and a supervisor that only keeps lists:
what it saves, what it acts on, and what it refuses to act on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from meshkit.control import ControlPlane, RolloutRecord
from meshkit.deploy import ServiceConfig
from meshkit.deploy._replica import Replica
from meshkit.deploy._rollout_driver import RolloutDriver
from meshkit.policy import CanaryConfig, Pause, Phase, Rollout
from meshkit.registry import Instance
from meshkit.testing import FakeClock

TOKEN = "driver-test-token-0123456789"
STABLE = ServiceConfig(app="pay:app", version="1.0.0")
CANDIDATE = ServiceConfig(app="pay:app", version="1.1.0")


class Supervisor:
    """What the driver asks of ``meshkit up``, kept in lists; every replica answers ready."""

    services = frozenset({"payments"})

    def __init__(self) -> None:
        self.fleet = [self._replica(f"payments-{n}", candidate=False) for n in (1, 2)]
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.adopted: list[ServiceConfig] = []

    def _replica(self, name: str, *, candidate: bool) -> Replica:
        config = CANDIDATE if candidate else STABLE
        return Replica("payments", name, 9000, config, None, None, candidate, 0.0)  # type: ignore[arg-type]

    def replicas(self, name: str) -> list[Replica]:
        return list(self.fleet)

    def definition(self, name: str) -> ServiceConfig:
        return STABLE

    async def ready(self, replica: Replica) -> bool:
        return True

    def start_replica(self, name: str, config: ServiceConfig, *, candidate: bool) -> Replica:
        replica = self._replica(f"payments-{len(self.fleet) + 1}", candidate=candidate)
        self.fleet.append(replica)
        self.started.append(replica.id)
        return replica

    def stop_replica(self, replica: Replica) -> None:
        self.fleet.remove(replica)
        self.stopped.append(replica.id)

    def adopt(self, name: str, config: ServiceConfig) -> None:
        self.adopted.append(config)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(data_dir=tmp_path, token=TOKEN, port=0) as control:
        yield control


async def started(plane: ControlPlane, supervisor: Supervisor) -> tuple[RolloutDriver, str]:
    assert plane.address is not None
    url = f"http://{plane.address[0]}:{plane.address[1]}"
    driver = RolloutDriver(supervisor, url, TOKEN, clock=FakeClock(start=1000.0))  # type: ignore[arg-type]
    rollout = Rollout(
        service="payments",
        config=CanaryConfig(steps=(50, 100)),
        stable_version="1.0.0",
        candidate_version="1.1.0",
        stable_replicas=2,
        replicas=2,
        started_at=1000.0,
    )
    plane.rollouts.create(
        rollout,
        stable=msgspec.to_builtins(STABLE),
        candidate=msgspec.to_builtins(CANDIDATE),
        now=1000.0,
    )
    return driver, url


async def latest(driver: RolloutDriver) -> RolloutRecord:
    (record,) = await driver.under_way()
    return record


def registered(plane: ControlPlane, replica_id: str, version: str) -> None:
    instance = Instance(
        service="payments", id=replica_id, host="127.0.0.1", port=9000, version=version
    )
    plane.registry.register_now(instance, ttl=30)


async def test_a_step_saves_before_it_acts(plane: ControlPlane) -> None:
    """A canary's first step: weight 0 set, one candidate started, the record saved."""
    supervisor = Supervisor()
    driver, _ = await started(plane, supervisor)
    try:
        await driver.step(await latest(driver))
        assert supervisor.started == ["payments-3"]
        assert plane.registry.snapshot("payments").weights == {"1.1.0": 0, "1.0.0": 100}
        record = plane.rollouts.latest("payments")
        assert record.rollout.weight == 0
        assert record.version == 2
    finally:
        await driver.aclose()


async def test_a_plan_from_a_record_a_command_changed_is_not_acted_on(
    plane: ControlPlane,
) -> None:
    """A pause lands between the driver's read and its write: nothing is started, nothing
    weighted; the next step plans from the paused record."""
    supervisor = Supervisor()
    driver, _ = await started(plane, supervisor)
    try:
        stale = await latest(driver)
        plane.rollouts.command("payments", Pause(), 1001.0)
        await driver.step(stale)
        assert supervisor.started == []
        assert plane.registry.snapshot("payments").weights is None
        await driver.step(await latest(driver))
        assert supervisor.started == []  # paused: holds what runs
    finally:
        await driver.aclose()


@pytest.mark.parametrize(("replica", "version"), [("payments-3", "9.9.9"), ("payments-1", "0.1")])
async def test_an_instance_registered_as_another_version_aborts_and_the_abort_is_saved(
    plane: ControlPlane, replica: str, version: str
) -> None:
    """A candidate (or a stable instance) whose code overrides its version: a split by
    version cannot work, and the rollout rolls back, saying why, in its record."""
    supervisor = Supervisor()
    driver, _ = await started(plane, supervisor)
    try:
        await driver.step(await latest(driver))  # the candidate starts
        registered(plane, replica, version)
        await driver.step(await latest(driver))
        record = plane.rollouts.latest("payments")
        assert record.rollout.phase is Phase.ROLLING_BACK
        assert f"{replica} registered as version {version!r}" in record.rollout.reason
        for _ in range(5):  # the stable instances are ready: the candidate goes, and done
            if not await driver.under_way():
                break
            await driver.step(await latest(driver))
        assert plane.rollouts.latest("payments").rollout.phase is Phase.ROLLED_BACK
        assert [r.id for r in supervisor.fleet] == ["payments-1", "payments-2"]
    finally:
        await driver.aclose()
