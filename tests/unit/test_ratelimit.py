import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError, UsageError
from meshkit.policy import GCRA, RateLimit, RateLimitStateChanged, TokenBucket

LIMITERS = [TokenBucket, GCRA]

limits = st.builds(
    RateLimit,
    capacity=st.integers(min_value=1, max_value=200),
    per_second=st.floats(min_value=0.01, max_value=10_000),
)
# Non-decreasing request times with a cost each, as a monotonic clock gives them.
steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=2.0), st.integers(min_value=1, max_value=5)),
    max_size=300,
)


def _times(start: float, gaps: list[float]) -> list[float]:
    times, now = [], start
    for gap in gaps:
        now += gap
        times.append(now)
    return times


@given(limits, st.floats(min_value=-1e6, max_value=1e6), steps)
def test_gcra_decides_exactly_like_the_token_bucket(
    limit: RateLimit, start: float, steps: list[tuple[float, int]]
) -> None:
    """For the same inputs the GCRA and the token bucket return identical decisions."""
    bucket, gcra = TokenBucket(limit), GCRA(limit)
    times = _times(start, [gap for gap, _ in steps])
    for now, (_, cost) in zip(times, steps, strict=True):
        if cost > limit.capacity:
            continue
        assert bucket.acquire(now, cost) == gcra.acquire(now, cost)
        assert bucket.tokens(now) == gcra.tokens(now)


@pytest.mark.parametrize("limiter_type", LIMITERS)
@given(limit=limits, start=st.floats(min_value=0, max_value=1e6), steps=steps)
def test_never_admits_more_than_capacity_plus_rate_times_elapsed(
    limiter_type: type[TokenBucket], limit: RateLimit, start: float, steps: list[tuple[float, int]]
) -> None:
    """In every interval, admitted cost <= capacity + rate x interval length."""
    limiter = limiter_type(limit)
    times = _times(start, [gap for gap, _ in steps])
    admitted = [
        (now, cost)
        for now, (_, cost) in zip(times, steps, strict=True)
        if cost <= limit.capacity and limiter.acquire(now, cost).allowed
    ]
    for i, (first, _) in enumerate(admitted):
        total = 0
        for last, cost in admitted[i:]:
            total += cost
            # 2 ns of slack: each time is truncated to whole nanoseconds.
            assert total <= limit.capacity + limit.per_second * (last - first + 2e-9)


@pytest.mark.parametrize("limiter_type", LIMITERS)
@given(limit=limits, start=st.floats(min_value=0, max_value=1e6), steps=steps)
def test_retry_after_and_reset_after_are_exact(
    limiter_type: type[TokenBucket], limit: RateLimit, start: float, steps: list[tuple[float, int]]
) -> None:
    """Sent again retry_after later, a refused request passes; reset_after refills the bucket."""
    limiter = limiter_type(limit)
    for now, (_, cost) in zip(_times(start, [g for g, _ in steps]), steps, strict=True):
        if cost > limit.capacity:
            continue
        decision = limiter.acquire(now, cost)
        if not decision.allowed:
            assert decision.retry_after > 0
            # Exact to the nanosecond: refused just before, admitted just after.
            later = now + decision.retry_after + 1e-9
            assert copy.copy(limiter).acquire(later, cost).allowed
            if decision.retry_after > 3e-9:
                sooner = now + decision.retry_after - 3e-9
                assert not copy.copy(limiter).acquire(sooner, cost).allowed
        refilled = copy.copy(limiter).tokens(now + decision.reset_after + 1e-9)
        assert refilled == pytest.approx(limit.capacity)


@pytest.mark.parametrize("limiter_type", LIMITERS)
def test_burst_then_steady_rate(limiter_type: type[TokenBucket]) -> None:
    """A full bucket admits its capacity at once, then one request per interval."""
    limiter = limiter_type(RateLimit(capacity=3, per_second=2))
    assert [limiter.acquire(10.0).allowed for _ in range(4)] == [True, True, True, False]
    refused = limiter.acquire(10.0)
    assert refused.remaining == 0
    assert refused.retry_after == pytest.approx(0.5)
    assert refused.reset_after == pytest.approx(1.5)
    assert not limiter.acquire(10.49).allowed
    admitted = limiter.acquire(10.5)
    assert admitted.allowed
    assert admitted.retry_after == 0.0


@pytest.mark.parametrize("limiter_type", LIMITERS)
def test_cost_takes_several_tokens(limiter_type: type[TokenBucket]) -> None:
    """A request of cost k spends k tokens; remaining counts whole tokens left."""
    limiter = limiter_type(RateLimit(capacity=10, per_second=1))
    assert limiter.acquire(0.0, 4).remaining == 6
    assert limiter.acquire(0.0, 6).remaining == 0
    assert limiter.acquire(0.0, 1).retry_after == pytest.approx(1.0)


@pytest.mark.parametrize("limiter_type", LIMITERS)
@pytest.mark.parametrize("cost", [0, -1, 11, 1.5, "3", True])
def test_impossible_cost_is_a_usage_error(limiter_type: type[TokenBucket], cost: int) -> None:
    """A cost that is not a whole number from 1 to the capacity is refused loudly."""
    limiter = limiter_type(RateLimit(capacity=10, per_second=1))
    with pytest.raises(UsageError, match="cost"):
        limiter.acquire(0.0, cost)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"capacity": 0, "per_second": 1}, "capacity"),
        ({"capacity": 1.5, "per_second": 1}, "capacity"),
        ({"capacity": True, "per_second": 1}, "capacity"),
        ({"capacity": 5, "per_second": 0}, "per_second"),
        ({"capacity": 5, "per_second": 1e-300}, "per_second"),
        ({"capacity": 5, "per_second": 6e8}, "per_second"),
        ({"capacity": 5, "per_second": float("nan")}, "per_second"),
        ({"capacity": 5, "per_second": "10"}, "per_second"),
    ],
)
def test_bad_limit_names_the_field(kwargs: dict[str, object], key: str) -> None:
    """An invalid RateLimit raises ConfigError naming the offending field."""
    with pytest.raises(ConfigError) as caught:
        RateLimit(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


@pytest.mark.parametrize("limiter_type", LIMITERS)
def test_a_clock_with_a_negative_origin_starts_full(limiter_type: type[TokenBucket]) -> None:
    """The bucket starts full whatever the clock's origin, negative included."""
    limiter = limiter_type(RateLimit(capacity=3, per_second=1))
    assert [limiter.acquire(-50.0).allowed for _ in range(4)] == [True, True, True, False]


def test_rate_is_rounded_down_never_up() -> None:
    """The per-token interval rounds up, so the effective rate never exceeds the configured one."""
    limit = RateLimit(capacity=1, per_second=3)
    assert 1e9 / limit.interval_ns <= 3


@pytest.mark.parametrize("limiter_type", LIMITERS)
def test_hook_reports_only_changes(limiter_type: type[TokenBucket]) -> None:
    """The hook hears when limiting starts and stops, not every decision."""
    events: list[object] = []
    limiter = limiter_type(RateLimit(capacity=2, per_second=1), name="api", hook=events.append)
    for now in (0.0, 0.0, 0.0, 0.0, 0.5, 3.0, 3.0):
        limiter.acquire(now)
    assert events == [
        RateLimitStateChanged(limiter="api", limited=True, at=0.0),
        RateLimitStateChanged(limiter="api", limited=False, at=3.0),
    ]
