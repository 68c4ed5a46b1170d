"""What the policies report: frozen records, and the hook that receives them.

Policies report their state changes (a breaker opening, a rate limit
engaging, a lease expiring) by calling a ``Hook`` with one of the records
below. Metrics, tracing and the dashboard attach there, so the policies never
import them. A hook runs synchronously inside the decision that caused the
change, after the policy's state is consistent, so it sees the new state in
``statistics()``. Keep hooks cheap. An exception from a hook propagates to the
policy's caller: a broken exporter should be loud, not silently lose data.

These are emitted on changes, not on every decision, so a policy with a
hook costs the same per request as one without.

Records, here and across meshkit, are frozen ``msgspec.Struct``s: immutable,
slotted and typed like frozen dataclasses, but built in about 0.12 us where
a frozen dataclass takes 1.3 us (measured on the reference machine), and
``msgspec.json.encode`` writes them as JSON whenever the values they carry
(a lease's value, a balancer's backends) are themselves encodable.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Any, Generic, Protocol, TypeAlias, TypeVar

import msgspec

__all__ = [
    "BackendsChanged",
    "BreakerState",
    "BreakerStateChanged",
    "Hook",
    "LeaseEvent",
    "LeaseEventKind",
    "PolicyEvent",
    "RateLimitStateChanged",
    "RetryBudgetStateChanged",
    "RetryScheduled",
    "RetryStopped",
    "StopReason",
]

V = TypeVar("V")


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class StopReason(enum.StrEnum):
    """Why a retry run ended without another attempt."""

    SUCCEEDED = "succeeded"
    NOT_RETRYABLE = "not_retryable"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    DEADLINE = "deadline"
    BUDGET_EXHAUSTED = "budget_exhausted"
    ABANDONED = "abandoned"


class LeaseEventKind(enum.StrEnum):
    REGISTERED = "registered"
    RENEWED = "renewed"
    EXPIRED = "expired"
    REMOVED = "removed"


class RateLimitStateChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A limiter started refusing (``limited``) or admitted again after refusing."""

    limiter: str
    limited: bool
    at: float


class BreakerStateChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A circuit breaker moved between closed, open and half-open."""

    breaker: str
    previous: BreakerState
    state: BreakerState
    reason: str
    at: float
    open_until: float | None


class RetryScheduled(msgspec.Struct, frozen=True, kw_only=True):
    """A failed attempt will be retried after ``delay`` seconds."""

    policy: str
    attempt: int
    delay: float
    at: float


class RetryStopped(msgspec.Struct, frozen=True, kw_only=True):
    """A retry run ended after ``attempts`` attempts, for ``reason``."""

    policy: str
    attempts: int
    reason: StopReason
    at: float


class RetryBudgetStateChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A retry budget ran out (``exhausted``) or has room again."""

    budget: str
    exhausted: bool
    active_requests: int
    active_retries: int


class BackendsChanged(msgspec.Struct, frozen=True, kw_only=True):
    """A load balancer's set of backends (or their weights) changed.

    ``weights[i]`` is the weight of ``backends[i]``; 1 for unweighted balancers.
    """

    balancer: str
    backends: tuple[Hashable, ...]
    weights: tuple[int, ...]


class LeaseEvent(msgspec.Struct, Generic[V], frozen=True, kw_only=True):
    """A lease was registered, renewed, expired or removed.

    ``index`` is the lease table's index after the change; see
    ``LeaseTable`` for which kinds advance it.
    """

    kind: LeaseEventKind
    lease_id: int
    key: str
    value: V
    expires_at: float
    index: int
    at: float


PolicyEvent: TypeAlias = (
    RateLimitStateChanged
    | BreakerStateChanged
    | RetryScheduled
    | RetryStopped
    | RetryBudgetStateChanged
    | BackendsChanged
    | LeaseEvent[Any]
)


class Hook(Protocol):
    """Receives the records policies emit. Any callable of one argument fits."""

    def __call__(self, event: PolicyEvent, /) -> None: ...
