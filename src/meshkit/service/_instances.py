"""The instances of one service as callers see them: balanced, ejected when failing."""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING

from meshkit.policy import BreakerConfig, CircuitBreaker, PowerOfTwoChoices, RetryBudget
from meshkit.registry import Instance

if TYPE_CHECKING:
    from meshkit.service._client import CallPolicy

__all__ = ["InstanceSet"]


class InstanceSet:
    """Per service: its instances, a balancer, a breaker per instance (ejection), a retry budget.

    Shared by the service client and the gateway, so both eject and balance alike.
    """

    __slots__ = ("balancer", "breakers", "budget", "instances", "name")

    def __init__(self, name: str, policy: CallPolicy, rng: random.Random) -> None:
        self.name = name
        self.instances: dict[str, Instance] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self.balancer: PowerOfTwoChoices[str] = PowerOfTwoChoices(rng=rng, name=name)
        self.budget = RetryBudget(
            ratio=policy.retry_ratio, min_concurrency=policy.retry_min_concurrency, name=name
        )

    def update(self, instances: Iterable[Instance], ejection: BreakerConfig) -> None:
        self.instances = {instance.key: instance for instance in instances}
        # Breakers of instances that stay keep their state; newcomers start closed.
        self.breakers = {
            key: self.breakers.get(key) or CircuitBreaker(ejection, name=key)
            for key in self.instances
        }
        self.balancer.update(self.instances)

    def pick(self, now: float, tried: Collection[str]) -> tuple[str, int] | None:
        """An instance not tried yet whose breaker admits a call, with its ticket."""
        excluded = set(tried)
        while True:
            key = self.balancer.pick(now, excluded)
            if key is None:
                return None
            ticket = self.breakers[key].allow(now)
            if ticket is not None:
                return key, ticket
            self.balancer.cancel(key)  # not sent after all
            excluded.add(key)

    def why_nothing(self, tried: set[str], last_error: str) -> str:
        if not self.instances:
            return "no instances are registered"
        if tried:
            return f"all {len(tried)} instance(s) tried failed; the last said: {last_error}"
        return f"all {len(self.instances)} instance(s) are ejected after repeated failures"
