"""Pure decisions: rate limits, breakers, retries, redelivery, balancing, leases, deadlines,
routes, rollouts and their canary analysis.

Everything here is a small state machine fed facts and ``now`` (seconds on a
monotonic clock; Unix seconds for rollouts, whose records outlive a process)
that returns a decision. Nothing here awaits, sleeps, reads a
clock or touches the network; the gateway, the sidecar, the service client and
the registry are the drivers that do. State changes are reported to an
optional ``Hook`` as frozen records (see ``_events``).
"""

from meshkit.policy._analysis import Analysis, AnalysisConfig, Check, Window, judge
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
from meshkit.policy._rollout import (
    COMMANDS,
    Abort,
    Analyzed,
    BlueGreenConfig,
    CanaryConfig,
    Pause,
    Phase,
    Plan,
    Promote,
    Replica,
    Resume,
    RollingConfig,
    Rollout,
    RolloutConfig,
    RolloutEvent,
    SmokeTested,
    Target,
    Undo,
    plan_rollout,
    update_rollout,
)
from meshkit.policy._route import BadPath, NoRoute, Route, RouteMatch, RouteTable
from meshkit.policy._split import WeightedSplit, sticky_points

__all__ = [
    "COMMANDS",
    "GCRA",
    "Abort",
    "Analysis",
    "AnalysisConfig",
    "Analyzed",
    "BackendsChanged",
    "Backoff",
    "BadPath",
    "Balancer",
    "BlueGreenConfig",
    "BreakerConfig",
    "BreakerState",
    "BreakerStateChanged",
    "BreakerStatistics",
    "CanaryConfig",
    "Check",
    "CircuitBreaker",
    "DeadlineBudget",
    "Hook",
    "Lease",
    "LeaseEvent",
    "LeaseEventKind",
    "LeaseTable",
    "NoRoute",
    "Pause",
    "Phase",
    "Plan",
    "PolicyEvent",
    "PowerOfTwoChoices",
    "Promote",
    "RateDecision",
    "RateLimit",
    "RateLimitStateChanged",
    "Redelivery",
    "Replica",
    "Resume",
    "RetryBudget",
    "RetryBudgetStateChanged",
    "RetryBudgetStatistics",
    "RetryDecision",
    "RetryPolicy",
    "RetryRun",
    "RetryScheduled",
    "RetryStopped",
    "RollingConfig",
    "Rollout",
    "RolloutConfig",
    "RolloutEvent",
    "RoundRobin",
    "Route",
    "RouteMatch",
    "RouteTable",
    "SmokeTested",
    "SmoothWeightedRoundRobin",
    "StopReason",
    "Target",
    "TokenBucket",
    "Undo",
    "WeightedSplit",
    "Window",
    "judge",
    "plan_rollout",
    "sticky_points",
    "update_rollout",
]
