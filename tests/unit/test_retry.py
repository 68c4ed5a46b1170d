import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError, UsageError
from meshkit.policy import (
    Backoff,
    RetryBudget,
    RetryBudgetStateChanged,
    RetryPolicy,
    RetryScheduled,
    RetryStopped,
    StopReason,
)

backoffs = st.builds(
    lambda initial, factor, multiplier: Backoff(
        initial=initial, maximum=initial * factor, multiplier=multiplier
    ),
    st.floats(min_value=0.001, max_value=10),
    st.floats(min_value=1, max_value=1000),
    st.floats(min_value=1, max_value=10),
)


@given(backoffs, st.integers(min_value=1, max_value=2000), st.integers())
def test_backoff_stays_within_its_bounds(backoff: Backoff, retry: int, seed: int) -> None:
    """Every wait is in [0, min(maximum, initial * multiplier**(n-1))]."""
    ceiling = backoff.ceiling(retry)
    assert backoff.initial <= ceiling <= backoff.maximum
    if retry < 50:
        expected = min(backoff.maximum, backoff.initial * backoff.multiplier ** (retry - 1))
        assert ceiling == pytest.approx(expected)
    assert 0 <= backoff.delay(retry, random.Random(seed)) <= ceiling


@given(backoffs, st.integers(min_value=1, max_value=100))
def test_backoff_ceiling_never_shrinks(backoff: Backoff, retry: int) -> None:
    """A later retry never has a lower ceiling than an earlier one."""
    assert backoff.ceiling(retry + 1) >= backoff.ceiling(retry)


def test_full_jitter_spreads_over_the_whole_range() -> None:
    """Full jitter uses the whole range, not a band near the ceiling."""
    rng = random.Random(7)
    backoff = Backoff(initial=1, maximum=1)
    waits = [backoff.delay(1, rng) for _ in range(2000)]
    assert min(waits) < 0.05
    assert max(waits) > 0.95


@given(st.integers(min_value=1, max_value=10), st.integers())
def test_attempts_are_bounded(attempts: int, seed: int) -> None:
    """A request that always fails retryably is tried exactly `attempts` times."""
    run = RetryPolicy(attempts=attempts).start(0.0, rng=random.Random(seed))
    tries, now = 1, 0.0
    while (decision := run.failed(now, retryable=True)).retry:
        now += decision.delay
        tries += 1
    assert tries == attempts
    assert decision.reason is StopReason.ATTEMPTS_EXHAUSTED


@given(
    timeout=st.floats(min_value=0.01, max_value=5),
    attempt_time=st.floats(min_value=0, max_value=1),
    seed=st.integers(),
)
def test_no_retry_is_scheduled_past_the_deadline(
    timeout: float, attempt_time: float, seed: int
) -> None:
    """Every scheduled retry's wait ends before the run's overall timeout."""
    policy = RetryPolicy(attempts=50, timeout=timeout, backoff=Backoff(initial=0.05, maximum=1))
    run = policy.start(0.0, rng=random.Random(seed))
    now = attempt_time
    while (decision := run.failed(now, retryable=True)).retry:
        assert now + decision.delay < timeout
        now += decision.delay + attempt_time
    assert decision.reason in {StopReason.DEADLINE, StopReason.ATTEMPTS_EXHAUSTED}


def test_a_failure_that_is_not_retryable_stops_at_once() -> None:
    """retryable=False ends the run after one attempt."""
    run = RetryPolicy(attempts=5).start(0.0, rng=random.Random(1))
    decision = run.failed(0.0, retryable=False)
    assert not decision.retry
    assert decision.reason is StopReason.NOT_RETRYABLE
    with pytest.raises(UsageError, match="already ended"):
        run.failed(0.0, retryable=True)


