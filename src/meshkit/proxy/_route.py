"""What a matched route tells the filters after the router: how to authenticate, where to split."""

from __future__ import annotations

import msgspec

from meshkit.policy import WeightedSplit

__all__ = ["RoutePolicy", "RouteSplit"]


class RouteSplit(msgspec.Struct, frozen=True):
    """A route's weighted split between versions, and where its sticky key comes from."""

    weights: WeightedSplit
    sticky: tuple[str, bytes] | None  # ("header" or "cookie", its name)


class RoutePolicy(msgspec.Struct, frozen=True, kw_only=True):
    """A route's settings that later filters act on, made once per route.

    ``auth`` is how the client authenticates (``"api_key"``, ``"jwt"``,
    ``"none"``); ``keys`` the API keys (by name) allowed on the route,
    ``None`` for any; ``split`` the weighted split between versions.
    """

    auth: str = "api_key"
    keys: frozenset[str] | None = None
    split: RouteSplit | None = None
