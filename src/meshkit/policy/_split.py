"""A weighted split of traffic between versions: what canary and blue-green turn.

A request brings two points in [0, 1): random ones, or hashes of a sticky
key (a user id, a session cookie). The first point decides between the
first target and the rest: the first target takes it when it falls below
the first target's share. The second point then chooses among the rest,
each owning a slice of [0, 1) as wide as its share of their weights.

Two points rather than one, so that turning the first target's weight up
moves keys only into it: list the canary first and, as its share grows,
a sticky user moves to the canary at most once, and the other targets'
users never trade places among themselves (with one point cut into
slices, every boundary would shift).
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Mapping

from meshkit.errors import ConfigError

__all__ = ["WeightedSplit", "sticky_points"]


class WeightedSplit:
    """``choose(point, second)``: a target, by weight."""

    __slots__ = ("_first", "_rest", "weights")

    def __init__(self, weights: Mapping[str, int], *, key: str = "split") -> None:
        """``key`` names the setting in errors (a route's ``split``, a service's weights)."""
        if not weights:
            raise ConfigError(key, "needs at least one target")
        for target, weight in weights.items():
            if type(weight) is not int or not 0 <= weight <= 1_000_000:
                raise ConfigError(
                    f"{key}.{target}", f"must be a whole number from 0 to 1000000, got {weight!r}"
                )
        if not any(weights.values()):
            raise ConfigError(key, "the weights add up to 0: no target could be chosen")
        self.weights = dict(weights)
        # The first target keeps its role at any weight, 0 included, so its
        # weight alone decides how many keys it takes from the rest.
        self._first, *rest = self.weights.items()
        self._rest = [(target, weight) for target, weight in rest if weight]

    def choose(
        self, point: float, second: float, available: Container[str] | None = None
    ) -> str | None:
        """The target for the points ``point`` and ``second``, each in [0, 1).

        With ``available``, targets outside it (no instance running, say)
        give up their share to the others. ``None`` when no target with a
        weight is available.
        """
        first, first_weight = self._first
        rest = self._rest
        if available is not None:
            first_weight = first_weight if first in available else 0
            rest = [(target, weight) for target, weight in rest if target in available]
        if not rest:
            return first if first_weight else None
        rest_weight = sum(weight for _, weight in rest)
        if point * (first_weight + rest_weight) < first_weight:
            return first
        mark = second * rest_weight
        for target, weight in rest:
            mark -= weight
            if mark < 0:
                return target
        return rest[-1][0]  # rounding at the top edge: the last slice


def sticky_points(key: bytes) -> tuple[float, float]:
    """``key`` hashed to two points in [0, 1), the same in every process and on every host.

    Python's ``hash()`` is salted per process, so two gateways would split
    one user differently; BLAKE2b is not. Its 16 bytes make two independent
    points.
    """
    digest = hashlib.blake2b(key, digest_size=16).digest()
    return (
        int.from_bytes(digest[:8], "big") / 2**64,
        int.from_bytes(digest[8:], "big") / 2**64,
    )
