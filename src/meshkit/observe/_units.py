"""The words people write for telemetry: durations (``10m``), sizes (``512MiB``), log levels.

One parser for each, shared by ``meshkit.toml``, the control plane's query
API and the CLI, so ``--since 10m`` means the same everywhere. Each raises
``InvalidArgumentError`` naming the key it was given for.
"""

from __future__ import annotations

import re

from meshkit.errors import InvalidArgumentError

__all__ = ["LEVELS", "level_name", "parse_duration", "parse_level", "parse_size"]

# Go's time.ParseDuration units (and Prometheus's ``d``), in seconds.
_TIME_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")

# IEC binary units as in `du -h` and Kubernetes' quantities; the SI ones too.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")

# OpenTelemetry's SeverityNumber ranges (logs data model): each level's lowest number.
LEVELS = {"trace": 1, "debug": 5, "info": 9, "warn": 13, "error": 17, "fatal": 21}
_ALIASES = {"warning": "warn", "critical": "fatal"}


def parse_duration(key: str, text: str) -> float:
    """Seconds in ``text``: ``250ms``, ``10m``, ``1h30m``, ``2d``; positive."""
    given = text.strip()
    if _DURATION.fullmatch(given) is None:
        raise InvalidArgumentError(
            key, f"must be a duration such as 500ms, 10m, 1h30m or 2d, got {text!r}"
        )
    seconds = sum(
        float(number) * _TIME_UNITS[unit] for number, unit in _DURATION_PART.findall(given)
    )
    if seconds <= 0:
        raise InvalidArgumentError(key, f"must be longer than zero, got {text!r}")
    return seconds


def parse_size(key: str, value: str | int) -> int:
    """Bytes in ``value``: a whole number of bytes, or text such as ``512MiB``, ``2GB``."""
    if isinstance(value, int) and not isinstance(value, bool):
        number, unit = float(value), ""
    else:
        match = _SIZE.fullmatch(str(value).strip())
        if match is None or match.group(2).lower() not in _SIZE_UNITS:
            raise InvalidArgumentError(
                key, f"must be a size such as 512MiB, 2GiB or 100MB, got {value!r}"
            )
        number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * _SIZE_UNITS[unit])
    if size <= 0:
        raise InvalidArgumentError(key, f"must be more than zero bytes, got {value!r}")
    return size


def parse_level(key: str, text: str) -> int:
    """The lowest SeverityNumber of a level named in ``text`` (``info``, ``WARNING``), or a
    SeverityNumber itself (1 to 24)."""
    given = text.strip().lower()
    given = _ALIASES.get(given, given)
    if given in LEVELS:
        return LEVELS[given]
    if given.isdigit() and 1 <= int(given) <= 24:
        return int(given)
    names = ", ".join(LEVELS)
    raise InvalidArgumentError(key, f"must be one of {names} (or 1 to 24), got {text!r}")


def level_name(number: int) -> str:
    """The level a SeverityNumber falls in, ``""`` for 0 (unspecified)."""
    name = ""
    for candidate, lowest in LEVELS.items():
        if number >= lowest:
            name = candidate
    return name
