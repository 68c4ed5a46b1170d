"""The weighted split: shares, stickiness, and moves that only go toward the first target."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError
from meshkit.policy import WeightedSplit, sticky_points


def test_random_points_follow_the_weights() -> None:
    """90/10 gives about 90% and 10% over 20,000 random points."""
    split = WeightedSplit({"stable": 90, "canary": 10})
    rng = random.Random(7)
    chosen = [split.choose(rng.random(), rng.random()) for _ in range(20_000)]
    assert abs(chosen.count("canary") / 20_000 - 0.10) < 0.01


def test_a_zero_weight_is_never_chosen() -> None:
    """A target at weight 0 gets no point, not even the edges."""
    split = WeightedSplit({"blue": 100, "green": 0})
    assert {split.choose(p, p) for p in (0.0, 0.5, 0.999999)} == {"blue"}


def test_unavailable_targets_give_their_share_to_the_others() -> None:
    """With canary not running, every point goes to stable; with nothing running, None."""
    split = WeightedSplit({"canary": 50, "stable": 50})
    assert split.choose(0.1, 0.1, available={"stable"}) == "stable"
    assert split.choose(0.1, 0.1, available=set()) is None


def test_three_targets_share_by_weight() -> None:
    """50/30/20 over 30,000 random pairs of points."""
    split = WeightedSplit({"a": 50, "b": 30, "c": 20})
    rng = random.Random(3)
    chosen = [split.choose(rng.random(), rng.random()) for _ in range(30_000)]
    for target, share in (("a", 0.5), ("b", 0.3), ("c", 0.2)):
        assert abs(chosen.count(target) / 30_000 - share) < 0.015


@given(
    point=st.floats(min_value=0, max_value=1, exclude_max=True),
    second=st.floats(min_value=0, max_value=1, exclude_max=True),
    first=st.integers(0, 100),
    raise_by=st.integers(0, 100),
    others=st.lists(st.integers(1, 100), min_size=1, max_size=4),
)
def test_raising_the_first_weight_only_moves_points_into_it(
    point: float, second: float, first: int, raise_by: int, others: list[int]
) -> None:
    """A point either stays where it was or moves to the first target."""
    names = [f"v{i}" for i in range(len(others))]
    before = WeightedSplit({"canary": first, **dict(zip(names, others, strict=True))})
    after = WeightedSplit({"canary": first + raise_by, **dict(zip(names, others, strict=True))})
    moved_to = after.choose(point, second)
    assert moved_to in (before.choose(point, second), "canary")


def test_a_sticky_key_is_the_same_points_every_time() -> None:
    """The hash is stable (not Python's salted hash) and inside [0, 1)."""
    # The same in every process and every release: another gateway, or this
    # one after a restart, sends user-42 to the same version.
    assert sticky_points(b"user-42") == (0.5398004598884568, 0.17846214437064734)
    points = [sticky_points(f"user-{i}".encode()) for i in range(1000)]
    assert len(set(points)) == 1000
    assert all(0 <= p < 1 and 0 <= q < 1 for p, q in points)


@pytest.mark.parametrize(
    ("weights", "key"),
    [({}, "split"), ({"a": 0}, "split"), ({"a": -1}, "split.a"), ({"a": 1.5}, "split.a")],
)
def test_bad_weights_name_the_problem(weights: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        WeightedSplit(weights)
    assert caught.value.key == key
