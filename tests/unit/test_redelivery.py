"""Redelivery: waits growing to a ceiling between deliveries, then a dead letter."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshkit.errors import ConfigError, UsageError
from meshkit.policy import Backoff, Redelivery


def test_defaults_wait_1_2_4_8_seconds_then_give_up_after_five_deliveries() -> None:
    policy = Redelivery()
    assert [policy.after_failure(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, None]
    assert policy.schedule() == [1.0, 2.0, 4.0, 8.0]


def test_waits_stop_growing_at_the_backoff_maximum() -> None:
    policy = Redelivery(max_deliveries=6, backoff=Backoff(initial=0.1, maximum=0.3))
    assert policy.schedule() == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])


def test_one_delivery_allowed_means_the_first_failure_is_final() -> None:
    assert Redelivery(max_deliveries=1).after_failure(1) is None
    assert Redelivery(max_deliveries=1).schedule() == []


@given(st.integers(min_value=1, max_value=40), st.integers(min_value=1, max_value=60))
def test_a_message_is_given_up_exactly_at_the_maximum(maximum: int, deliveries: int) -> None:
    """Every failure before the maximum gets a wait; the maximum-th and later get none."""
    waits = Redelivery(max_deliveries=maximum).after_failure(deliveries)
    assert (waits is None) == (deliveries >= maximum)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"max_deliveries": 0}, "max_deliveries"),
        ({"max_deliveries": 2.5}, "max_deliveries"),
        ({"ack_wait": 0}, "ack_wait"),
        ({"ack_wait": float("inf")}, "ack_wait"),
    ],
)
def test_bad_options_name_themselves(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Redelivery(**options)  # type: ignore[arg-type]
    assert caught.value.key == key


def test_deliveries_are_counted_from_one() -> None:
    with pytest.raises(UsageError):
        Redelivery().after_failure(0)
