"""Validation shared by the policies' constructors.

Options often come from configuration files, so they are checked at run time
whatever their annotations say, and a bad one raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import math

from meshkit.errors import ConfigError


def seconds(key: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite, positive (or, with ``allow_zero``, non-negative) number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return float(value)


def whole(key: str, value: object, *, minimum: int) -> int:
    """A whole number no smaller than ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(key, f"must be a whole number >= {minimum}, got {value!r}")
    return value


def number(key: str, value: object, *, low: float, high: float) -> float:
    """A finite number in ``[low, high]``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and low <= value <= high)
    ):
        raise ConfigError(key, f"must be a number between {low:g} and {high:g}, got {value!r}")
    return float(value)


def text(key: str, value: object) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value
