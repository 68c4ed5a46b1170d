"""A deadline budget: share the time left among the calls that must fit in it.

A request arrives with a deadline (its own timeout, or one propagated by the
caller). Each downstream call gets a timeout carved from what is left:

- calls made one after another share it: ``sequential(now, calls=3)`` gives
  the next of three calls a third of the time left. It is asked again before
  each call, so time an early call did not use rolls forward to the later ones;
- calls made at once (a fan-out) each get all of it: ``parallel(now)``.

``reserve`` is time kept back for the caller's own work after the calls
(composing a response, say), so that the caller can still answer before its
own deadline.

The budget is an immutable value with no state to change, so it reports
nothing through hooks; the code that acts on an expired deadline does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import msgspec

from meshkit.errors import ConfigError, DeadlineExceededError, InvalidArgumentError
from meshkit.policy import _check as check

__all__ = ["DeadlineBudget"]


class DeadlineBudget(msgspec.Struct, frozen=True):
    """Time until ``expires_at`` (monotonic seconds), less ``reserve``."""

    expires_at: float
    reserve: float = 0.0

    def __post_init__(self) -> None:
        check.number("expires_at", self.expires_at, low=-math.inf, high=math.inf)
        check.seconds("reserve", self.reserve, allow_zero=True)

    @classmethod
    def after(cls, now: float, seconds: float, *, reserve: float = 0.0) -> DeadlineBudget:
        """A budget of ``seconds`` from ``now``."""
        if check.seconds("seconds", seconds) <= check.seconds("reserve", reserve, allow_zero=True):
            raise ConfigError("reserve", f"must be less than the {seconds}s budget, got {reserve}")
        return cls(now + seconds, reserve)

    def remaining(self, now: float) -> float:
        """Seconds until the deadline (0 once it has passed), reserve included."""
        return max(0.0, self.expires_at - now)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def sequential(self, now: float, calls: int | Sequence[float]) -> float:
        """The timeout for the next of ``calls`` calls made one after another.

        ``calls`` is how many calls are left (this one included), or their
        relative weights, this call's first: ``(2, 1, 1)`` gives it half.
        Raises ``DeadlineExceededError`` if no time is left for it, and
        ``InvalidArgumentError`` on ``calls`` (a value of this call, not
        configuration) if it is neither.
        """
        value: object = calls  # checked as it arrives, whatever the annotation says
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            share = 1.0 / value
        elif isinstance(value, list | tuple) and value and all(_weight(w) for w in value):
            share = value[0] / math.fsum(value)
        else:
            raise InvalidArgumentError(
                "calls",
                f"must be a whole number from 1 or a list of positive weights, got {calls!r}",
            )
        return self._usable(now) * share

    def parallel(self, now: float) -> float:
        """The timeout for each of several calls made at once.

        Raises ``DeadlineExceededError`` if no time is left.
        """
        return self._usable(now)

    def _usable(self, now: float) -> float:
        usable = self.expires_at - now - self.reserve
        if usable <= 0:
            raise DeadlineExceededError(
                f"deadline budget spent: {self.remaining(now):.3f}s left"
                f" with {self.reserve:.3f}s reserved"
            )
        return usable


def _weight(value: object) -> bool:
    """Whether ``value`` is a positive, finite weight (a bool is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf
