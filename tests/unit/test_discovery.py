"""Discovery's rules, without I/O: ejection and its cap, panic, and retrying elsewhere."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.discovery import Attempts, CallPolicy, InstanceSet
from meshkit.errors import ConnectError, PeerClosedError, ReadTimeoutError
from meshkit.policy import RetryPolicy
from meshkit.registry import Instance


def _set(count: int, policy: CallPolicy | None = None) -> InstanceSet:
    instances = InstanceSet("orders", policy or CallPolicy(), random.Random(7))
    instances.update(
        Instance(service="orders", id=f"o{n}", host="127.0.0.1", port=9000 + n)
        for n in range(count)
    )
    return instances


def _fail(instances: InstanceSet, key: str, now: float, times: int = 3) -> None:
    for _ in range(times):
        pick = instances.pick(now, set(instances.instances) - {key})
        assert pick is not None
        assert pick.key == key
        instances.failed(pick, now, 502)


def test_a_failing_instance_is_ejected_until_its_period_ends() -> None:
    """Three failures in a row take an instance out for 5 s; then it is tried again."""
    instances = _set(2)
    sick = next(iter(instances.instances))
    _fail(instances, sick, 0.0)
    assert instances.ejected == 1
    assert instances.pick(1.0, set(instances.instances) - {sick}) is None
    assert instances.pick(5.5, set(instances.instances) - {sick}) is not None


def test_the_last_instance_is_never_ejected() -> None:
    """A lone instance keeps taking calls however often it fails."""
    instances = _set(1)
    [only] = instances.instances
    _fail(instances, only, 0.0, times=10)
    assert instances.ejected == 0


@given(count=st.integers(1, 12), percent=st.integers(0, 100))
def test_ejection_never_passes_its_cap(count: int, percent: int) -> None:
    """However many instances fail, at most the cap's share (never all) is ejected."""
    instances = _set(count, CallPolicy(max_ejection_percent=percent, panic_threshold=0))
    for key in list(instances.instances):
        _fail(instances, key, 0.0)
    assert instances.ejected == min(count - 1, count * percent // 100)


def test_below_the_panic_threshold_ejected_instances_take_calls() -> None:
    """In panic an ejected instance is picked anyway, without moving its breaker."""
    instances = _set(2, CallPolicy(max_ejection_percent=100, panic_threshold=50))
    first, second = instances.instances
    _fail(instances, first, 0.0)
    assert not instances.panicking()  # one of two available: 50% is not below 50%
    assert instances.pick(0.0, {second}) is None
    instances.update([instances.instances[first]])  # the healthy one leaves
    assert instances.panicking()
    pick = instances.pick(0.0, ())
    assert pick is not None
    assert pick.key == first
    assert pick.ticket is None


def test_a_short_budget_running_out_does_not_count_against_the_instance() -> None:
    """A read timeout of an attempt with less than the usual time is not a failure."""
    instances = _set(2)
    key = next(iter(instances.instances))
    for _ in range(5):
        pick = instances.pick(0.0, set(instances.instances) - {key}, short_budget=True)
        assert pick is not None
        instances.failed(pick, 0.0, ReadTimeoutError("read timed out"))
    assert instances.ejected == 0
    for _ in range(3):
        pick = instances.pick(0.0, set(instances.instances) - {key})
        assert pick is not None
        instances.failed(pick, 0.0, ReadTimeoutError("read timed out"))
    assert instances.ejected == 1


def _attempts(*, idempotent: bool, count: int = 3) -> Attempts:
    return Attempts(
        _set(count),
        RetryPolicy(attempts=3),
        0.0,
        rng=random.Random(1),
        idempotent=idempotent,
    )


@pytest.mark.parametrize(
    ("idempotent", "failure", "retried"),
    [
        (True, 503, True),
        (False, 503, False),
        (True, PeerClosedError("closed"), True),
        (False, PeerClosedError("closed"), False),
        (False, ConnectError("refused"), True),  # nothing was sent
    ],
)
def test_which_failures_go_to_another_instance(
    *, idempotent: bool, failure: BaseException | int, retried: bool
) -> None:
    """An unsent request always may be retried; a sent one only when idempotent."""
    attempts = _attempts(idempotent=idempotent)
    first = attempts.next(0.0)
    assert first is not None
    if isinstance(failure, int):
        assert not attempts.answered(0.0, failure)
    else:
        attempts.failed(0.0, failure)
    delay = attempts.retry(0.0, failure, time_left=None)
    assert (delay is not None) is retried
    if retried:
        assert attempts.current is not None
        assert attempts.current.key != first.key


def test_no_retry_without_another_instance_or_time() -> None:
    """A retry needs an instance not tried yet and a wait shorter than the time left."""
    alone = _attempts(idempotent=True, count=1)
    assert alone.next(0.0) is not None
    alone.answered(0.0, 503)
    assert alone.retry(0.0, 503, time_left=None) is None
    hurried = _attempts(idempotent=True)
    assert hurried.next(0.0) is not None
    hurried.answered(0.0, 503)
    assert hurried.retry(0.0, 503, time_left=0.0) is None


def test_ejection_bounds_are_checked() -> None:
    """A share outside 0-100 is refused, naming the option."""
    with pytest.raises(ValueError, match="max_ejection_percent"):
        CallPolicy(max_ejection_percent=101)
    with pytest.raises(ValueError, match="panic_threshold"):
        CallPolicy(panic_threshold=-5)


def test_an_attempt_with_less_than_its_patience_has_a_short_budget() -> None:
    """Attempts marks an attempt short when the time it has is below the usual per-attempt time."""
    attempts = Attempts(
        _set(3), RetryPolicy(attempts=3), 0.0, rng=random.Random(1), idempotent=True, patience=10.0
    )
    first = attempts.next(0.0, time_left=30.0)
    assert first is not None
    assert not first.short_budget
    attempts.answered(0.0, 503)
    assert attempts.retry(0.0, 503, time_left=9.0) is not None
    assert attempts.current is not None
    assert attempts.current.short_budget


def _versioned(weights: dict[str, int] | None, stable: int = 3, canary: int = 1) -> InstanceSet:
    instances = InstanceSet("orders", CallPolicy(), random.Random(11))
    instances.update(
        [
            Instance(service="orders", id=f"s{n}", host="127.0.0.1", port=9000 + n, version="1.0")
            for n in range(stable)
        ]
        + [
            Instance(service="orders", id=f"c{n}", host="127.0.0.1", port=9100 + n, version="1.1")
            for n in range(canary)
        ],
        weights,
    )
    return instances


def _shares(instances: InstanceSet, picks: int = 4_000) -> dict[str, float]:
    counts: dict[str, int] = {}
    for number in range(picks):
        pick = instances.pick(float(number), ())
        assert pick is not None
        instances.record(pick, float(number) + 0.001, success=True)
        counts[pick.instance.version] = counts.get(pick.instance.version, 0) + 1
    return {version: count / picks for version, count in counts.items()}


def test_weights_split_the_traffic_by_version_whatever_the_instance_counts() -> None:
    """One canary instance beside three stable ones takes its weight's share, not a quarter;
    without weights every instance counts alike."""
    assert _shares(_versioned({"1.1": 10, "1.0": 90}))["1.1"] == pytest.approx(0.10, abs=0.02)
    assert _shares(_versioned({"1.1": 50, "1.0": 50}))["1.1"] == pytest.approx(0.50, abs=0.03)
    assert _shares(_versioned({"1.1": 100, "1.0": 0})) == {"1.1": 1.0}
    assert _shares(_versioned({"1.1": 0, "1.0": 100})) == {"1.0": 1.0}
    assert _shares(_versioned(None))["1.1"] == pytest.approx(0.25, abs=0.03)


def test_a_split_moves_traffic_but_never_refuses_it() -> None:
    """The version drawn has no instance left (tried, or none runs): another instance serves."""
    only_stable = _versioned({"1.1": 100, "1.0": 0}, canary=0)
    pick = only_stable.pick(0.0, ())
    assert pick is not None
    assert pick.instance.version == "1.0"
    canary = _versioned({"1.1": 100, "1.0": 0})
    retry = canary.pick(0.0, {"orders/c0"})
    assert retry is not None
    assert retry.instance.version == "1.0"
    unknown = _versioned({"2.0": 100})
    assert unknown.pick(0.0, ()) is not None


def test_new_weights_and_instances_take_effect_on_update() -> None:
    instances = _versioned({"1.1": 100, "1.0": 0})
    assert _shares(instances, 200) == {"1.1": 1.0}
    instances.update(list(instances.instances.values()), None)
    assert set(_shares(instances, 400)) == {"1.0", "1.1"}


def test_an_instance_registered_again_at_another_address_starts_with_a_closed_breaker() -> None:
    """A new process under an old id (a restart on a new port) is not ejected for the failures
    of the one before it; the same instance at the same address keeps its state."""
    instances = _set(2)
    sick = next(iter(instances.instances))
    _fail(instances, sick, 0.0)
    assert instances.ejected == 1
    old = instances.instances[sick]
    same = list(instances.instances.values())
    instances.update(same)
    assert instances.ejected == 1
    moved = Instance(service="orders", id=old.id, host="127.0.0.1", port=old.port + 100)
    instances.update([moved if i.key == sick else i for i in same])
    assert instances.ejected == 0
    assert instances.pick(1.0, set(instances.instances) - {sick}) is not None
