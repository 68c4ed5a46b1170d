"""Rate limiting: a token bucket, and the same limit as a GCRA.

Both forms admit exactly the same requests for the same inputs. The token
bucket is the form people reason about (a bucket of ``capacity`` tokens refilled
at ``per_second``; a request takes ``cost`` tokens). The GCRA (generic cell rate
algorithm, ITU-T I.371) keeps one number per client instead of two, the
"theoretical arrival time", which is what lets a Redis script update a shared
limit in one atomic step; the gateway's global limits use that form.

Why integers: both forms count credit in nanoseconds, one token being
``interval_ns`` nanoseconds of credit. Integer arithmetic makes the two forms
agree to the last request, with no float rounding at the boundary, and
rounding the interval up means the effective rate never exceeds the one
configured.
"""

from __future__ import annotations

import math

import msgspec

from meshkit.errors import UsageError
from meshkit.policy import _check as check
from meshkit.policy._events import Hook, RateLimitStateChanged

__all__ = ["GCRA", "RateDecision", "RateLimit", "TokenBucket"]

_NS = 1_000_000_000
# "Never used": earlier than any time a clock will report, so the first
# request finds the bucket full whatever the clock's origin.
_NEVER = -(2**62)


class RateLimit(msgspec.Struct, frozen=True):
    """``capacity`` requests at once (the burst), refilled at ``per_second``."""

    capacity: int
    per_second: float

    def __post_init__(self) -> None:
        check.whole("capacity", self.capacity, minimum=1)
        # From one request in 11 days to a million a second: within that range
        # the whole-nanosecond interval is off by at most 0.1%.
        check.number("per_second", self.per_second, low=1e-6, high=1e6)

    @property
    def interval_ns(self) -> int:
        """Nanoseconds of credit one token is worth (rounded up: never faster)."""
        return math.ceil(_NS / self.per_second)


class RateDecision(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to one request.

    ``remaining`` is whole tokens left after this decision; ``retry_after`` the
    seconds until this request would be admitted (0 when admitted);
    ``reset_after`` the seconds until the bucket is full again. Both are exact
    to the nanosecond, as floats: a retry at exactly ``now + retry_after`` can
    land a nanosecond short, so a driver rounds up (HTTP's Retry-After is in
    whole seconds anyway).
    """

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float


class _Limiter:
    """What the two forms share: configuration, validation and the hook."""

    __slots__ = ("_capacity", "_hook", "_interval", "_limited", "_max_cost", "limit", "name")

    def __init__(self, limit: RateLimit, *, name: str = "", hook: Hook | None = None) -> None:
        self.limit = limit
        self.name = name
        self._hook = hook
        self._interval = limit.interval_ns
        self._capacity = limit.capacity * self._interval
        self._max_cost = limit.capacity
        self._limited = False

    def _bad_cost(self, cost: int) -> UsageError:
        return UsageError(
            f"cost must be a whole number from 1 to the capacity ({self.limit.capacity}),"
            f" got {cost!r}"
        )

    def _flip(self, now: float, *, allowed: bool) -> None:
        # Called only when the outcome differs from the previous one.
        self._limited = not allowed
        if self._hook is not None:
            self._hook(RateLimitStateChanged(limiter=self.name, limited=not allowed, at=now))


class TokenBucket(_Limiter):
    """A token bucket: ``acquire(now, cost)`` spends tokens or says when to come back.

    The bucket starts full. ``now`` is seconds on a monotonic clock; a ``now``
    earlier than one already seen counts as no time passing.
    """

    __slots__ = ("_credit", "_last")

    def __init__(self, limit: RateLimit, *, name: str = "", hook: Hook | None = None) -> None:
        super().__init__(limit, name=name, hook=hook)
        self._credit = self._capacity
        self._last = _NEVER

    def acquire(self, now: float, cost: int = 1) -> RateDecision:
        """Admit a request of ``cost`` tokens at ``now``, or refuse it.

        Raises ``UsageError`` if ``cost`` is below 1 or above the capacity,
        since such a request could never be admitted.
        """
        if type(cost) is not int or not 1 <= cost <= self._max_cost:
            raise self._bad_cost(cost)
        t = int(now * _NS)
        need = cost * self._interval
        credit = self._credit
        if t > self._last:
            credit += t - self._last
            if credit > self._capacity:
                credit = self._capacity
            self._last = t
        allowed = credit >= need
        if allowed:
            credit -= need
        decision = RateDecision(
            allowed=allowed,
            remaining=credit // self._interval,
            retry_after=0.0 if allowed else (need - credit) / _NS,
            reset_after=(self._capacity - credit) / _NS,
        )
        self._credit = credit
        if allowed is self._limited:
            self._flip(now, allowed=allowed)
        return decision

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (fractional), without spending any."""
        t = int(now * _NS)
        credit = min(self._capacity, self._credit + max(0, t - self._last))
        return credit / self._interval


class GCRA(_Limiter):
    """The token bucket as a GCRA: one theoretical arrival time per client.

    Decisions are identical to ``TokenBucket`` for the same limit and the same
    non-decreasing sequence of ``(now, cost)``. The state is ``tat``: the time
    at which the bucket would be full again (credit = capacity - (tat - now)).
    """

    __slots__ = ("tat",)

    def __init__(
        self, limit: RateLimit, *, name: str = "", hook: Hook | None = None, tat: int = _NEVER
    ) -> None:
        super().__init__(limit, name=name, hook=hook)
        self.tat = tat

    def acquire(self, now: float, cost: int = 1) -> RateDecision:
        """Admit a request of ``cost`` tokens at ``now``, or refuse it.

        Raises ``UsageError`` if ``cost`` is below 1 or above the capacity.
        """
        if type(cost) is not int or not 1 <= cost <= self._max_cost:
            raise self._bad_cost(cost)
        t = int(now * _NS)
        need = cost * self._interval
        tat = self.tat if self.tat > t else t
        new_tat = tat + need
        allow_at = new_tat - self._capacity
        allowed = t >= allow_at
        if allowed:
            self.tat = tat = new_tat
        decision = RateDecision(
            allowed=allowed,
            remaining=(self._capacity - tat + t) // self._interval,
            retry_after=0.0 if allowed else (allow_at - t) / _NS,
            reset_after=(tat - t) / _NS,
        )
        if allowed is self._limited:
            self._flip(now, allowed=allowed)
        return decision

    def tokens(self, now: float) -> float:
        """Tokens available at ``now`` (fractional), without spending any."""
        t = int(now * _NS)
        return (self._capacity - max(0, self.tat - t)) / self._interval
