"""How long telemetry is kept and how much of it: a decision from the time and the size.

The store asks ``Retention`` what to remove; it reads no clock and touches
no file, so a day's retention is tested by passing another ``now``.
"""

from __future__ import annotations

import msgspec

from meshkit.errors import InvalidArgumentError

__all__ = ["DEFAULT_MAX_AGE", "DEFAULT_MAX_SIZE", "Retention"]

# A day: the work of today and the evening before, which is what someone
# debugging a mesh on their machine goes back to. Jaeger's all-in-one and
# Grafana's single-binary Tempo keep data for days to weeks on servers
# meant for it; the control plane is a process beside the developer's own.
DEFAULT_MAX_AGE = 24 * 3600.0
# 512 MiB: a small share of a laptop's disk, and a SQLite file whose
# indexes stay in the page cache, so the queries stay fast. At about 1 KiB
# a span with its indexes that is around half a million spans: a load test
# reaches it first, and then the oldest data goes first.
DEFAULT_MAX_SIZE = 512 * 1024 * 1024
# Purged down to this share of max_size, so that a store at its limit is
# not purged again at every tick for a few pages.
LOW_WATER = 0.9
_MIN_SIZE = 64 * 1024  # a few SQLite pages of each table and index


class Retention(msgspec.Struct, frozen=True, kw_only=True):
    """Keep records for ``max_age`` seconds, and at most ``max_size`` bytes of them."""

    max_age: float = DEFAULT_MAX_AGE
    max_size: int = DEFAULT_MAX_SIZE

    def __post_init__(self) -> None:
        if not self.max_age > 0:
            raise InvalidArgumentError("retention", f"must be positive, got {self.max_age}")
        if self.max_size < _MIN_SIZE:
            raise InvalidArgumentError(
                "max_size", f"must be at least {_MIN_SIZE} bytes, got {self.max_size}"
            )

    def cutoff_ns(self, now: float) -> int:
        """Records that began before this Unix time (in ns) are too old at wall time ``now``."""
        return int((now - self.max_age) * 1e9)

    def share_to_remove(self, used: int) -> float:
        """Which share of the records (the oldest) to remove from a store of ``used`` bytes:
        0 within the limit, else enough to come down to ``LOW_WATER`` of it."""
        if used <= self.max_size:
            return 0.0
        return 1.0 - LOW_WATER * self.max_size / used
