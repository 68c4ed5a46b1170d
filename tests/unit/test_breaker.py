import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshkit.errors import ConfigError
from meshkit.policy import BreakerConfig, BreakerState, BreakerStateChanged, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def _fail(breaker: CircuitBreaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.allow(now)
        assert ticket is not None
        breaker.record(ticket, now, success=False)


def _succeed(breaker: CircuitBreaker, now: float, times: int = 1) -> None:
    for _ in range(times):
        ticket = breaker.allow(now)
        assert ticket is not None
        breaker.record(ticket, now, success=True)


def test_trips_on_consecutive_failures() -> None:
    """N failures in a row open the breaker; a success in between resets the count."""
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=3, failure_rate=None))
    _fail(breaker, 0.0, 2)
    _succeed(breaker, 0.0)
    _fail(breaker, 0.0, 2)
    assert breaker.state is CLOSED
    _fail(breaker, 0.0)
    assert breaker.state is OPEN
    assert breaker.allow(0.0) is None


def test_trips_on_failure_rate_only_with_enough_calls() -> None:
    """A 50% failure rate trips once minimum_calls calls are in the window."""
    config = BreakerConfig(consecutive_failures=None, failure_rate=0.5, minimum_calls=10)
    breaker = CircuitBreaker(config)
    for _ in range(4):
        _fail(breaker, 1.0)
        _succeed(breaker, 1.0)
    _fail(breaker, 1.0)
    assert breaker.state is CLOSED  # 5 of 9: under the minimum
    _succeed(breaker, 1.0)
    assert breaker.state is CLOSED  # the trip is decided on a failure
    _fail(breaker, 1.0)
    assert breaker.state is OPEN  # 6 of 11 >= 50%


def test_old_failures_leave_the_window() -> None:
    """Failures older than the window no longer count toward the rate."""
    config = BreakerConfig(consecutive_failures=None, failure_rate=0.5, minimum_calls=4, window=10)
    breaker = CircuitBreaker(config)
    _fail(breaker, 0.0)
    _succeed(breaker, 0.0)
    _fail(breaker, 0.5)
    stats = breaker.statistics(5.0)
    assert (stats.window_calls, stats.window_failures) == (3, 2)
    _succeed(breaker, 11.0, 3)
    assert breaker.statistics(11.0).window_calls == 3
    _fail(breaker, 11.0)
    assert breaker.state is CLOSED  # 1 of 4: the early failures have gone


def test_slow_calls_count_as_failures_when_configured() -> None:
    """With slow_call set, a successful but slow call is a failure."""
    breaker = CircuitBreaker(
        BreakerConfig(consecutive_failures=2, failure_rate=None, slow_call=1.0)
    )
    for _ in range(2):
        ticket = breaker.allow(0.0)
        assert ticket is not None
        breaker.record(ticket, 0.0, success=True, duration=1.5)
    assert breaker.state is OPEN


def test_recovers_through_half_open() -> None:
    """After the open period one probe goes through; enough successes close the breaker."""
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_for=5, half_open_successes=2
    )
    breaker = CircuitBreaker(config)
    _fail(breaker, 0.0)
    assert breaker.open_until == 5.0
    assert breaker.allow(4.999) is None
    probe = breaker.allow(5.0)
    assert probe is not None
    assert breaker.state is HALF_OPEN
    assert breaker.allow(5.0) is None  # one probe at a time
    breaker.record(probe, 5.1, success=True)
    assert breaker.state is HALF_OPEN
    _succeed(breaker, 5.2)
    assert breaker.state is CLOSED


def test_open_period_grows_with_repeated_trips_up_to_the_cap() -> None:
    """Each failed probe doubles the open period, up to open_for_max; closing resets it."""
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_for=5,
        open_for_max=30,
        half_open_successes=1,
    )
    breaker = CircuitBreaker(config)
    now = 0.0
    _fail(breaker, now)
    periods = []
    for _ in range(4):
        assert breaker.open_until is not None
        periods.append(breaker.open_until - now)
        now = breaker.open_until
        _fail(breaker, now)  # the probe fails
    assert periods == [5, 10, 20, 30]
    assert breaker.open_until is not None
    now = breaker.open_until
    _succeed(breaker, now)
    assert breaker.state is CLOSED
    _fail(breaker, now)
    assert breaker.open_until == now + 5


def test_a_peer_down_for_days_keeps_the_period_at_its_cap() -> None:
    """Thousands of failed probes leave the open period at open_for_max, with no overflow."""
    config = BreakerConfig(consecutive_failures=1, failure_rate=None, open_for=1, open_for_max=60)
    breaker = CircuitBreaker(config)
    now = 0.0
    for _ in range(3000):
        _fail(breaker, now)
        assert breaker.open_until is not None
        now = breaker.open_until
    assert breaker.statistics(now).trips == 3000
    _fail(breaker, now)
    assert breaker.open_until == now + 60


