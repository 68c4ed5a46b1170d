"""How calls to a service's instances behave, and what an attempt's outcome says about one.

These rules are shared by the SDK's client, the gateway and the sidecar:
which answers count as an instance failing, which failures may go to
another instance, and when a timeout is the caller's doing rather than the
instance's.
"""

from __future__ import annotations

import msgspec

from meshkit.errors import ConfigError, ConnectError, ConnectTimeoutError, ReadTimeoutError
from meshkit.http import RETRYABLE_STATUSES
from meshkit.policy import BreakerConfig, RetryPolicy
from meshkit.policy import _check as check

__all__ = ["CallPolicy", "caller_ran_out", "failed_status", "may_retry", "unsent"]


def _ejection() -> BreakerConfig:
    # 3 failures in a row eject an instance for 5 s, growing to 60 s while it
    # keeps failing. Envoy ejects after 5 for 30 s; a mesh on one machine
    # recovers faster, and the registry drops a dead instance within its TTL.
    return BreakerConfig(
        consecutive_failures=3,
        failure_rate=None,
        open_for=5.0,
        open_for_max=60.0,
        half_open_successes=1,
    )


class CallPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """How calls to other services behave.

    ``timeout`` is a call's default deadline. ``ejection`` configures the
    breaker each instance has (outlier detection). Ejection never takes
    more than ``max_ejection_percent`` of a service's instances out of
    rotation, and always leaves at least one in (Envoy's
    ``max_ejection_percent``, whose default here is 50 rather than 10: a
    service on one machine often has two instances). When fewer than
    ``panic_threshold`` percent of the instances are available, every
    instance takes traffic, ejected or not (Envoy's panic threshold, 50 by
    default): better some requests fail than the whole service be refused.
    """

    timeout: float = 10.0
    connect_timeout: float = 2.0
    retry: RetryPolicy = msgspec.field(default_factory=RetryPolicy)
    ejection: BreakerConfig = msgspec.field(default_factory=_ejection)
    max_ejection_percent: int = 50
    panic_threshold: int = 50
    retry_ratio: float = 0.2
    retry_min_concurrency: int = 3

    def __post_init__(self) -> None:
        check.seconds("timeout", self.timeout)
        check.seconds("connect_timeout", self.connect_timeout)
        for key in ("max_ejection_percent", "panic_threshold"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 100:
                raise ConfigError(key, f"must be a whole percentage from 0 to 100, got {value!r}")


def failed_status(status: int) -> bool:
    """Whether an answer with ``status`` counts as the instance failing (a 502, 503 or 504)."""
    return status in RETRYABLE_STATUSES


def unsent(failure: BaseException | int) -> bool:
    """Whether the failed attempt never reached the instance (no connection was made)."""
    return isinstance(failure, ConnectError | ConnectTimeoutError)


def may_retry(failure: BaseException | int, *, idempotent: bool) -> bool:
    """Whether another instance may be tried after ``failure`` (an error, or a failed status).

    A request that was never sent always may. Otherwise only an idempotent
    one (RFC 9110, 9.2.2): the instance may have acted on it before failing.
    """
    return idempotent or unsent(failure)


def caller_ran_out(failure: BaseException, *, short_budget: bool) -> bool:
    """Whether ``failure`` is the caller's short budget running out, not the instance failing.

    A read timeout on an attempt that had less time than the instance's
    usual patience says nothing about the instance: counting it would let
    impatient callers eject healthy instances.
    """
    return short_budget and isinstance(failure, ReadTimeoutError)
