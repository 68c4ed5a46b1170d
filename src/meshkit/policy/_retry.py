"""Retries: exponential backoff with full jitter, within attempts, a deadline and a budget.

The pure part of a retry loop, in the style of tenacity's ``iter()``: a
``RetryRun`` is told how each attempt ended and answers "retry after this many
seconds" or "stop, for this reason"; the driver does the sleeping and calling.

Backoff is "full jitter" (AWS Architecture Blog, *Exponential Backoff and
Jitter*): the n-th retry waits a uniformly random time in
``[0, min(maximum, initial * multiplier**(n-1))]``, which spreads clients out
better than adding a little jitter to a fixed delay.

A ``RetryBudget`` caps retries across all requests, as Envoy's
``retry_budget`` does: active retries may be at most ``ratio`` of active
requests, but never fewer than ``min_concurrency`` are allowed. Without it, a
failing peer under load receives up to ``attempts`` times the traffic: the
retry storm that turns a slow service into a dead one.
"""

from __future__ import annotations

import random

import msgspec

from meshkit.errors import ConfigError, UsageError
from meshkit.policy import _check as check
from meshkit.policy._events import (
    Hook,
    RetryBudgetStateChanged,
    RetryScheduled,
    RetryStopped,
    StopReason,
)

__all__ = [
    "Backoff",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryDecision",
    "RetryPolicy",
    "RetryRun",
]


class Backoff(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff bounds. Defaults are Envoy's: 25 ms growing to 250 ms."""

    initial: float = 0.025
    maximum: float = 0.25
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        check.seconds("initial", self.initial)
        if check.seconds("maximum", self.maximum) < self.initial:
            raise ConfigError(
                "maximum", f"must be >= initial ({self.initial}), got {self.maximum!r}"
            )
        check.number("multiplier", self.multiplier, low=1, high=1e6)

    def ceiling(self, retry: int) -> float:
        """The longest wait before the ``retry``-th retry (1 for the first)."""
        if retry < 1:
            raise UsageError(f"retry numbers start at 1, got {retry}")
        try:
            grown = self.initial * self.multiplier ** (retry - 1)
        except OverflowError:  # a very long run: far past the maximum anyway
            return self.maximum
        # Not min(): on this path its generic argument handling costs more than the rest.
        return grown if grown < self.maximum else self.maximum

    def delay(self, retry: int, rng: random.Random) -> float:
        """A full-jitter wait before the ``retry``-th retry."""
        return self.ceiling(retry) * rng.random()


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How often and how long to retry one request.

    ``attempts`` counts the first try (3: one try and up to two retries).
    ``timeout`` bounds the whole run from its start: no retry is scheduled
    whose wait would end after it.
    """

    attempts: int = 3
    timeout: float | None = None
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    name: str = ""

    def __post_init__(self) -> None:
        check.whole("attempts", self.attempts, minimum=1)
        if not isinstance(self.backoff, Backoff):
            raise ConfigError("backoff", f"must be a Backoff, got {type(self.backoff).__name__}")
        if self.timeout is not None:
            check.seconds("timeout", self.timeout)

    def start(
        self,
        now: float,
        *,
        rng: random.Random,
        budget: RetryBudget | None = None,
        hook: Hook | None = None,
    ) -> RetryRun:
        """Begin a run for one request whose first attempt starts at ``now``."""
        return RetryRun(self, now, rng=rng, budget=budget, hook=hook)


class RetryDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Retry after ``delay`` seconds, or stop (``retry`` false) for ``reason``."""

    retry: bool
    delay: float
    reason: StopReason | None


# A decision to stop carries nothing but its reason, so one instance each serves.
_STOP = {reason: RetryDecision(retry=False, delay=0.0, reason=reason) for reason in StopReason}


class RetryRun:
    """One request's retries. Report each attempt's end; do what the decision says.

    The run counts its request as active in the budget from start until
    ``succeeded()``, a decision to stop, or ``close()``; each retry holds one
    of the budget's retry slots until the next outcome. Drivers call
    ``close()`` in a ``finally`` block so a cancelled request gives its slots
    back; it does nothing on a run that has already ended.
    """

    __slots__ = (
        "_budget",
        "_holds_retry",
        "_hook",
        "_rng",
        "attempts",
        "deadline",
        "done",
        "policy",
    )

    def __init__(
        self,
        policy: RetryPolicy,
        now: float,
        *,
        rng: random.Random,
        budget: RetryBudget | None,
        hook: Hook | None,
    ) -> None:
        self.policy = policy
        self.attempts = 1
        self.deadline = None if policy.timeout is None else now + policy.timeout
        self.done = False
        self._rng = rng
        self._budget = budget
        self._hook = hook
        self._holds_retry = False
        if budget is not None:
            budget.request_started()

    def failed(
        self, now: float, *, retryable: bool, retry_after: float | None = None
    ) -> RetryDecision:
        """The current attempt failed at ``now``; should another be made?

        ``retryable`` is the caller's judgement of the failure: a refused
        connection is, a 400 is not, and nothing is for a request that is not
        idempotent. ``retry_after`` is the soonest the peer asked to be tried
        again (a 429's or 503's Retry-After, a breaker's ``open_until - now``):
        the wait is at least that long, and the deadline still applies.
        """
        if self.done:
            raise UsageError("this retry run has already ended")
        if self._holds_retry:
            self._release_retry()
        if not retryable:
            return self._stop(now, StopReason.NOT_RETRYABLE)
        if self.attempts >= self.policy.attempts:
            return self._stop(now, StopReason.ATTEMPTS_EXHAUSTED)
        delay = self.policy.backoff.delay(self.attempts, self._rng)
        if retry_after is not None and retry_after > delay:
            delay = retry_after
        if self.deadline is not None and now + delay >= self.deadline:
            return self._stop(now, StopReason.DEADLINE)
        if self._budget is not None:
            if not self._budget.try_acquire():
                return self._stop(now, StopReason.BUDGET_EXHAUSTED)
            self._holds_retry = True
        self.attempts += 1
        if self._hook is not None:
            self._hook(
                RetryScheduled(policy=self.policy.name, attempt=self.attempts, delay=delay, at=now)
            )
        return RetryDecision(retry=True, delay=delay, reason=None)

    def succeeded(self, now: float) -> None:
        """The current attempt succeeded; the run is over."""
        if not self.done:
            self._stop(now, StopReason.SUCCEEDED)

    def close(self, now: float) -> None:
        """End the run without an outcome (cancelled), releasing the budget."""
        if not self.done:
            self._stop(now, StopReason.ABANDONED)

    def _release_retry(self) -> None:
        if self._budget is not None:
            self._budget.release()
        self._holds_retry = False

    def _stop(self, now: float, reason: StopReason) -> RetryDecision:
        if self._holds_retry:
            self._release_retry()
        self.done = True
        if self._budget is not None:
            self._budget.request_finished()
        if self._hook is not None:
            self._hook(
                RetryStopped(policy=self.policy.name, attempts=self.attempts, reason=reason, at=now)
            )
        return _STOP[reason]


class RetryBudget:
    """How many retries may be in flight across all requests to one upstream.

    At most ``ratio`` of active requests, but ``min_concurrency`` always.
    Defaults are Envoy's (20% of active requests, minimum 3). Not thread-safe,
    like everything else that runs on an event loop.
    """

    __slots__ = (
        "_exhausted",
        "_hook",
        "active_requests",
        "active_retries",
        "min_concurrency",
        "name",
        "ratio",
        "rejected",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_concurrency: int = 3,
        name: str = "",
        hook: Hook | None = None,
    ) -> None:
        self.ratio = check.number("ratio", ratio, low=0, high=1)
        self.min_concurrency = check.whole("min_concurrency", min_concurrency, minimum=0)
        self.name = name
        self._hook = hook
        self._exhausted = False
        self.active_requests = 0
        self.active_retries = 0
        self.rejected = 0

    @property
    def limit(self) -> int:
        """How many retries may be in flight right now."""
        return max(self.min_concurrency, int(self.ratio * self.active_requests))

    def request_started(self) -> None:
        self.active_requests += 1

    def request_finished(self) -> None:
        if self.active_requests <= 0:
            raise UsageError("request_finished() without a matching request_started()")
        self.active_requests -= 1

    def try_acquire(self) -> bool:
        """Take a retry slot if the budget has one; ``release()`` it when the retry ends."""
        allowed = self.active_retries < self.limit
        if allowed:
            self.active_retries += 1
        else:
            self.rejected += 1
        if allowed is self._exhausted:
            self._announce(exhausted=not allowed)
        return allowed

    def release(self) -> None:
        if self.active_retries <= 0:
            raise UsageError("release() without a matching try_acquire()")
        self.active_retries -= 1
        if self._exhausted and self.active_retries < self.limit:
            self._announce(exhausted=False)

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(
            active_requests=self.active_requests,
            active_retries=self.active_retries,
            limit=self.limit,
            rejected=self.rejected,
        )

    def _announce(self, *, exhausted: bool) -> None:
        self._exhausted = exhausted
        if self._hook is not None:
            self._hook(
                RetryBudgetStateChanged(
                    budget=self.name,
                    exhausted=exhausted,
                    active_requests=self.active_requests,
                    active_retries=self.active_retries,
                )
            )


class RetryBudgetStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A retry budget at one moment, for dashboards."""

    active_requests: int
    active_retries: int
    limit: int
    rejected: int
