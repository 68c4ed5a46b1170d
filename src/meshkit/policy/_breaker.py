"""A circuit breaker: stop calling a peer that is failing, then probe it.

States and transitions::

    CLOSED --(N consecutive failures, or failure rate >= R over the window
              with at least M calls)--> OPEN
    OPEN   --(open period over; the next allow())--> HALF_OPEN
    HALF_OPEN --(S probe successes)--> CLOSED
    HALF_OPEN --(a probe fails)--> OPEN, for a longer period

The open period starts at ``open_for`` and is multiplied by
``open_multiplier`` each time the breaker trips again without having closed
in between, up to ``open_for_max``, so a peer that stays down is probed less
and less often (Envoy grows an outlier's ejection time too, linearly; a
multiplier backs off faster from a long outage). While half-open at most
``half_open_probes`` calls are in flight; a probe whose caller gave up
without an outcome (cancelled) must be handed back with ``release()``, or
its slot stays taken.

Every admitted call gets a ticket, the breaker's generation at that moment;
its outcome moves the state machine only if the breaker is still in that
generation. A slow call admitted before a trip therefore cannot close a
half-open breaker by succeeding late. Every outcome still counts in
``statistics()``.

The defaults follow common practice: 5 consecutive failures (pybreaker,
Envoy's consecutive_5xx), a 50% failure rate (resilience4j), a 10-second
window with at least 20 calls so a quiet service does not trip on two errors.
"""

from __future__ import annotations

import msgspec

from meshkit.errors import ConfigError
from meshkit.policy import _check as check
from meshkit.policy._events import BreakerState, BreakerStateChanged, Hook

__all__ = ["BreakerConfig", "BreakerStatistics", "CircuitBreaker"]

_SLOTS = 10  # buckets in the failure-rate window
_CLOSED, _OPEN, _HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """When a breaker trips and how it recovers. ``None`` turns a trigger off."""

    consecutive_failures: int | None = 5
    failure_rate: float | None = 0.5
    window: float = 10.0
    minimum_calls: int = 20
    slow_call: float | None = None
    open_for: float = 5.0
    open_for_max: float = 60.0
    open_multiplier: float = 2.0
    half_open_probes: int = 1
    half_open_successes: int = 2

    def __post_init__(self) -> None:
        if self.consecutive_failures is None and self.failure_rate is None:
            raise ConfigError(
                "failure_rate",
                "is off and so is consecutive_failures: the breaker could never trip",
            )
        if self.consecutive_failures is not None:
            check.whole("consecutive_failures", self.consecutive_failures, minimum=1)
        if (
            self.failure_rate is not None
            and check.number("failure_rate", self.failure_rate, low=0, high=1) == 0
        ):
            raise ConfigError("failure_rate", "must be > 0 (or None to turn it off)")
        check.seconds("window", self.window)
        check.whole("minimum_calls", self.minimum_calls, minimum=1)
        if self.slow_call is not None:
            check.seconds("slow_call", self.slow_call)
        check.seconds("open_for", self.open_for)
        if check.seconds("open_for_max", self.open_for_max) < self.open_for:
            raise ConfigError("open_for_max", f"must be >= open_for ({self.open_for})")
        check.number("open_multiplier", self.open_multiplier, low=1, high=1000)
        check.whole("half_open_probes", self.half_open_probes, minimum=1)
        check.whole("half_open_successes", self.half_open_successes, minimum=1)


class BreakerStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot for dashboards and admin APIs."""

    state: BreakerState
    consecutive_failures: int
    window_calls: int
    window_failures: int
    trips: int
    open_until: float | None
    probes_in_flight: int
    total_calls: int
    total_failures: int
    total_rejected: int

    @property
    def failure_rate(self) -> float:
        return self.window_failures / self.window_calls if self.window_calls else 0.0


class CircuitBreaker:
    """Decides whether a call to one peer may go ahead, from the outcomes so far.

    Use: ``ticket = breaker.allow(now)``; ``None`` means refuse the call now
    (``open_until`` says until when). Otherwise make the call and report it
    with ``breaker.record(ticket, now, success=..., duration=...)``.
    """

    __slots__ = (
        "_bucket",
        "_calls",
        "_consecutive",
        "_failures",
        "_generation",
        "_hook",
        "_open_until",
        "_period",
        "_probe_successes",
        "_probes",
        "_slot",
        "_slow_call",
        "_state",
        "_trips",
        "_width",
        "_window_calls",
        "_window_failures",
        "config",
        "name",
        "total_calls",
        "total_failures",
        "total_rejected",
    )

    def __init__(
        self, config: BreakerConfig | None = None, *, name: str = "", hook: Hook | None = None
    ) -> None:
        if config is None:
            config = BreakerConfig()
        elif not isinstance(config, BreakerConfig):
            raise ConfigError("config", f"must be a BreakerConfig, got {type(config).__name__}")
        self.config = config
        self.name = name
        self._hook = hook
        self._state = _CLOSED
        self._slow_call = config.slow_call
        self._generation = 0
        self._consecutive = 0
        self._trips = 0  # trips since the breaker last closed
        self._period = config.open_for  # the next open period; grows with each trip
        self._open_until = 0.0
        self._probes = 0
        self._probe_successes = 0
        # The failure-rate window: _SLOTS buckets of window/_SLOTS seconds, as
        # a ring indexed by the bucket number (now // width) modulo _SLOTS;
        # _slot is the ring index of the current bucket.
        self._width = config.window / _SLOTS
        self._bucket = 0
        self._slot = 0
        self._calls = [0] * _SLOTS
        self._failures = [0] * _SLOTS
        self._window_calls = 0
        self._window_failures = 0
        self.total_calls = 0
        self.total_failures = 0
        self.total_rejected = 0

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def open_until(self) -> float | None:
        """When an open breaker will admit a probe; ``None`` unless open."""
        return self._open_until if self._state is _OPEN else None

    def allow(self, now: float) -> int | None:
        """A ticket for a call at ``now``, or ``None`` if the call must not be made."""
        if self._state is _CLOSED:
            return self._generation
        return self._allow_when_not_closed(now)

    def _allow_when_not_closed(self, now: float) -> int | None:
        if self._state is _OPEN:
            if now < self._open_until:
                self.total_rejected += 1
                return None
            self._transition(_HALF_OPEN, now, "open period over")
        if self._probes >= self.config.half_open_probes:
            self.total_rejected += 1
            return None
        self._probes += 1
        return self._generation

    def record(self, ticket: int, now: float, *, success: bool, duration: float = 0.0) -> None:
        """Report the outcome of a call admitted with ``ticket``.

        With ``slow_call`` configured, a call that took at least that long
        counts as a failure even if it succeeded.
        """
        slow = self._slow_call
        failed = not success or (slow is not None and duration >= slow)
        self.total_calls += 1
        if failed:
            self.total_failures += 1
        if ticket != self._generation:
            return
        if self._state is _CLOSED:
            # The common case, kept inline: count the call in the window.
            if now >= (self._bucket + 1) * self._width:
                self._advance_window(now)
            self._calls[self._slot] += 1
            self._window_calls += 1
            if failed:
                self._closed_failure(now)
            else:
                self._consecutive = 0
        elif self._state is _HALF_OPEN:
            self._probe_outcome(now, failed=failed)

    def release(self, ticket: int) -> None:
        """Hand back a ticket whose call ended with no outcome (it was cancelled).

        Nothing is counted, but a half-open probe's slot is freed; without
        this, a cancelled probe would keep the breaker from ever probing again.
        """
        if ticket == self._generation and self._state is _HALF_OPEN and self._probes > 0:
            self._probes -= 1

    def statistics(self, now: float) -> BreakerStatistics:
        if now >= (self._bucket + 1) * self._width:
            self._advance_window(now)
        return BreakerStatistics(
            state=self._state,
            consecutive_failures=self._consecutive,
            window_calls=self._window_calls,
            window_failures=self._window_failures,
            trips=self._trips,
            open_until=self.open_until,
            probes_in_flight=self._probes,
            total_calls=self.total_calls,
            total_failures=self.total_failures,
            total_rejected=self.total_rejected,
        )

    # -- closed ---------------------------------------------------------

    def _closed_failure(self, now: float) -> None:
        self._failures[self._slot] += 1
        self._window_failures += 1
        self._consecutive += 1
        reason = self._trip_reason()
        if reason is not None:
            self._open(now, reason)

    def _trip_reason(self) -> str | None:
        config = self.config
        if config.consecutive_failures is not None and (
            self._consecutive >= config.consecutive_failures
        ):
            return f"{self._consecutive} consecutive failures"
        if (
            config.failure_rate is not None
            and self._window_calls >= config.minimum_calls
            and self._window_failures >= config.failure_rate * self._window_calls
        ):
            return (
                f"{self._window_failures} of {self._window_calls} calls failed"
                f" in the last {config.window:g}s"
            )
        return None

    def _advance_window(self, now: float) -> None:
        """Move the ring forward to ``now``'s bucket, dropping buckets that fell out."""
        bucket = int(now // self._width)
        if bucket <= self._bucket:
            return
        for b in range(self._bucket + 1, min(bucket, self._bucket + _SLOTS) + 1):
            slot = b % _SLOTS
            self._window_calls -= self._calls[slot]
            self._window_failures -= self._failures[slot]
            self._calls[slot] = 0
            self._failures[slot] = 0
        self._bucket = bucket
        self._slot = bucket % _SLOTS

    # -- open and half-open -----------------------------------------------

    def _open(self, now: float, reason: str) -> None:
        config = self.config
        self._trips += 1
        self._open_until = now + self._period
        # Kept as state and capped at once, so a long outage cannot overflow it.
        self._period = min(self._period * config.open_multiplier, config.open_for_max)
        self._transition(_OPEN, now, reason)

    def _probe_outcome(self, now: float, *, failed: bool) -> None:
        self._probes -= 1
        if failed:
            self._open(now, "a half-open probe failed")
            return
        self._probe_successes += 1
        if self._probe_successes >= self.config.half_open_successes:
            self._trips = 0
            self._period = self.config.open_for
            self._transition(_CLOSED, now, f"{self._probe_successes} probes succeeded")

    def _transition(self, state: BreakerState, now: float, reason: str) -> None:
        previous = self._state
        self._state = state
        self._generation += 1
        self._probes = 0
        self._probe_successes = 0
        self._consecutive = 0
        if state is _CLOSED:
            # A fresh start: failures from before the trip must not count again.
            self._calls = [0] * _SLOTS
            self._failures = [0] * _SLOTS
            self._window_calls = 0
            self._window_failures = 0
        if self._hook is not None:
            self._hook(
                BreakerStateChanged(
                    breaker=self.name,
                    previous=previous,
                    state=state,
                    reason=reason,
                    at=now,
                    open_until=self.open_until,
                )
            )
