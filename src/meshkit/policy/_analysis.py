"""A canary's analysis: is the new version as good as the thresholds and the stable one?

The figures are what a version served over one interval: requests,
failures (5xx answers; through a sidecar, also requests its app never
answered) and the p99 latency, as the instances count them (or a
Prometheus that scrapes them). A version that hangs or crashes shows as
fewer requests: too few is a failed check. ``judge`` compares the canary's with absolute thresholds
(Flagger's defaults: a success rate of at least 99%, a p99 of at most
500 ms) and with the stable version's over the same interval (a success
rate at most ``max_success_drop`` below it, a p99 at most
``max_p99_ratio`` times it or ``p99_tolerance`` above it, whichever is
more: at a few milliseconds, a ratio measures noise). Too few requests to the canary is a failed
check, not a pass: an analysis of nothing proves nothing.
"""

from __future__ import annotations

import re

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
    # ... or this much slower (seconds): at a few milliseconds a ratio is noise.
    p99_tolerance: float = 0.05
    # Where the figures come from: a Prometheus that scrapes the instances
    # (through the control plane's discovery), or, when None, the instances.
    prometheus: str | None = None

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
        if self.prometheus is not None and not re.fullmatch(
            r"http://[^/\s]+(/\S*)?", self.prometheus
        ):
            raise ConfigError(
                "deploy.analysis.prometheus",
                f"must be an http:// URL such as http://127.0.0.1:9090, got {self.prometheus!r}",
            )
        if not self.p99_tolerance >= 0:
            raise ConfigError(
                "deploy.analysis.p99_tolerance", f"cannot be negative, got {self.p99_tolerance}"
            )
        if not self.max_p99_ratio >= 1:
            raise ConfigError(
                "deploy.analysis.max_p99_ratio", f"must be at least 1, got {self.max_p99_ratio}"
            )


class Window(msgspec.Struct, frozen=True):
    """What the callers of one version saw over an interval; ``p99`` in seconds (``None``
    without requests: JSON, where records are kept, has no NaN)."""

    requests: int
    failures: int
    p99: float | None

    @property
    def success(self) -> float | None:
        """The share of requests that succeeded; ``None`` without requests."""
        return None if self.requests == 0 else 1.0 - self.failures / self.requests


class Check(msgspec.Struct, frozen=True):
    """One comparison: its name, the canary's value, the bound, and whether it held."""

    name: str
    value: float | None  # None: nothing to measure (a p99 without durations)
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
        if stable.requests and stable.p99 is not None:
            ceiling = max(stable.p99 * config.max_p99_ratio, stable.p99 + config.p99_tolerance)
            checks.append(
                Check(
                    "p99 against stable",
                    canary.p99,
                    ceiling,
                    passed=_at_most(canary.p99, ceiling),
                )
            )
    return Analysis(at=at, canary=canary, stable=stable, checks=tuple(checks))


def _at_most(value: float | None, bound: float) -> bool:
    return value is not None and value <= bound


def _words(check: Check) -> str:
    if check.value is None:
        return f"{check.name}: not measured"
    if check.name == "requests":
        return f"only {check.value:.0f} requests reached the canary (at least {check.bound:.0f})"
    if check.name.startswith("success"):
        return f"{check.name}: {check.value:.2%} succeeded, below {check.bound:.2%}"
    return f"{check.name}: {check.value * 1000:.0f} ms, above {check.bound * 1000:.0f} ms"
