"""Validation shared by the policies' constructors.

Options often come from configuration files, so they are checked at run time
whatever their annotations say, and a bad one raises ``ConfigError`` naming it.
"""

from __future__ import annotations

import math
from typing import TypeVar

from meshkit.errors import ConfigError

T = TypeVar("T")


def seconds(key: str, value: object, *, allow_zero: bool = False) -> float:
    """A finite, positive (or, with ``allow_zero``, non-negative) number of seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(key, f"must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'} seconds, got {value!r}")
    return float(value)


def whole(key: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """A whole number no smaller than ``minimum`` (and, given one, no larger than ``maximum``)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        bounds = f">= {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise ConfigError(key, f"must be a whole number {bounds}, got {value!r}")
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


def instance(key: str, value: object, kind: type[T], *, what: str | None = None) -> T:
    """``value`` if it is a ``kind``; the error calls the type ``what`` (default: its name)."""
    if not isinstance(value, kind):
        raise ConfigError(key, f"must be a {what or kind.__name__}, got {type(value).__name__}")
    return value
