"""The rollout planners: the three strategies step by step, and their promises under any run.

The properties drive a planner with a simulated driver: it makes the
instances match each plan's target (stopping not-ready instances first,
as the real driver does), instances become ready or never do, time
passes, analyses and smoke requests pass or fail, and a person may
pause, resume, promote or abort at any point.
"""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshkit.errors import ConfigError, ConflictError
from meshkit.policy import (
    Abort,
    Analysis,
    AnalysisConfig,
    Analyzed,
    BlueGreenConfig,
    CanaryConfig,
    Pause,
    Phase,
    Plan,
    Promote,
    Replica,
    Resume,
    RollingConfig,
    Rollout,
    RolloutConfig,
    SmokeTested,
    Target,
    Undo,
    Window,
    judge,
    plan_rollout,
    update_rollout,
)

GOOD = Window(requests=500, failures=0, p99=0.05)
BAD = Window(requests=500, failures=150, p99=0.05)


def analysis(canary: Window, at: float = 0.0) -> Analysis:
    return judge(canary, GOOD, AnalysisConfig(), at)


def rollout(config: RolloutConfig, *, stable: int = 2, replicas: int = 2) -> Rollout:
    return Rollout(
        service="payments",
        config=config,
        stable_version="1.0.0",
        candidate_version="1.1.0",
        stable_replicas=stable,
        replicas=replicas,
        started_at=0.0,
    )


class Driver:
    """Makes the instances match a plan's target; the not-ready ones are stopped first."""

    def __init__(self, stable: int) -> None:
        self.ids = itertools.count(1)
        self.fleet = [Replica(f"s{n}", False, True, 0.0) for n in range(stable)]

    def apply(self, target: Target, now: float) -> None:
        for candidate, wanted in ((False, target.stable), (True, target.candidate)):
            mine = [replica for replica in self.fleet if replica.candidate == candidate]
            if len(mine) > wanted:
                going = sorted(mine, key=lambda replica: (replica.ready, -replica.started))
                gone = {replica.id for replica in going[: len(mine) - wanted]}
                self.fleet = [replica for replica in self.fleet if replica.id not in gone]
            for _ in range(wanted - len(mine)):
                name = f"{'c' if candidate else 's'}{next(self.ids)}"
                self.fleet.append(Replica(name, candidate, False, now))

    def make_ready(self, ids: set[str]) -> None:
        self.fleet = [
            Replica(replica.id, replica.candidate, True, replica.started)
            if replica.id in ids
            else replica
            for replica in self.fleet
        ]

    def ready(self) -> int:
        return sum(replica.ready for replica in self.fleet)

    def count(self, *, candidate: bool) -> int:
        return sum(replica.candidate == candidate for replica in self.fleet)


def run(start: Rollout, steps: list[tuple[set[str] | None, float]]) -> tuple[Rollout, Driver]:
    """A run where, at each tick, the listed instances become ready (None: all) and time passes."""
    driver = Driver(start.stable_replicas)
    current, now = start, 0.0
    for ready, elapsed in steps:
        made = plan_rollout(current, driver.fleet, now)
        current = made.rollout
        if made.analyze is not None:
            current = update_rollout(current, Analyzed(analysis(GOOD, now)), now)
        if made.smoke:
            current = update_rollout(current, SmokeTested(passed=True), now)
        driver.apply(made.target, now)
        driver.make_ready({r.id for r in driver.fleet} if ready is None else ready)
        now += elapsed
    return current, driver


# -- each strategy, step by step --------------------------------------------------------------


def test_a_rolling_update_replaces_one_instance_at_a_time_and_never_drops_below_two() -> None:
    start = rollout(RollingConfig())
    driver = Driver(2)
    now = 0.0
    seen: list[tuple[int, int]] = []
    current = start
    while not current.phase.finished:
        made = plan_rollout(current, driver.fleet, now)
        current = made.rollout
        driver.apply(made.target, now)
        assert driver.ready() >= 2
        assert len(driver.fleet) <= 3
        seen.append((driver.count(candidate=False), driver.count(candidate=True)))
        driver.make_ready({replica.id for replica in driver.fleet})
        now += 1
    assert current.phase is Phase.COMPLETED
    assert seen[:4] == [(2, 1), (1, 2), (0, 2), (0, 2)]
    assert {replica.candidate for replica in driver.fleet} == {True}