def test_released_probe_frees_its_slot() -> None:
    """A cancelled probe handed back with release() lets the next probe through."""
    config = BreakerConfig(consecutive_failures=1, failure_rate=None, open_for=1)
    breaker = CircuitBreaker(config)
    stale = breaker.allow(0.0)
    assert stale is not None
    _fail(breaker, 0.0)
    probe = breaker.allow(1.0)
    assert probe is not None
    assert breaker.allow(1.0) is None
    breaker.release(stale)  # from before the trip: changes nothing
    assert breaker.allow(1.0) is None
    breaker.release(probe)
    assert breaker.allow(1.0) is not None
    assert breaker.statistics(1.0).total_calls == 1  # a release is not an outcome


def test_closing_forgets_the_failures_that_tripped_it() -> None:
    """After recovery the window holds only calls made since, even as it slides on."""
    config = BreakerConfig(
        consecutive_failures=None,
        failure_rate=0.5,
        minimum_calls=4,
        window=60,
        open_for=1,
        half_open_successes=1,
    )
    breaker = CircuitBreaker(config)
    _succeed(breaker, 0.0, 2)
    _fail(breaker, 0.0, 2)
    assert breaker.state is OPEN
    _succeed(breaker, 1.0)  # the probe closes it
    assert breaker.state is CLOSED
    _succeed(breaker, 1.0)
    _fail(breaker, 1.0)
    stats = breaker.statistics(1.0)
    assert (stats.window_calls, stats.window_failures) == (2, 1)
    stats = breaker.statistics(62.0)  # every bucket of the window has gone by
    assert (stats.window_calls, stats.window_failures) == (0, 0)


def test_consecutive_failures_restart_after_recovery() -> None:
    """The consecutive count starts from zero after the breaker closes again."""
    config = BreakerConfig(
        consecutive_failures=2, failure_rate=None, open_for=1, half_open_successes=1
    )
    breaker = CircuitBreaker(config)
    _fail(breaker, 0.0, 2)
    _succeed(breaker, 1.0)
    assert breaker.state is CLOSED
    _fail(breaker, 1.0)
    assert breaker.state is CLOSED


def test_probe_successes_restart_when_the_breaker_reopens() -> None:
    """A success before a failed probe does not count toward closing after the next period."""
    config = BreakerConfig(
        consecutive_failures=1,
        failure_rate=None,
        open_for=1,
        half_open_successes=2,
        half_open_probes=2,
    )
    breaker = CircuitBreaker(config)
    _fail(breaker, 0.0)
    _succeed(breaker, 1.0)
    _fail(breaker, 1.0)  # second probe fails: open again for 2 s
    assert breaker.state is OPEN
    _succeed(breaker, 3.0)
    assert breaker.state is HALF_OPEN  # one success so far in this half-open period


def test_breaker_refuses_a_config_of_the_wrong_type() -> None:
    """Passing a dict where a BreakerConfig belongs is a ConfigError, not a later crash."""
    with pytest.raises(ConfigError, match="BreakerConfig"):
        CircuitBreaker({"open_for": 1})  # type: ignore[arg-type]


def test_late_outcomes_from_before_a_trip_are_ignored() -> None:
    """A call admitted while closed cannot close a half-open breaker by succeeding late."""
    config = BreakerConfig(
        consecutive_failures=1, failure_rate=None, open_for=1, half_open_successes=1
    )
    breaker = CircuitBreaker(config)
    slow = breaker.allow(0.0)
    assert slow is not None
    _fail(breaker, 0.0)
    probe = breaker.allow(1.0)
    assert probe is not None
    breaker.record(slow, 1.5, success=True)
    assert breaker.state is HALF_OPEN
    assert breaker.statistics(1.5).total_calls == 2  # still counted
    breaker.record(probe, 1.6, success=True)
    assert breaker.state is CLOSED


def test_hook_hears_every_transition_with_a_reason() -> None:
    """Transitions are reported as frozen records with the reason and the reopen time."""
    events: list[object] = []
    config = BreakerConfig(
        consecutive_failures=2, failure_rate=None, open_for=5, half_open_successes=1
    )
    breaker = CircuitBreaker(config, name="orders", hook=events.append)
    _fail(breaker, 0.0, 2)
    _succeed(breaker, 5.0)
    assert events == [
        BreakerStateChanged(
            breaker="orders",
            previous=CLOSED,
            state=OPEN,
            reason="2 consecutive failures",
            at=0.0,
            open_until=5.0,
        ),
        BreakerStateChanged(
            breaker="orders",
            previous=OPEN,
            state=HALF_OPEN,
            reason="open period over",
            at=5.0,
            open_until=None,
        ),
        BreakerStateChanged(
            breaker="orders",
            previous=HALF_OPEN,
            state=CLOSED,
            reason="1 probes succeeded",
            at=5.0,
            open_until=None,
        ),
    ]


