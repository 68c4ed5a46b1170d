"""The policy core at work, on a simulated clock.

Every scene below drives a real meshkit policy with a FakeClock and seeded
randomness and prints what it decided, so the run is instant and the same
every time. The gateway, the sidecar and the service client make these same
decisions on real traffic.

Run: ``make demo`` (or ``python examples/policies.py``).
"""

from __future__ import annotations

import random
from collections import Counter

from rich.console import Console
from rich.table import Table

from meshkit.policy import (
    BreakerConfig,
    BreakerStateChanged,
    CircuitBreaker,
    LeaseTable,
    PolicyEvent,
    PowerOfTwoChoices,
    RateLimit,
    RetryBudget,
    RetryPolicy,
    SmoothWeightedRoundRobin,
    TokenBucket,
)
from meshkit.testing import FakeClock

console = Console(highlight=False)


def heading(title: str, what: str) -> None:
    console.print()
    console.rule(f"[bold]{title}")
    console.print(what)


def rate_limit() -> None:
    heading(
        "Token bucket",
        "A client limited to a burst of 5 and 2 requests/s sends 4 requests/s.",
    )
    clock = FakeClock()
    bucket = TokenBucket(RateLimit(capacity=5, per_second=2), name="client-42")
    table = Table("t (s)", "decision", "tokens left", "retry after (s)")
    admitted = 0
    for _ in range(14):
        decision = bucket.acquire(clock.monotonic())
        admitted += decision.allowed
        table.add_row(
            f"{clock.monotonic():.2f}",
            "[green]admit" if decision.allowed else "[red]429",
            str(decision.remaining),
            f"{decision.retry_after:.2f}" if not decision.allowed else "",
        )
        clock.advance(0.25)
    console.print(table)
    elapsed = clock.monotonic()
    console.print(
        f"{admitted} admitted in {elapsed:g} s: the burst, then 2/s"
        f" (at most 5 + 2 x {elapsed:g} = {5 + 2 * elapsed:g})."
    )


def circuit_breaker() -> None:
    heading(
        "Circuit breaker",
        "Calls to 'payments' every 0.5 s. It fails from t=2 s to t=9 s.",
    )
    clock = FakeClock()

    def show(event: PolicyEvent) -> None:
        if isinstance(event, BreakerStateChanged):
            until = f", probe at t={event.open_until:.1f}" if event.open_until else ""
            console.print(
                f"  t={event.at:4.1f}  [bold]{event.previous} -> {event.state}[/]"
                f"  ({event.reason}{until})"
            )

    config = BreakerConfig(
        consecutive_failures=3, failure_rate=None, open_for=1, half_open_successes=2
    )
    breaker = CircuitBreaker(config, name="payments", hook=show)
    outcomes: Counter[str] = Counter()
    while clock.monotonic() <= 12:
        now = clock.monotonic()
        ticket = breaker.allow(now)
        if ticket is None:
            outcomes["refused at once (503, upstream spared)"] += 1
        else:
            healthy = not 2 <= now < 9
            breaker.record(ticket, now, success=healthy, duration=0.01)
            outcomes["sent, succeeded" if healthy else "sent, failed"] += 1
        clock.advance(0.5)
    for what, count in sorted(outcomes.items()):
        console.print(f"  {count:3d} {what}")
    stats = breaker.statistics(clock.monotonic())
    console.print(f"  state at t={clock.monotonic():g}: {stats.state}")


def retries() -> None:
    heading(
        "Retries within a budget",
        "12 requests to 'inventory' fail at once. Each may try 3 times with\n"
        "full-jitter backoff, but retries in flight are capped at 20% of active\n"
        "requests (minimum 3).",
    )
    budget = RetryBudget(ratio=0.2, min_concurrency=3, name="inventory")
    policy = RetryPolicy(attempts=3, name="inventory")
    rng = random.Random(7)
    runs = [policy.start(0.0, rng=rng, budget=budget) for _ in range(12)]
    decisions = [run.failed(0.01, retryable=True) for run in runs]
    delays = ", ".join(f"{d.delay * 1000:.0f} ms" for d in decisions if d.retry)
    stopped = Counter(str(d.reason) for d in decisions if not d.retry)
    console.print(f"  retried after {delays}")
    for reason, count in stopped.items():
        console.print(f"  stopped ({reason}): {count}")


def balancing() -> None:
    heading(
        "Load balancing",
        "A canary at weight 1 beside stable at 9 (smooth weighted round-robin),\n"
        "then power-of-two-choices over five instances, one ten times slower.",
    )
    split = SmoothWeightedRoundRobin({"stable": 9, "canary": 1})
    picks = [split.pick(0.0) for _ in range(20)]
    console.print("  " + " ".join("[yellow]C[/]" if p == "canary" else "s" for p in picks))
    rng = random.Random(3)
    p2c = PowerOfTwoChoices([f"i{n}" for n in range(5)], rng=random.Random(5))
    served: Counter[str] = Counter()
    now = 0.0
    for _ in range(2000):
        instance = p2c.pick(now)
        assert instance is not None
        served[instance] += 1
        now += 0.001
        latency = (0.2 if instance == "i0" else 0.02) * rng.uniform(0.8, 1.2)
        p2c.complete(instance, now, latency)
    for name in sorted(served):
        note = " (the slow one)" if name == "i0" else ""
        console.print(f"  {name}: {served[name]:4d} of 2000 requests{note}")


def leases() -> None:
    heading(
        "Leases",
        "Instance orders-1 registers with a 5 s TTL and renews every 2 s,\n"
        "until it crashes at t=6 s.",
    )
    clock = FakeClock()
    table: LeaseTable[str] = LeaseTable(rng=random.Random(1), name="registry")
    lease = table.register("orders/orders-1", "127.0.0.1:9101", ttl=5, now=clock.monotonic())
    console.print(f"  t= 0.0  registered lease {lease.id}, index {table.index}")
    while clock.monotonic() < 12:
        clock.advance(1)
        now = clock.monotonic()
        if now <= 6 and now % 2 == 0:
            lease = table.renew(lease.id, now)
            console.print(f"  t={now:4.1f}  renewed: expires at t={lease.expires_at:.0f}")
        for event in table.expire(now):
            console.print(
                f"  t={now:4.1f}  [red]{event.kind}[/] {event.key}, index {event.index}"
                " (a watcher wakes)"
            )
    console.print(f"  live at t={clock.monotonic():g}: {len(table.live(clock.monotonic()))} leases")


def main() -> None:
    console.print("[bold]meshkit policy core[/]: decisions on a simulated clock, no I/O.")
    rate_limit()
    circuit_breaker()
    retries()
    balancing()
    leases()
    console.print()
    console.print(
        "Next: the registry, `meshkit up` and the example shop use these on real traffic."
    )


if __name__ == "__main__":
    main()