def test_a_candidate_never_ready_rolls_a_rolling_update_back_to_the_old_set() -> None:
    """Not ready within ready_timeout: the candidates go, the stable instances come back."""
    start = rollout(RollingConfig(max_surge=1, max_unavailable=1, ready_timeout=10))
    current, driver = run(start, [(set(), 4.0)] * 5)
    assert current.phase is Phase.ROLLING_BACK
    assert "was not ready for 10 s" in current.reason
    current, driver = run(start, [(set(), 4.0)] * 5 + [(None, 1.0)] * 3)
    assert current.phase is Phase.ROLLED_BACK
    assert driver.count(candidate=True) == 0
    assert driver.count(candidate=False) == 2


def test_blue_green_starts_every_candidate_without_traffic_then_switches_at_once() -> None:
    start = rollout(BlueGreenConfig(smoke=("/-/ready",), keep=30), stable=2, replicas=3)
    driver = Driver(2)
    first = plan_rollout(start, driver.fleet, 0.0)
    assert first.target == Target(stable=2, candidate=3, weight=0)
    driver.apply(first.target, 0.0)
    driver.make_ready({replica.id for replica in driver.fleet})
    asks = plan_rollout(first.rollout, driver.fleet, 1.0)
    assert asks.smoke
    assert asks.target.weight == 0
    tested = update_rollout(asks.rollout, SmokeTested(passed=True), 1.0)
    switched = plan_rollout(tested, driver.fleet, 2.0)
    assert switched.rollout.phase is Phase.SWITCHED
    assert switched.target == Target(stable=2, candidate=3, weight=100)
    kept = plan_rollout(switched.rollout, driver.fleet, 31.0)
    assert kept.target.stable == 2  # 29 s after the switch: the old colour still runs
    stopping = plan_rollout(kept.rollout, driver.fleet, 33.0)
    assert stopping.target == Target(stable=0, candidate=3, weight=100)
    driver.apply(stopping.target, 33.0)
    done = plan_rollout(stopping.rollout, driver.fleet, 34.0)
    assert done.rollout.phase is Phase.COMPLETED
    assert done.target == Target(stable=0, candidate=3, weight=None)


def test_blue_green_undo_within_keep_switches_back_at_once() -> None:
    start = rollout(BlueGreenConfig(keep=60))
    current, driver = run(start, [(None, 1.0)] * 3)
    assert current.phase is Phase.SWITCHED
    undone = update_rollout(current, Undo(), 10.0)
    back = plan_rollout(undone, driver.fleet, 10.0)
    assert back.target == Target(stable=2, candidate=0, weight=0)
    driver.apply(back.target, 10.0)
    done = plan_rollout(back.rollout, driver.fleet, 11.0)
    assert done.rollout.phase is Phase.ROLLED_BACK
    assert done.target.weight is None
    assert done.rollout.reason == "undone"


def test_failed_smoke_requests_roll_blue_green_back() -> None:
    start = rollout(BlueGreenConfig(smoke=("/health",)))
    driver = Driver(2)
    made = plan_rollout(start, driver.fleet, 0.0)
    driver.apply(made.target, 0.0)
    driver.make_ready({replica.id for replica in driver.fleet})
    asks = plan_rollout(made.rollout, driver.fleet, 1.0)
    failed = update_rollout(asks.rollout, SmokeTested(passed=False, detail="/health: 500"), 1.0)
    assert failed.phase is Phase.ROLLING_BACK
    assert failed.reason == "smoke requests: /health: 500"


def test_a_canary_goes_through_its_steps_then_takes_over() -> None:
    config = CanaryConfig(steps=(10, 50), interval=60)
    driver = Driver(2)
    current, now, weights = rollout(config), 0.0, []
    while not current.phase.finished:
        made = plan_rollout(current, driver.fleet, now)
        current = made.rollout
        weights.append(made.target.weight)
        if made.analyze is not None:
            assert made.analyze == now - 60
            current = update_rollout(current, Analyzed(analysis(GOOD, now)), now)
        driver.apply(made.target, now)
        driver.make_ready({replica.id for replica in driver.fleet})
        now += 30
    assert [weight for weight, _ in itertools.groupby(weights)] == [0, 10, 50, 100, None]
    assert driver.count(candidate=True) == 2
    assert driver.count(candidate=False) == 0
    assert len(current.analyses) == 2


