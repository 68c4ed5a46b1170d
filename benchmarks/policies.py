"""The cost of one decision of each policy, beside the library a Python user would reach for.

    python -m benchmarks.policies [--json FILE] [--quick]

Every measured call reads the real clock, as a driver does for each
decision (the peers read theirs inside). Each figure is the fastest of five
timed runs of many calls, as timeit's documentation advises: slower runs
measure other work on the machine, not the code. Both sides are measured
the same way, one after the other. The peers do the same job configured the same way:

- rate limits: a client over its limit of 100 requests/s, against ``limits``'
  moving window on its in-memory storage, and against its sliding-window
  counter, a cheaper approximation, as the fairer peer;
- circuit breaker: a successful call through a closed breaker, and a call
  refused by an open one, against ``pybreaker``;
- retry: the decision after a first failed attempt (wait with full jitter,
  stop after 3 attempts), against ``tenacity``'s decision step for the same
  policy.
"""

from __future__ import annotations

import random
import time
import timeit
from collections.abc import Callable

import limits
import pybreaker
import tenacity
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

from benchmarks._report import Row, arguments, report
from meshkit.policy import (
    GCRA,
    BreakerConfig,
    CircuitBreaker,
    DeadlineBudget,
    LeaseTable,
    PowerOfTwoChoices,
    RateLimit,
    RetryBudget,
    RetryPolicy,
    RoundRobin,
    SmoothWeightedRoundRobin,
    TokenBucket,
)

monotonic = time.monotonic


def per_call_ns(fn: Callable[[], object], *, quick: bool) -> float:
    """Nanoseconds per call: the fastest of five runs of about 0.2 s each."""
    timer = timeit.Timer(fn)
    if quick:
        return timer.timeit(number=200) / 200 * 1e9
    number, _ = timer.autorange()
    runs = timer.repeat(repeat=5, number=number)
    return min(runs) / number * 1e9


def noop() -> None:
    return None


# -- rate limits --------------------------------------------------------------


def rate_limit_cases() -> list[tuple[str, Callable[[], object], Callable[[], object] | None, str]]:
    limit = RateLimit(capacity=100, per_second=100)
    bucket, gcra = TokenBucket(limit), GCRA(limit)
    moving = MovingWindowRateLimiter(MemoryStorage())
    sliding = SlidingWindowCounterRateLimiter(MemoryStorage())
    item = limits.RateLimitItemPerSecond(100)
    return [
        (
            "TokenBucket.acquire, client over its limit",
            lambda: bucket.acquire(monotonic()),
            lambda: moving.hit(item, "client"),
            "limits moving window",
        ),
        (
            "TokenBucket.acquire, client over its limit",
            lambda: bucket.acquire(monotonic()),
            lambda: sliding.hit(item, "client"),
            "limits sliding window counter",
        ),
        (
            "GCRA.acquire, client over its limit",
            lambda: gcra.acquire(monotonic()),
            lambda: moving.hit(item, "client"),
            "limits moving window",
        ),
    ]


# -- circuit breaker -----------------------------------------------------------


def breaker_cases() -> list[tuple[str, Callable[[], object], Callable[[], object] | None, str]]:
    closed = CircuitBreaker(BreakerConfig())
    py_closed = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    def through_closed() -> None:
        start = monotonic()
        ticket = closed.allow(start)
        assert ticket is not None
        noop()
        end = monotonic()
        closed.record(ticket, end, success=True, duration=end - start)

    opened = CircuitBreaker(BreakerConfig(consecutive_failures=1, open_for=3600, open_for_max=3600))
    ticket = opened.allow(monotonic())
    assert ticket is not None
    opened.record(ticket, monotonic(), success=False)
    py_open = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
    py_open.open()

    def refused_by_open() -> None:
        assert opened.allow(monotonic()) is None

    def py_refused_by_open() -> None:
        try:
            py_open.call(noop)
        except pybreaker.CircuitBreakerError:
            return
        raise AssertionError("pybreaker admitted a call while open")

    return [
        (
            "CircuitBreaker: call through a closed breaker",
            through_closed,
            lambda: py_closed.call(noop),
            "pybreaker",
        ),
        (
            "CircuitBreaker: call refused by an open breaker",
            refused_by_open,
            py_refused_by_open,
            "pybreaker",
        ),
    ]


