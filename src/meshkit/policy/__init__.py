"""Pure decisions: rate limits, breakers, retries, redelivery, balancing, leases, deadlines, routes.

Everything here is a small state machine fed facts and ``now`` (seconds on a
monotonic clock) that returns a decision. Nothing here awaits, sleeps, reads a
clock or touches the network; the gateway, the sidecar, the service client and
the registry are the drivers that do. State changes are reported to an
optional ``Hook`` as frozen records (see ``_events``).
"""

from meshkit.policy._balance import (
    Balancer,
    PowerOfTwoChoices,
    RoundRobin,
    SmoothWeightedRoundRobin,
)
from meshkit.policy._breaker import BreakerConfig, BreakerStatistics, CircuitBreaker
from meshkit.policy._deadline import DeadlineBudget
from meshkit.policy._events import (
    BackendsChanged,
    BreakerState,
    BreakerStateChanged,
    Hook,
    LeaseEvent,
    LeaseEventKind,
    PolicyEvent,
    RateLimitStateChanged,
    RetryBudgetStateChanged,
    RetryScheduled,
    RetryStopped,
    StopReason,
)
from meshkit.policy._lease import Lease, LeaseTable
from meshkit.policy._ratelimit import GCRA, RateDecision, RateLimit, TokenBucket
from meshkit.policy._redelivery import Redelivery
from meshkit.policy._retry import (
    Backoff,
    RetryBudget,
    RetryBudgetStatistics,
    RetryDecision,
    RetryPolicy,
    RetryRun,
)
from meshkit.policy._route import BadPath, NoRoute, Route, RouteMatch, RouteTable
from meshkit.policy._split import WeightedSplit, sticky_points

__all__ = [
    "GCRA",
    "BackendsChanged",
    "Backoff",
    "BadPath",
    "Balancer",
    "BreakerConfig",
    "BreakerState",
    "BreakerStateChanged",
    "BreakerStatistics",
    "CircuitBreaker",
    "DeadlineBudget",
    "Hook",
    "Lease",
    "LeaseEvent",
    "LeaseEventKind",
    "LeaseTable",
    "NoRoute",
    "PolicyEvent",
    "PowerOfTwoChoices",
    "RateDecision",
    "RateLimit",
    "RateLimitStateChanged",
    "Redelivery",
    "RetryBudget",
    "RetryBudgetStateChanged",
    "RetryBudgetStatistics",
    "RetryDecision",
    "RetryPolicy",
    "RetryRun",
    "RetryScheduled",
    "RetryStopped",
    "RoundRobin",
    "Route",
    "RouteMatch",
    "RouteTable",
    "SmoothWeightedRoundRobin",
    "StopReason",
    "TokenBucket",
    "WeightedSplit",
    "sticky_points",
]