def test_a_bad_canary_is_rolled_back_at_its_failure_limit() -> None:
    config = CanaryConfig(steps=(5, 50), interval=10, failure_limit=2)
    driver = Driver(2)
    made = plan_rollout(rollout(config), driver.fleet, 0.0)
    driver.apply(made.target, 0.0)
    driver.make_ready({replica.id for replica in driver.fleet})
    at_five = plan_rollout(made.rollout, driver.fleet, 1.0)
    assert at_five.target.weight == 5
    asks = plan_rollout(at_five.rollout, driver.fleet, 11.0)
    assert asks.analyze == 1.0
    once = update_rollout(asks.rollout, Analyzed(analysis(BAD, 11.0)), 11.0)
    assert once.phase is Phase.PROGRESSING
    assert plan_rollout(once, driver.fleet, 12.0).target.weight == 5  # the same step again
    twice = update_rollout(once, Analyzed(analysis(BAD, 21.0)), 21.0)
    assert twice.phase is Phase.ROLLING_BACK
    assert twice.reason.startswith("analysis failed 2 time(s): success: 70.00% succeeded")
    back = plan_rollout(twice, driver.fleet, 21.0)
    assert back.target == Target(stable=2, candidate=0, weight=0)


def test_commands_the_state_does_not_allow_are_conflicts() -> None:
    start = rollout(RollingConfig())
    with pytest.raises(ConflictError, match="no steps to skip"):
        update_rollout(start, Promote(), 0.0)
    with pytest.raises(ConflictError, match="is not paused"):
        update_rollout(start, Resume(), 0.0)
    aborted = update_rollout(start, Abort(), 0.0)
    with pytest.raises(ConflictError, match="it is rolling-back"):
        update_rollout(aborted, Pause(), 0.0)
    current, _ = run(start, [(None, 1.0)] * 6)
    assert current.phase is Phase.COMPLETED
    with pytest.raises(ConflictError, match=r"deploy version '1\.0\.0' again"):
        update_rollout(current, Undo(), 9.0)


def test_settings_are_checked_where_they_are_written() -> None:
    with pytest.raises(ConfigError, match="both 0"):
        RollingConfig(max_surge=0, max_unavailable=0)
    with pytest.raises(ConfigError, match="rise from step to step"):
        CanaryConfig(steps=(50, 25))
    with pytest.raises(ConfigError, match="percent from 1 to 100"):
        CanaryConfig(steps=(0, 100))
    with pytest.raises(ConfigError, match="starts with '/'"):
        BlueGreenConfig(smoke=("health",))
    with pytest.raises(ConfigError, match="a canary rollout needs a new version"):
        Rollout(
            service="payments",
            config=CanaryConfig(),
            stable_version="1.0.0",
            candidate_version="1.0.0",
            stable_replicas=1,
            replicas=1,
            started_at=0.0,
        )


# -- the analysis --------------------------------------------------------------------------------


def test_too_few_requests_is_a_failed_check_not_a_pass() -> None:
    result = judge(Window(requests=3, failures=0, p99=0.01), GOOD, AnalysisConfig(), 0.0)
    assert not result.passed
    assert result.reasons() == ["only 3 requests reached the canary (at least 20)"]


def test_the_canary_is_compared_with_thresholds_and_with_stable() -> None:
    config = AnalysisConfig()
    slow = judge(Window(requests=100, failures=0, p99=0.6), GOOD, config, 0.0)
    assert [check.name for check in slow.checks if not check.passed] == [
        "p99",
        "p99 against stable",
    ]
    # Within the absolute bounds, yet much slower than stable: fails against it alone.
    slower = judge(Window(requests=100, failures=0, p99=0.2), GOOD, config, 0.0)
    assert [check.name for check in slower.checks if not check.passed] == ["p99 against stable"]
    # A stable version failing alike: the canary is not the cause of the drop.
    both = Window(requests=100, failures=2, p99=0.05)
    assert [check.name for check in judge(both, both, config, 0.0).checks if not check.passed] == [
        "success"
    ]
    nothing_to_compare = judge(GOOD, Window(0, 0, None), config, 0.0)
    assert nothing_to_compare.passed
    assert [check.name for check in nothing_to_compare.checks] == ["requests", "success", "p99"]


# -- properties ------------------------------------------------------------------------------------

