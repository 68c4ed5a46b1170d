import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError
from meshkit.policy import (
    BackendsChanged,
    Balancer,
    PowerOfTwoChoices,
    RoundRobin,
    SmoothWeightedRoundRobin,
)

weight_maps = st.dictionaries(
    st.sampled_from("abcdefgh"), st.integers(min_value=1, max_value=30), min_size=1
)


def test_every_balancer_fits_the_protocol() -> None:
    """Drivers can hold any of the three as a Balancer."""
    balancers: list[Balancer[str]] = [
        RoundRobin(["a"]),
        SmoothWeightedRoundRobin({"a": 1}),
        PowerOfTwoChoices(["a"], rng=random.Random(0)),
    ]
    for balancer in balancers:
        assert balancer.pick(0.0) == "a"
        balancer.complete("a", 0.0, 0.01)
        assert balancer.pick(0.0) == "a"
        balancer.cancel("a")


@given(st.lists(st.integers(), min_size=1, max_size=10, unique=True), st.integers(1, 5))
def test_round_robin_visits_each_backend_once_per_cycle(backends: list[int], cycles: int) -> None:
    """Every run of len(backends) picks contains each backend once."""
    balancer = RoundRobin(backends)
    for _ in range(cycles):
        assert sorted(balancer.pick(0.0) for _ in backends) == sorted(backends)  # type: ignore[type-var]


def test_round_robin_skips_excluded_and_gives_up_when_all_are() -> None:
    """exclude skips backends; None when every backend is excluded or there are none."""
    balancer = RoundRobin(["a", "b", "c"])
    assert [balancer.pick(0.0, exclude={"b"}) for _ in range(4)] == ["a", "c", "a", "c"]
    assert balancer.pick(0.0, exclude={"a", "b", "c"}) is None
    assert RoundRobin[str]().pick(0.0) is None


@given(weight_maps, st.integers(min_value=1, max_value=3))
def test_smooth_wrr_gives_each_backend_its_weight_in_every_cycle(
    weights: dict[str, int], cycles: int
) -> None:
    """Each cycle of sum(weights) picks holds each backend exactly its weight."""
    balancer = SmoothWeightedRoundRobin(weights)
    total = sum(weights.values())
    for _ in range(cycles):
        assert Counter(balancer.pick(0.0) for _ in range(total)) == Counter(weights)


@given(weight_maps)
def test_smooth_wrr_interleaves(weights: dict[str, int]) -> None:
    """After every pick each backend's count is within 2 of its exact share (no long runs)."""
    balancer = SmoothWeightedRoundRobin(weights)
    total = sum(weights.values())
    counts: Counter[str] = Counter()
    for n in range(1, 2 * total + 1):
        picked = balancer.pick(0.0)
        assert picked is not None
        counts[picked] += 1
        for backend, weight in weights.items():
            assert abs(counts[backend] - n * weight / total) < 2


def test_smooth_wrr_matches_nginx() -> None:
    """Weights 5, 1, 1 give nginx's documented sequence a a b a c a a."""
    balancer = SmoothWeightedRoundRobin({"a": 5, "b": 1, "c": 1})
    assert "".join(balancer.pick(0.0) or "-" for _ in range(7)) == "aabacaa"


def test_smooth_wrr_weight_zero_and_exclude() -> None:
    """Weight 0 keeps a backend out; exclude skips one for a retry."""
    balancer = SmoothWeightedRoundRobin({"stable": 0, "canary": 1})
    assert {balancer.pick(0.0) for _ in range(5)} == {"canary"}
    assert balancer.pick(0.0, exclude={"canary"}) is None
    balancer.update({"stable": 9, "canary": 1})
    assert Counter(balancer.pick(0.0) for _ in range(10)) == {"stable": 9, "canary": 1}


def test_smooth_wrr_keeps_its_split_while_instances_come_and_go() -> None:
    """A 5% canary stays at 5% when a stable instance joins and leaves every 10 picks."""
    split = {"stable-1": 48, "stable-2": 47, "canary": 5}
    balancer = SmoothWeightedRoundRobin(split)
    counts: Counter[str] = Counter()
    for step in range(10_000):
        if step % 10 == 0:
            joined = step % 20 == 0
            balancer.update(split | ({"stable-3": 47} if joined else {}))
        picked = balancer.pick(0.0)
        assert picked is not None
        counts[picked] += 1
    assert 0.04 <= counts["canary"] / 10_000 <= 0.06
    assert counts["stable-3"] > 0


def test_round_robin_survives_a_shrinking_pool() -> None:
    """Removing backends mid-cycle never picks past the end of the list."""
    balancer = RoundRobin(["a", "b", "c", "d"])
    for _ in range(3):
        balancer.pick(0.0)
    balancer.update(["a", "b"])
    assert {balancer.pick(0.0) for _ in range(4)} == {"a", "b"}


def test_smooth_wrr_rejects_bad_weights() -> None:
    """A negative or fractional weight raises ConfigError naming the backend."""
    with pytest.raises(ConfigError, match="weights\\['b'\\]"):
        SmoothWeightedRoundRobin({"a": 1, "b": -1})
    with pytest.raises(ConfigError):
        SmoothWeightedRoundRobin({"a": 0.5})  # type: ignore[dict-item]