def test_statistics_count_calls_failures_and_rejections() -> None:
    """statistics() reports totals and the window for dashboards."""
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=2, failure_rate=None))
    _succeed(breaker, 0.0, 3)
    _fail(breaker, 0.0, 2)
    assert breaker.allow(0.0) is None
    stats = breaker.statistics(0.0)
    assert stats.state is OPEN
    assert (stats.total_calls, stats.total_failures, stats.total_rejected) == (5, 2, 1)
    assert stats.trips == 1
    assert stats.open_until == 5.0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"consecutive_failures": None, "failure_rate": None}, "failure_rate"),
        ({"open_multiplier": 1e200}, "open_multiplier"),
        ({"consecutive_failures": 0}, "consecutive_failures"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"failure_rate": 0}, "failure_rate"),
        ({"window": -1}, "window"),
        ({"minimum_calls": 0}, "minimum_calls"),
        ({"open_for": 10, "open_for_max": 5}, "open_for_max"),
        ({"open_multiplier": 0.5}, "open_multiplier"),
        ({"half_open_probes": 0}, "half_open_probes"),
        ({"slow_call": float("inf")}, "slow_call"),
    ],
)
def test_bad_config_names_the_field(kwargs: dict[str, object], key: str) -> None:
    """Invalid breaker options raise ConfigError naming the option."""
    with pytest.raises(ConfigError) as caught:
        BreakerConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


class BreakerMachine(RuleBasedStateMachine):
    """Random calls, outcomes and passing time; the invariants hold after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.config = BreakerConfig(
            consecutive_failures=3,
            failure_rate=0.5,
            minimum_calls=4,
            window=5,
            open_for=2,
            open_for_max=16,
            half_open_probes=2,
            half_open_successes=2,
        )
        self.events: list[BreakerStateChanged] = []
        self.breaker = CircuitBreaker(self.config, hook=self.events.append)  # type: ignore[arg-type]
        self.now = 0.0
        self.in_flight: list[int] = []
        self.admitted_while_open = 0
        # Consecutive failures of calls admitted in the current closed period.
        self.closed_ticket: int | None = 0
        self.closed_failures = 0
        self.seen_events = 0

    @rule(seconds=st.floats(min_value=0, max_value=6))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    def _notice_transitions(self) -> None:
        if len(self.events) != self.seen_events:
            self.seen_events = len(self.events)
            self.closed_ticket = None  # learnt again from the next call admitted while closed
            self.closed_failures = 0

    @rule()
    def call(self) -> None:
        was_open_until = self.breaker.open_until
        ticket = self.breaker.allow(self.now)
        self._notice_transitions()
        if ticket is not None:
            if self.breaker.state is CLOSED:
                self.closed_ticket = ticket
            self.in_flight.append(ticket)
            if was_open_until is not None and self.now < was_open_until:
                self.admitted_while_open += 1

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(min_value=0), success=st.booleans())
    def outcome(self, index: int, success: bool) -> None:
        ticket = self.in_flight.pop(index % len(self.in_flight))
        counts = self.breaker.state is CLOSED and ticket == self.closed_ticket
        self.breaker.record(ticket, self.now, success=success)
        if counts:
            self.closed_failures = 0 if success else self.closed_failures + 1
        self._notice_transitions()

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(min_value=0))
    def cancel(self, index: int) -> None:
        self.breaker.release(self.in_flight.pop(index % len(self.in_flight)))

    @invariant()
    def consecutive_failures_trip_it(self) -> None:
        # Liveness: with the rate trigger as a second way in, a closed breaker
        # has always tripped by its third consecutive failure.
        if self.breaker.state is CLOSED:
            assert self.closed_failures < 3

    @invariant()
    def open_admits_nothing_before_its_period_ends(self) -> None:
        assert self.admitted_while_open == 0

    @invariant()
    def probes_are_bounded(self) -> None:
        stats = self.breaker.statistics(self.now)
        assert 0 <= stats.probes_in_flight <= self.config.half_open_probes
        if stats.state is not HALF_OPEN:
            assert stats.probes_in_flight == 0

    @invariant()
    def transitions_follow_the_diagram(self) -> None:
        allowed = {(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, OPEN), (HALF_OPEN, CLOSED)}
        state = CLOSED
        for event in self.events:
            assert event.previous is state
            assert (event.previous, event.state) in allowed
            state = event.state
        assert state is self.breaker.state

    @invariant()
    def open_period_is_within_bounds(self) -> None:
        for event in self.events:
            if event.state is OPEN:
                assert event.open_until is not None
                period = event.open_until - event.at
                # 1 ns of tolerance: open_until is at + period in floats.
                assert self.config.open_for - 1e-9 <= period <= self.config.open_for_max + 1e-9


TestBreakerMachine = BreakerMachine.TestCase