CONFIGS = st.one_of(
    st.builds(
        lambda bounds, timeout: RollingConfig(
            max_surge=bounds[0], max_unavailable=bounds[1], ready_timeout=timeout
        ),
        st.sampled_from([(1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1)]),
        st.sampled_from([20.0, 60.0]),
    ),
    st.builds(
        BlueGreenConfig,
        smoke=st.sampled_from([(), ("/-/ready",)]),
        keep=st.sampled_from([0.0, 30.0]),
        ready_timeout=st.sampled_from([20.0, 60.0]),
    ),
    st.builds(
        CanaryConfig,
        steps=st.sampled_from([(5, 25, 50, 100), (10,), (20, 60)]),
        interval=st.sampled_from([10.0, 30.0]),
        failure_limit=st.integers(1, 3),
        replicas=st.integers(1, 2),
        ready_timeout=st.sampled_from([20.0, 60.0]),
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    config=CONFIGS,
    stable=st.integers(1, 4),
    replicas=st.integers(1, 4),
    broken=st.booleans(),
    data=st.data(),
)
def test_any_rollout_keeps_its_promises_and_ends(
    config: RolloutConfig, stable: int, replicas: int, broken: bool, data: st.DataObject
) -> None:
    """Whatever happens, a rollout ends, completed or rolled back, within bounded steps;
    a rolling update never stops an instance that leaves fewer ready than allowed, nor runs
    more than allowed; a canary never moves past a failed analysis; a rollback always ends
    with the stable version alone, as many as before, serving all the traffic."""
    current = rollout(config, stable=stable, replicas=replicas)
    driver = Driver(stable)
    now = 0.0
    weight: int | None = None
    for _ in range(400):
        if current.phase.finished:
            break
        if data.draw(st.integers(0, 30)) == 0:
            command = data.draw(st.sampled_from([Pause(), Resume(), Promote(), Abort(), Undo()]))
            with contextlib.suppress(ConflictError):
                current = update_rollout(current, command, now)
        if current.paused and data.draw(st.booleans()):
            current = update_rollout(current, Resume(), now)
        made = plan_rollout(current, driver.fleet, now)
        _check_plan(made, current, driver, weight)
        current, weight = made.rollout, made.target.weight
        if made.analyze is not None:
            canary = data.draw(st.sampled_from([GOOD, BAD, Window(2, 0, 0.01)]))
            current = update_rollout(current, Analyzed(analysis(canary, now)), now)
            if not current.analyses[-1].passed and current.phase is Phase.PROGRESSING:
                after = plan_rollout(current, driver.fleet, now).target.weight
                assert after is not None
                assert weight is not None
                assert after <= weight
        if made.smoke:
            current = update_rollout(current, SmokeTested(passed=data.draw(st.booleans())), now)
        ready_before = driver.ready()
        driver.apply(made.target, now)
        # No plan takes the service from ready instances to none (unless a rolling update
        # is allowed that many unavailable).
        allowed_none = isinstance(config, RollingConfig) and config.max_unavailable >= replicas
        assert driver.ready() >= min(ready_before, 0 if allowed_none else 1)
        if isinstance(config, RollingConfig) and current.phase is Phase.PROGRESSING:
            assert driver.ready() >= min(ready_before, replicas - config.max_unavailable)
            assert len(driver.fleet) <= max(stable, replicas) + config.max_surge
        unready = [replica.id for replica in driver.fleet if not replica.ready]
        candidates_fail = broken and current.phase is not Phase.ROLLING_BACK
        becoming = {
            name
            for name in unready
            if not (candidates_fail and name.startswith("c")) and data.draw(st.booleans())
        }
        driver.make_ready(becoming)
        now += data.draw(st.sampled_from([1.0, 5.0, 15.0]))
    else:
        # Bounded: a pause may hold it only as long as nobody resumes; everything else ends.
        assert current.paused, f"not finished after 400 steps: {current}"
        return
    final = plan_rollout(current, driver.fleet, now)
    driver.apply(final.target, now)
    assert final.target.weight is None
    if broken:  # candidates that never become ready never take over
        assert current.phase is Phase.ROLLED_BACK
    if current.phase is Phase.ROLLED_BACK:
        assert driver.count(candidate=True) == 0
        assert driver.count(candidate=False) == stable
    else:
        assert driver.count(candidate=False) == 0
        assert driver.count(candidate=True) == replicas


def _check_plan(made: Plan, before: Rollout, driver: Driver, weight: int | None) -> None:
    """What every plan promises, whatever the strategy."""
    after = made.rollout
    if after.phase is Phase.ROLLING_BACK:
        # Rolling back: no new candidate, none of the traffic, and none stopped until the
        # stable instances are back and ready.
        candidates = [replica for replica in driver.fleet if replica.candidate]
        stable = [replica for replica in driver.fleet if not replica.candidate]
        assert made.target.candidate <= len(candidates)
        if made.target.candidate < len(candidates):
            assert len(stable) >= after.stable_replicas
            assert all(replica.ready for replica in stable)
        assert made.target.stable == after.stable_replicas
        still_running = any(replica.candidate for replica in driver.fleet)
        if still_running and not isinstance(after.config, RollingConfig):
            assert made.target.weight == 0  # a split never had a rolling update's candidates
        else:
            assert made.target.weight is None
    if before.paused and after.paused and not after.phase.finished:
        assert made.target.weight == weight or weight is None
    if made.target.weight not in (None, 0) and after.phase is Phase.PROGRESSING:
        # Traffic goes to the candidates only once they are running.
        assert any(replica.candidate for replica in driver.fleet)
