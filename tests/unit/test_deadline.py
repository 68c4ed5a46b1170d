import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError, DeadlineExceededError, InvalidArgumentError
from meshkit.policy import DeadlineBudget


@given(
    total=st.floats(min_value=0.01, max_value=60),
    reserve_share=st.floats(min_value=0, max_value=0.9),
    used=st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=8),
)
def test_sequential_calls_always_fit_before_the_deadline(
    total: float, reserve_share: float, used: list[float]
) -> None:
    """Calls that each take at most their timeout all end before deadline - reserve."""
    reserve = total * reserve_share
    budget = DeadlineBudget.after(0.0, total, reserve=reserve)
    now = 0.0
    for left in range(len(used), 0, -1):
        timeout = budget.sequential(now, left)
        assert timeout > 0
        now += timeout * used[len(used) - left]  # the call took this share of its timeout
        assert now <= total - reserve + 1e-9


def test_unused_time_rolls_forward() -> None:
    """A call that finishes early leaves its time to the calls after it."""
    budget = DeadlineBudget.after(0.0, 3.0)
    assert budget.sequential(0.0, 3) == pytest.approx(1.0)
    assert budget.sequential(0.1, 2) == pytest.approx(1.45)  # the first call took 0.1s


def test_weights_split_unevenly() -> None:
    """Weights give the next call its share of what is left."""
    budget = DeadlineBudget.after(10.0, 4.0, reserve=0.5)
    assert budget.sequential(10.0, (2, 1, 1)) == pytest.approx(1.75)


def test_parallel_calls_each_get_all_but_the_reserve() -> None:
    """A fan-out's calls run at once, so each may use all the usable time."""
    budget = DeadlineBudget.after(0.0, 2.0, reserve=0.25)
    assert budget.parallel(0.5) == pytest.approx(1.25)
    assert budget.remaining(0.5) == pytest.approx(1.5)


def test_a_spent_budget_raises() -> None:
    """With nothing left beyond the reserve, asking for a timeout raises DeadlineExceededError."""
    budget = DeadlineBudget.after(0.0, 1.0, reserve=0.2)
    assert not budget.expired(0.9)
    with pytest.raises(DeadlineExceededError, match="spent"):
        budget.parallel(0.8)
    assert budget.expired(1.0)
    assert budget.remaining(5.0) == 0.0
    with pytest.raises(TimeoutError):
        budget.sequential(5.0, 1)


@pytest.mark.parametrize(
    ("build", "key"),
    [
        (lambda: DeadlineBudget.after(0.0, 0), "seconds"),
        (lambda: DeadlineBudget(1.0, reserve=-1), "reserve"),
        (lambda: DeadlineBudget(float("nan")), "expires_at"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, 0), "calls"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, (1, -1)), "calls"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, ()), "calls"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, 2.0), "calls"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, [1, "a"]), "calls"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, [True, 1]), "calls"),
        (lambda: DeadlineBudget.after(0.0, 1).sequential(0.0, "ab"), "calls"),
        (lambda: DeadlineBudget("5"), "expires_at"),
        (lambda: DeadlineBudget.after(0.0, 1, reserve=5), "reserve"),
    ],
)
def test_bad_arguments_name_the_field(build: object, key: str) -> None:
    """Invalid budgets raise ConfigError, invalid splits InvalidArgumentError (a value of one
    call, not configuration), each naming the argument."""
    with pytest.raises(InvalidArgumentError) as caught:
        build()  # type: ignore[operator]
    assert caught.value.key == key
    assert isinstance(caught.value, ConfigError) == (key != "calls")