# -- retries -------------------------------------------------------------------


def retry_cases() -> list[tuple[str, Callable[[], object], Callable[[], object] | None, str]]:
    rng = random.Random(1)
    policy = RetryPolicy(attempts=3)
    budget = RetryBudget()

    def decide() -> None:
        assert policy.start(monotonic(), rng=rng).failed(monotonic(), retryable=True).retry

    def decide_within_budget() -> None:
        run = policy.start(monotonic(), rng=rng, budget=budget)
        assert run.failed(monotonic(), retryable=True).retry
        run.succeeded(monotonic())

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_random_exponential(multiplier=0.025, max=0.25),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        sleep=lambda _seconds: None,  # decisions only: no wait
    )
    failure = ConnectionError("refused")

    def tenacity_decide() -> None:
        # What tenacity does for each retried call: begin(), a call state, iter().
        retrying.begin()
        state = tenacity.RetryCallState(retrying, noop, (), {})
        state.set_exception((ConnectionError, failure, None))
        assert isinstance(retrying.iter(state), tenacity.DoSleep)

    return [
        ("RetryRun: decision after a failed attempt", decide, tenacity_decide, "tenacity"),
        ("RetryRun + budget: start, fail, succeed (3 calls)", decide_within_budget, None, ""),
    ]


# -- balancers, leases, deadlines ---------------------------------------------------


def other_cases() -> list[tuple[str, Callable[[], object], Callable[[], object] | None, str]]:
    backends = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    rr = RoundRobin(backends)
    swrr = SmoothWeightedRoundRobin({"stable-1": 45, "stable-2": 45, "canary": 10})
    p2c = PowerOfTwoChoices([f"10.0.0.{i}:80" for i in range(5)], rng=random.Random(2))

    def p2c_request() -> None:
        backend = p2c.pick(monotonic())
        assert backend is not None
        p2c.complete(backend, monotonic(), 0.005)

    table: LeaseTable[str] = LeaseTable(rng=random.Random(3))
    now = monotonic()
    leases = [table.register(f"svc/i{i}", "127.0.0.1:1", ttl=3600, now=now) for i in range(1000)]
    target = leases[500].id
    deadline = DeadlineBudget.after(monotonic(), 3600, reserve=0.01)
    return [
        ("RoundRobin.pick, 3 backends", lambda: rr.pick(monotonic()), None, ""),
        ("SmoothWeightedRoundRobin.pick, 3 backends", lambda: swrr.pick(monotonic()), None, ""),
        ("PowerOfTwoChoices pick + complete, 5 backends", p2c_request, None, ""),
        ("LeaseTable.renew, 1,000 leases held", lambda: table.renew(target, monotonic()), None, ""),
        (
            "DeadlineBudget.sequential, next of 3 calls",
            lambda: deadline.sequential(monotonic(), 3),
            None,
            "",
        ),
    ]


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "policy benchmark")
    parser.add_argument("--quick", action="store_true", help="a few calls each, to check it runs")
    args = parser.parse_args()
    rows = []
    for name, ours, peer, peer_name in (
        rate_limit_cases() + breaker_cases() + retry_cases() + other_cases()
    ):
        value = per_call_ns(ours, quick=args.quick)
        reference = None if peer is None else per_call_ns(peer, quick=args.quick)
        rows.append(Row(name, value, "ns", reference, peer_name or None))
    report("One decision of each policy", rows, args.json)


if __name__ == "__main__":
    main()
