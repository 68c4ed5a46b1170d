"""A canary's analysis: is the new version as good as the thresholds and the stable one?

The figures are what the callers saw over one interval, per version:
requests, failures (5xx answers and calls that got no answer) and the p99
latency. ``judge`` compares the canary's with absolute thresholds
(Flagger's defaults: a success rate of at least 99%, a p99 of at most
500 ms) and with the stable version's over the same interval (a success
rate at most ``max_success_drop`` below it, a p99 at most
``max_p99_ratio`` times it). Too few requests to the canary is a failed
check, not a pass: an analysis of nothing proves nothing.
"""

from __future__ import annotations

import math

import msgspec

from meshkit.errors import ConfigError

__all__ = ["Analysis", "AnalysisConfig", "Check", "Window", "judge"]


class AnalysisConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The thresholds of each check."""

    min_requests: int = 20
    min_success: float = 0.99
    max_p99: float = 0.5  # seconds
    max_success_drop: float = 0.01  # below the stable version's rate
    max_p99_ratio: float = 1.5  # of the stable version's p99

    def __post_init__(self) -> None:
        if self.min_requests < 1:
            raise ConfigError("deploy.analysis.min_requests", "must be at least 1")
        if not 0.0 <= self.min_success <= 1.0:
            raise ConfigError(
                "deploy.analysis.min_success", f"must be a share, got {self.min_success}"
            )
        if not 0.0 <= self.max_success_drop <= 1.0:
            raise ConfigError(
                "deploy.analysis.max_success_drop", f"must be a share, got {self.max_success_drop}"
            )
        if not self.max_p99 > 0:
            raise ConfigError("deploy.analysis.max_p99", f"must be positive, got {self.max_p99}")
        if not self.max_p99_ratio >= 1:
            raise ConfigError(
                "deploy.analysis.max_p99_ratio", f"must be at least 1, got {self.max_p99_ratio}"
            )


class Window(msgspec.Struct, frozen=True):
    """What the callers of one version saw over an interval; ``p99`` in seconds (NaN: none)."""

    requests: int
    failures: int
    p99: float

    @property
    def success(self) -> float | None:
        """The share of requests that succeeded; ``None`` without requests."""
        return None if self.requests == 0 else 1.0 - self.failures / self.requests


class Check(msgspec.Struct, frozen=True):
    """One comparison: its name, the canary's value, the bound, and whether it held."""

    name: str
    value: float
    bound: float
    passed: bool


class Analysis(msgspec.Struct, frozen=True):
    """The outcome of one interval's analysis, kept in the rollout's history."""

    at: float  # Unix seconds
    canary: Window
    stable: Window
    checks: tuple[Check, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def reasons(self) -> list[str]:
        """The failed checks, in words."""
        return [_words(check) for check in self.checks if not check.passed]


def judge(canary: Window, stable: Window, config: AnalysisConfig, at: float) -> Analysis:
    """The checks of one interval; a check against the stable version is skipped
    when the stable version had no requests (there is nothing to compare with)."""
    enough = canary.requests >= config.min_requests
    checks = [Check("requests", canary.requests, config.min_requests, passed=enough)]
    if enough:
        success = canary.success
        assert success is not None
        checks += [
            Check("success", success, config.min_success, passed=success >= config.min_success),
            Check("p99", canary.p99, config.max_p99, passed=_at_most(canary.p99, config.max_p99)),
        ]
        stable_success = stable.success
        if stable_success is not None:
            floor = max(0.0, stable_success - config.max_success_drop)
            checks.append(Check("success against stable", success, floor, passed=success >= floor))
        if stable.requests and not math.isnan(stable.p99):
            # A stable p99 near zero would make any canary fail: a millisecond's floor.
            ceiling = max(stable.p99, 0.001) * config.max_p99_ratio
            checks.append(
                Check(
                    "p99 against stable",
                    canary.p99,
                    ceiling,
                    passed=_at_most(canary.p99, ceiling),
                )
            )
    return Analysis(at=at, canary=canary, stable=stable, checks=tuple(checks))


def _at_most(value: float, bound: float) -> bool:
    return not math.isnan(value) and value <= bound


def _words(check: Check) -> str:
    if check.name == "requests":
        return f"only {check.value:.0f} requests reached the canary (at least {check.bound:.0f})"
    if check.name.startswith("success"):
        return f"{check.name}: {check.value:.2%} succeeded, below {check.bound:.2%}"
    return f"{check.name}: {check.value * 1000:.0f} ms, above {check.bound * 1000:.0f} ms"
