"""The instances of one service as callers see them: balanced, ejected when failing.

Ejection is Envoy's outlier detection with a breaker per instance: an
instance that keeps failing is taken out of rotation for a while. Two rules
keep it from turning a blip into an outage. It never takes out more than
``max_ejection_percent`` of the instances, nor the last one: when every
instance fails alike, the fault is most likely behind them, and ejecting
them all would only add refusals of our own. And below ``panic_threshold``
percent of instances available (possible when the cap allows it, or when
instances leave while others are ejected), every instance takes traffic.

A service whose snapshot has weights (a canary, a blue-green switch) is
split by version first: each pick, retries included, draws a version by
weight among those with instances, then balances among that version's
instances. When the version drawn has none left to try, or no weighted
version runs at all, any instance will do: a split moves traffic, it
does not refuse it.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable, Mapping
from typing import NamedTuple

from meshkit.discovery._policy import CallPolicy, caller_ran_out
from meshkit.policy import (
    BreakerState,
    CircuitBreaker,
    PowerOfTwoChoices,
    RetryBudget,
    WeightedSplit,
)
from meshkit.registry import Instance

__all__ = ["InstanceSet", "Pick"]

_CLOSED = BreakerState.CLOSED
_new_pick = tuple.__new__


class Pick(NamedTuple):
    """One attempt's instance, and what its outcome is recorded with.

    ``key`` is the instance's key; ``ticket`` its breaker's ticket, ``None``
    when the instance was taken in panic, past its ejection, so its outcome
    does not move the breaker. ``short_budget`` says the attempt had less
    time than the instance's usual patience (see ``caller_ran_out``).

    A named tuple, made with ``tuple.__new__`` where it is made for every
    request: that and reading its fields run no Python code.
    """

    instance: Instance
    key: str
    ticket: int | None
    started: float
    short_budget: bool


class InstanceSet:
    """Per service: its instances, a balancer, ejection (a breaker per instance), a retry budget.

    Shared by the service client, the gateway and the sidecar, so all three
    balance and eject alike.
    """

    __slots__ = (
        "_ejected",
        "_others",
        "_policy",
        "_rng",
        "balancer",
        "breakers",
        "budget",
        "ejections",
        "instances",
        "name",
        "split",
    )

    def __init__(self, name: str, policy: CallPolicy, rng: random.Random) -> None:
        self.name = name
        self._policy = policy
        self.instances: dict[str, Instance] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self._ejected = 0  # breakers not closed
        self.ejections = 0  # instances taken out of rotation so far (for metrics)
        self._rng = rng
        self.split: WeightedSplit | None = None  # by version, from the snapshot's weights
        self._others: dict[str, frozenset[str]] = {}  # by version: the keys of every other
        self.balancer: PowerOfTwoChoices[str] = PowerOfTwoChoices(rng=rng, name=name)
        self.budget = RetryBudget(
            ratio=policy.retry_ratio, min_concurrency=policy.retry_min_concurrency, name=name
        )

    def update(
        self, instances: Iterable[Instance], weights: Mapping[str, int] | None = None
    ) -> None:
        """The service's instances now, and its traffic weights by version (``None``: none)."""
        previous = self.instances
        self.instances = {instance.key: instance for instance in instances}
        self.split = None if weights is None else WeightedSplit(weights)
        # Only a split needs them: most services have none.
        self._others = {} if self.split is None else _others(self.instances)
        # Breakers of instances that stay keep their state; newcomers start closed,
        # and so does an instance registered again at another address (a new process
        # under the old id, after a restart): the old one's failures are not its own.
        ejection = self._policy.ejection
        self.breakers = {
            key: (
                self.breakers.get(key)
                if key in previous and previous[key].address == instance.address
                else None
            )
            or CircuitBreaker(ejection, name=key)
            for key, instance in self.instances.items()
        }
        self._ejected = sum(1 for breaker in self.breakers.values() if breaker.state is not _CLOSED)
        self.balancer.update(self.instances)

    @property
    def ejected(self) -> int:
        """How many instances are out of rotation (or on probation) now."""
        return self._ejected

    def max_ejected(self) -> int:
        """How many instances ejection may take out at most: a share, and never the last."""
        count = len(self.instances)
        return min(count - 1, count * self._policy.max_ejection_percent // 100)

    def panicking(self) -> bool:
        """Whether too few instances are available for ejection to be honoured."""
        count = len(self.instances)
        available = count - self._ejected
        return available * 100 < self._policy.panic_threshold * count

    def pick(
        self, now: float, tried: Collection[str], *, short_budget: bool = False
    ) -> Pick | None:
        """An instance not tried yet that ejection lets through (any, in panic), or ``None``."""
        panic = self._ejected > 0 and self.panicking()
        excluded = tried
        narrowed = False
        if self.split is not None:
            version = self.split.choose(self._rng.random(), self._rng.random(), self._others)
            if version is not None:
                excluded, narrowed = self._others[version].union(tried), True
        while True:
            key = self.balancer.pick(now, excluded)
            if key is None:
                if not narrowed:
                    return None
                # The version drawn has no instance left to try: any will do.
                excluded, narrowed = tried, False
                continue
            ticket = self.breakers[key].allow(now)
            if ticket is not None or panic:
                return _new_pick(Pick, (self.instances[key], key, ticket, now, short_budget))
            self.balancer.cancel(key)  # not sent after all
            excluded = {*excluded, key}  # a copy: ``tried`` is the caller's

    def failed(self, pick: Pick, now: float, failure: BaseException | int) -> None:
        """The attempt failed with ``failure`` (an error, or a failed status)."""
        if isinstance(failure, BaseException) and caller_ran_out(
            failure, short_budget=pick.short_budget
        ):
            self.release(pick)
        else:
            self.record(pick, now, success=False)

    def release(self, pick: Pick) -> None:
        """The attempt ended without an outcome (cancelled): nothing is counted."""
        breaker = self.breakers.get(pick.key)
        if breaker is None:  # the instance left meanwhile
            return
        if pick.ticket is not None:
            breaker.release(pick.ticket)
        self.balancer.cancel(pick.key)

    def why_nothing(self) -> str:
        """Why a first pick found no instance."""
        if not self.instances:
            return "no instances are registered"
        return f"all {len(self.instances)} instance(s) are ejected after repeated failures"

    def record(self, pick: Pick, now: float, *, success: bool) -> None:
        """The attempt's outcome, for the balancer and the instance's ejection."""
        key = pick.key
        breaker = self.breakers.get(key)
        if breaker is None:  # the instance left meanwhile
            return
        duration = now - pick.started
        self.balancer.complete(key, now, duration, success=success)
        ticket = pick.ticket
        if ticket is None:
            return
        closed = breaker.state is _CLOSED
        if closed and success and breaker.config.slow_call is None:
            # The common case: nothing to eject or restore. (With slow_call, a
            # success can count as a failure, and so take the path below.)
            breaker.record(ticket, now, success=True, duration=duration)
            return
        if closed and self._ejected >= self.max_ejected():
            # Ejecting this one too would pass the cap: its failure does not count.
            breaker.release(ticket)
            return
        breaker.record(ticket, now, success=success, duration=duration)
        if closed != (breaker.state is _CLOSED):
            if closed:
                self._ejected += 1
                self.ejections += 1
            else:
                self._ejected -= 1


def _others(instances: dict[str, Instance]) -> dict[str, frozenset[str]]:
    """For each version running, the keys of the instances of every other version."""
    keys = frozenset(instances)
    versions = {instance.version for instance in instances.values()}
    return {
        version: keys - {key for key, found in instances.items() if found.version == version}
        for version in versions
    }