@given(
    st.lists(st.sampled_from(["start", "fail", "succeed", "close"]), max_size=400),
    st.floats(min_value=0, max_value=1),
    st.integers(min_value=0, max_value=5),
)
def test_budget_caps_retries_in_flight(
    actions: list[str], ratio: float, min_concurrency: int
) -> None:
    """When a retry is admitted, retries in flight are within max(floor, ratio x active).

    The limit is checked on admission, as Envoy's is: a request finishing later
    lowers the limit without recalling retries already under way.
    """
    budget = RetryBudget(ratio=ratio, min_concurrency=min_concurrency)
    policy = RetryPolicy(attempts=1_000)
    rng = random.Random(0)
    runs = []
    for step, action in enumerate(actions):
        if action == "start" or not runs:
            runs.append(policy.start(0.0, rng=rng, budget=budget))
            continue
        run = runs[step % len(runs)]
        if action == "fail":
            if run.failed(0.0, retryable=True).retry:
                limit = max(min_concurrency, int(ratio * budget.active_requests))
                assert budget.active_retries <= limit
        elif action == "succeed":
            run.succeeded(0.0)
        else:
            run.close(0.0)
        if run.done:
            runs.remove(run)
    for run in runs:
        run.close(0.0)
    assert (budget.active_requests, budget.active_retries) == (0, 0)


def test_budget_refuses_beyond_its_share() -> None:
    """With 10 requests failing at once and a 20% budget, 3 (the floor) retry; the rest stop."""
    events: list[object] = []
    budget = RetryBudget(ratio=0.2, min_concurrency=3, name="users", hook=events.append)
    runs = [
        RetryPolicy(attempts=3).start(0.0, rng=random.Random(i), budget=budget) for i in range(10)
    ]
    decisions = [run.failed(0.0, retryable=True) for run in runs]
    assert sum(d.retry for d in decisions) == 3
    assert {d.reason for d in decisions if not d.retry} == {StopReason.BUDGET_EXHAUSTED}
    assert budget.rejected == 7
    assert events[0] == RetryBudgetStateChanged(
        budget="users", exhausted=True, active_requests=10, active_retries=3
    )


def test_a_peer_asking_for_time_gets_it_within_the_deadline() -> None:
    """retry_after sets the least wait; a wait past the deadline stops the run instead."""
    run = RetryPolicy(attempts=5, timeout=10).start(0.0, rng=random.Random(1))
    decision = run.failed(0.0, retryable=True, retry_after=2.5)
    assert decision.retry
    assert decision.delay == 2.5
    decision = run.failed(3.0, retryable=True, retry_after=8.0)
    assert not decision.retry
    assert decision.reason is StopReason.DEADLINE


def test_budget_says_when_it_has_room_again() -> None:
    """Freeing a slot in an exhausted budget is reported at once, not on the next retry."""
    events: list[object] = []
    budget = RetryBudget(ratio=0, min_concurrency=1, name="b", hook=events.append)
    budget.request_started()
    assert budget.try_acquire()
    assert not budget.try_acquire()
    budget.release()
    assert [e.exhausted for e in events] == [True, False]  # type: ignore[attr-defined]
    stats = budget.statistics()
    assert (stats.active_requests, stats.active_retries, stats.limit, stats.rejected) == (
        1,
        0,
        1,
        1,
    )


def test_hook_reports_retries_and_the_end_of_the_run() -> None:
    """The hook hears each scheduled retry and why the run stopped."""
    events: list[object] = []
    policy = RetryPolicy(attempts=2, name="orders")
    run = policy.start(0.0, rng=random.Random(3), hook=events.append)
    first = run.failed(1.0, retryable=True)
    run.failed(2.0, retryable=True)
    assert events == [
        RetryScheduled(policy="orders", attempt=2, delay=first.delay, at=1.0),
        RetryStopped(policy="orders", attempts=2, reason=StopReason.ATTEMPTS_EXHAUSTED, at=2.0),
    ]


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: Backoff(initial=0), "initial"),
        (lambda: Backoff(initial=1, maximum=0.5), "maximum"),
        (lambda: Backoff(multiplier=0.5), "multiplier"),
        (lambda: RetryPolicy(attempts=0), "attempts"),
        (lambda: RetryPolicy(timeout=-1), "timeout"),
        (lambda: RetryPolicy(backoff={"initial": 1}), "backoff"),
        (lambda: RetryBudget(ratio=1.5), "ratio"),
        (lambda: RetryBudget(min_concurrency=-1), "min_concurrency"),
    ],
)
def test_bad_options_name_the_field(build: object, key: str) -> None:
    """Invalid retry options raise ConfigError naming the option."""
    with pytest.raises(ConfigError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.key == key