def test_balancers_report_backend_changes() -> None:
    """update() reports a real change once, with weights; the same set again is silent."""
    events: list[object] = []
    balancer = SmoothWeightedRoundRobin({"a": 1}, name="orders", hook=events.append)
    balancer.update({"a": 1})
    balancer.update({"a": 3, "b": 1})
    assert events == [
        BackendsChanged(balancer="orders", backends=("a",), weights=(1,)),
        BackendsChanged(balancer="orders", backends=("a", "b"), weights=(3, 1)),
    ]


@given(st.integers())
def test_p2c_never_picks_the_worse_of_two_candidates(seed: int) -> None:
    """With two backends, the one with the lower latency x load always wins."""
    balancer = PowerOfTwoChoices(["slow", "fast"], rng=random.Random(seed))
    balancer.complete("slow", 1.0, 0.5)
    balancer.complete("fast", 1.0, 0.01)
    for _ in range(20):
        assert balancer.pick(1.0) == "fast"
        balancer.complete("fast", 1.0, 0.01)


def test_p2c_sends_less_to_a_slow_backend() -> None:
    """Among five backends, one ten times slower gets few requests."""
    rng = random.Random(11)
    backends = [f"b{i}" for i in range(5)]
    balancer = PowerOfTwoChoices(backends, rng=random.Random(5))
    latency = dict.fromkeys(backends, 0.01) | {"b0": 0.1}
    counts: Counter[str] = Counter()
    now = 0.0
    for _ in range(5000):
        picked = balancer.pick(now)
        assert picked is not None
        counts[picked] += 1
        now += 0.001
        balancer.complete(picked, now, latency[picked] * rng.uniform(0.8, 1.2))
    assert counts["b0"] < 0.05 * 5000
    assert min(counts[b] for b in backends[1:]) > 0.15 * 5000


def test_p2c_tries_a_recovered_backend_again() -> None:
    """A once-slow backend's estimate drifts back while unmeasured, so it wins traffic back."""
    balancer = PowerOfTwoChoices(["a", "b"], rng=random.Random(4), decay=10.0)
    balancer.complete("a", 0.0, 1.0)  # a was slow once
    now, picks_of_a = 0.0, 0
    for _ in range(600):  # two requests at a time, every 0.1 s for a minute; both take 20 ms
        first, second = balancer.pick(now), balancer.pick(now)
        for picked in (first, second):
            assert picked is not None
            picks_of_a += picked == "a"
            balancer.complete(picked, now + 0.02, 0.02)
        now += 0.1
    assert picks_of_a > 200


def test_p2c_counts_outstanding_requests() -> None:
    """Picks add to a backend's outstanding count and completions take it away."""
    balancer = PowerOfTwoChoices(["a", "b"], rng=random.Random(1))
    picks = [balancer.pick(0.0) for _ in range(6)]
    assert {balancer.load(b)[1] for b in "ab"} == {3}  # equal latency: load evens out
    for backend in picks:
        assert backend is not None
        balancer.complete(backend, 0.1, 0.01)
    assert balancer.load("a")[1] == balancer.load("b")[1] == 0


def test_p2c_gives_a_newcomer_its_share_at_once() -> None:
    """An unmeasured backend counts as typical, so it is used even when traffic is sequential."""
    balancer = PowerOfTwoChoices(["old"], rng=random.Random(3))
    balancer.complete("old", 0.0, 0.001)  # measured fast: well under the 30 ms default
    balancer.update(["old", "new"])
    picks = Counter()
    for step in range(200):
        picked = balancer.pick(step * 0.01)
        assert picked is not None
        picks[picked] += 1
        balancer.complete(picked, step * 0.01, 0.001)
    assert picks["new"] > 60


def test_p2c_cancel_gives_back_the_slot() -> None:
    """Cancelled requests do not leave a backend looking busy forever."""
    balancer = PowerOfTwoChoices(["a", "b"], rng=random.Random(1))
    for _ in range(20):
        picked = balancer.pick(0.0)
        assert picked is not None
        balancer.cancel(picked)
    assert balancer.load("a")[1] == balancer.load("b")[1] == 0


def test_p2c_idle_backend_does_not_swallow_a_burst() -> None:
    """After a long idle spell a backend is not taken for free: a burst is still spread."""
    balancer = PowerOfTwoChoices(["a", "b"], rng=random.Random(1))
    balancer.complete("a", 0.0, 0.02)
    balancer.complete("b", 9_000.0, 0.02)
    burst = Counter(balancer.pick(9_000.0) for _ in range(1000))
    assert burst["b"] > 50  # with decay to zero, b got none of the 1,000


def test_p2c_failures_count_as_slow() -> None:
    """A fast failure raises the backend's latency estimate to failure_latency."""
    balancer = PowerOfTwoChoices(["a", "b"], rng=random.Random(1), failure_latency=2.0)
    balancer.complete("a", 1.0, 0.001, success=False)
    assert balancer.load("a")[0] == 2.0


def test_p2c_exclude_and_membership() -> None:
    """exclude is honoured; a backend that stays keeps its estimate; None when empty."""
    balancer = PowerOfTwoChoices(["a", "b", "c"], rng=random.Random(2))
    assert all(balancer.pick(0.0, exclude={"a", "b"}) == "c" for _ in range(10))
    balancer.complete("b", 1.0, 0.5)
    balancer.update(["b", "d"])
    assert balancer.load("b")[0] == 0.5
    assert balancer.load("d")[0] is None  # not measured yet
    balancer.complete("a", 1.0, 0.1)  # left the pool mid-request: ignored
    assert PowerOfTwoChoices[str](rng=random.Random(0)).pick(0.0) is None
