"""``GlobalLimits``: rate limits shared by every gateway that uses one store.

The local ``ClientLimits`` run first, so a client over its own limit is
refused without a round trip. Then every global limit that applies to the
route's service is charged in one call to the ``LimitStore`` (one Redis
script): all of them, or none when one refuses.

When the store cannot be reached, ``on_unreachable`` decides: ``"open"``
admits the request (the local limits still hold), ``"closed"`` answers 503.
Either way the store is left alone for ``HOLD_OFF`` seconds before it is
tried again, so an outage costs each request nothing rather than a
connection timeout.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

from meshkit._clock import Clock
from meshkit.errors import EnvironmentFaultError
from meshkit.gateway._config import GlobalLimit
from meshkit.gateway._filters import ratelimit_fields
from meshkit.policy import RateLimit
from meshkit.proxy import (
    ProxyRequest,
    ProxyResponse,
    RequestDecision,
    RequestOnly,
    error_response,
)
from meshkit.ratelimit import LimitStore

__all__ = ["GlobalLimits"]

log = logging.getLogger("meshkit.gateway")

_Applying = list[tuple[GlobalLimit, RateLimit]]


class GlobalLimits(RequestOnly):
    """The ``[[gateway.global_limits]]``, checked in the shared ``store``."""

    HOLD_OFF = 1.0  # seconds the store is left alone after it failed

    def __init__(
        self,
        limits: Sequence[GlobalLimit],
        store: LimitStore,
        *,
        fail_open: bool,
        clock: Clock,
    ) -> None:
        self._limits = [
            (limit, RateLimit(capacity=limit.burst, per_second=limit.rate)) for limit in limits
        ]
        self._store = store
        self._fail_open = fail_open
        self._clock = clock
        self._applying: dict[str, _Applying] = {}  # by service, worked out once
        self._down_until: float | None = None  # while the store is left alone

    @property
    def reachable(self) -> bool:
        """False while the store is left alone after a failure."""
        return self._down_until is None

    def on_request(self, request: ProxyRequest) -> RequestDecision:
        service = request.service or ""
        applying = self._applying.get(service)
        if applying is None:
            applying = self._applying[service] = [
                (limit, rate)
                for limit, rate in self._limits
                if limit.services is None or service in limit.services
            ]
        if not applying:
            return None
        if self._down_until is not None and self._clock.monotonic() < self._down_until:
            return self._unreachable(request)  # known without asking: no task for it
        client = request.identity or request.client
        keys = [
            (f"{limit.name}:{client}" if limit.per == "client" else limit.name, rate)
            for limit, rate in applying
        ]
        return self._check(request, applying, keys)

    async def _check(
        self, request: ProxyRequest, applying: _Applying, keys: list[tuple[str, RateLimit]]
    ) -> ProxyResponse | None:
        try:
            decisions = await self._store.acquire(keys)
        except EnvironmentFaultError as error:
            if self._down_until is None:  # once per outage, not once per request
                outcome = "admitted" if self._fail_open else "refused with 503"
                log.warning(
                    "%s; requests under global limits are %s until it answers", error, outcome
                )
            self._down_until = self._clock.monotonic() + self.HOLD_OFF
            return self._unreachable(request)
        if self._down_until is not None:
            log.warning("the rate limit store answers again")
            self._down_until = None
        refused = [
            (decision, limit, rate)
            for decision, (limit, rate) in zip(decisions, applying, strict=True)
            if not decision.allowed
        ]
        if not refused:
            return None
        decision, limit, rate = max(refused, key=lambda found: found[0].retry_after)
        retry = str(max(1, math.ceil(decision.retry_after))).encode("ascii")
        fields = ratelimit_fields(limit.name, rate, decision.remaining, decision.reset_after)
        return error_response(
            429,
            f"global rate limit {limit.name!r} of {rate.per_second:g}/s"
            f" (burst {rate.capacity}) reached",
            request.request_id,
            headers=[(b"retry-after", retry), *fields],
        )

    def _unreachable(self, request: ProxyRequest) -> ProxyResponse | None:
        if self._fail_open:
            return None
        return error_response(
            503,
            "the global rate limit store is unreachable, and this gateway refuses"
            " requests it cannot count (on_unreachable = closed)",
            request.request_id,
            headers=[(b"retry-after", b"1")],
        )
