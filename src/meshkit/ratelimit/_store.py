"""The ``LimitStore`` interface and the in-process store."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from meshkit._clock import Clock, SystemClock
from meshkit.policy import GCRA, RateDecision, RateLimit

__all__ = ["LimitStore", "MemoryLimitStore"]


class LimitStore(Protocol):
    """Shared GCRA state, one theoretical arrival time per key."""

    async def acquire(
        self, keys: Sequence[tuple[str, RateLimit]], cost: int = 1
    ) -> list[RateDecision]:
        """Charge ``cost`` to every key, or to none: all or nothing, atomically.

        Returns one decision per key, in order. The request is admitted when
        every decision is ``allowed``; when one is not, no key is charged, and
        each decision says what that key alone would have done (its
        ``remaining`` and ``reset_after`` as if charged). Raises
        ``EnvironmentFaultError`` when the store cannot be reached.
        """
        ...

    async def aclose(self) -> None:
        """Release connections; the store cannot be used afterwards."""
        ...


class MemoryLimitStore:
    """A ``LimitStore`` in this process: limits shared by the tasks of one gateway."""

    # Keys kept at most; the oldest go first. A dropped key is one whose
    # client has been quiet the longest, and a quiet client's bucket has
    # refilled, so forgetting it forgets nothing.
    MAX_KEYS = 100_000

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._tats: dict[str, int] = {}

    async def acquire(
        self, keys: Sequence[tuple[str, RateLimit]], cost: int = 1
    ) -> list[RateDecision]:
        now = self._clock.monotonic()
        # Each key decided on a copy, so a refusal by one charges none.
        trials = [(key, self._gcra(key, limit)) for key, limit in keys]
        decisions = [gcra.acquire(now, cost) for _, gcra in trials]
        admitted = all(decision.allowed for decision in decisions)
        for key, gcra in trials:
            # Re-inserted last, as the newest, even when refused: a client
            # being refused is the last one whose state may be forgotten.
            tat = self._tats.pop(key, None)
            if admitted:
                tat = gcra.tat
            if tat is not None:
                self._tats[key] = tat
        while len(self._tats) > self.MAX_KEYS:
            del self._tats[next(iter(self._tats))]
        return decisions

    async def aclose(self) -> None:
        self._tats.clear()

    def _gcra(self, key: str, limit: RateLimit) -> GCRA:
        tat = self._tats.get(key)
        return GCRA(limit) if tat is None else GCRA(limit, tat=tat)
