"""Filters: the layers every request passes through, all with one shape.

A filter has two methods. ``on_request(request)`` runs in order as the
request arrives: it returns ``None`` to let the request go on (having
changed it, perhaps: a rewritten path, a chosen upstream, the client's
``identity``), a ``ProxyResponse`` to answer at once (a 401, a 429), or,
when it must wait for I/O (a shared rate limit in Redis), an awaitable of
either. ``on_response(request, response)`` runs in reverse order when the
upstream's head arrives, or on the proxy's own answer, and may change the
status line's headers (CORS, metrics). A filter with nothing to do there
inherits ``RequestOnly``'s ``on_response`` and is left out of that loop.

This is Envoy's filter model rather than Starlette's ``call_next``: a
filter that answers synchronously costs a function call, where an async
middleware costs a coroutine and a task per request, which on the proxy's
hot path were measured to cost more than the HTTP work itself. Retries and
timeouts, which need to act after the response, belong to the forwarding
stage (the ``Forwarder`` and its upstream policy), as in Envoy's router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol

from meshkit.proxy._message import ProxyRequest, ProxyResponse

__all__ = ["Chain", "Filter", "RequestDecision", "RequestOnly", "Retrier"]

RequestDecision = ProxyResponse | None | Awaitable[ProxyResponse | None]


class Filter(Protocol):
    """One layer of the proxy."""

    def on_request(self, request: ProxyRequest) -> RequestDecision:
        """``None`` to go on, a response to answer now, or an awaitable of either."""
        ...

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        """Look at or change the response's status and headers before they are sent."""
        ...


class RequestOnly:
    """Base of a filter with no response side: the engine does not call it there."""

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        """Nothing to do: only the request matters to this filter."""


_NOTHING: object = RequestOnly.on_response


class Chain:
    """Filters in the order requests meet them, and those with a response side,
    in the order that side runs (reversed).

    Most filters only look at requests; a call each to a method that does
    nothing was a cost of every request.
    """

    __slots__ = ("filters", "responders")

    def __init__(self, filters: Sequence[Filter]) -> None:
        self.filters: tuple[Filter, ...] = tuple(filters)
        self.responders: tuple[Filter, ...] = tuple(
            layer
            for layer in reversed(self.filters)
            if getattr(type(layer), "on_response", None) is not _NOTHING
        )


class Retrier(Protocol):
    """Decides whether a failed attempt is sent again, and where.

    Asked when an attempt fails before any of its answer reached the client:
    ``failure`` is the error, or the status of a 502, 503 or 504 answer (which
    is then discarded). To retry, it sets ``request.upstream`` anew and returns
    the seconds to wait first, which must be less than ``time_left`` (the
    seconds before the request's deadline, ``None`` without one); ``None``
    lets the failure stand. The engine asks only when the request body can be
    sent again (it arrived whole before the first attempt).
    """

    def retry(
        self, request: ProxyRequest, failure: BaseException | int, time_left: float | None
    ) -> float | None: ...
