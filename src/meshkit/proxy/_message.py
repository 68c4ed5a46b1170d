"""The request and response objects that filters see and change."""

from __future__ import annotations

import os
from collections.abc import Callable
from http import HTTPStatus
from itertools import count
from typing import TYPE_CHECKING

from meshkit.http import Problem, encode_problem
from meshkit.proxy._route import RoutePolicy

if TYPE_CHECKING:
    from meshkit.proxy._tracing import RequestTrace
    from meshkit.proxy._upstreams import UpstreamCall

__all__ = ["ProxyRequest", "ProxyResponse", "RequestIds", "error_response", "reason"]

Headers = list[tuple[bytes, bytes]]

_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}


def first_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case) in ``headers``, or ``None``."""
    for key, value in headers:
        if key == name:
            return value
    return None


def reason(status: int) -> bytes:
    """The reason phrase for ``status`` (empty for codes without one, as RFC 9112 allows)."""
    return _REASONS.get(status, b"")


_CLOSED = RoutePolicy()


class ProxyRequest:
    """One request on its way through the filters.

    Header names are lower-case, values as the client sent them. ``path``
    and ``query`` are the request target as sent (still percent-encoded);
    a filter that rewrites the path changes ``path``. ``upstream`` is where
    the request goes, set by a filter (the gateway's router, the sidecar).
    ``deadline`` (event-loop time) bounds the upstream exchange when set.
    The body is not here: it streams.

    What one filter tells later ones has a field of its own, each written
    by one kind of filter:

    - ``route``, ``service``: the routing filter (the gateway's ``Routes``,
      the sidecar's ``ToApp`` and ``ByName``); read by ``Upstreams``, the
      breakers, metrics and logs. ``route`` names the route, ``service``
      the service it goes to (``None`` when it goes to a fixed address).
    - ``policy``: the gateway's ``Routes``, from the route's configuration
      (how the client authenticates, which keys may, the split between
      versions); read by authentication and ``Upstreams``. Until a route
      says otherwise an API key is required: closed by default.
    - ``identity``: authentication (``ApiKeys``, ``JwtAuth``): the API
      key's name or ``jwt:<subject>``; read by the rate limits.
    - ``rate_limit``: ``ClientLimits``: the ``RateLimit`` fields for the answer.
    - ``cors_origin``: ``Cors``: the origin to allow on the answer (empty:
      refused), ``None`` for a request that is not cross-origin.
    - ``call``: ``Upstreams``: the attempts of the request and its route's
      breaker ticket.
    - ``trace``: ``Tracing``: a sampled request's trace context and spans,
      which the engine tells of each attempt and writes upstream;
      ``trace_line``: an unsampled request's context, the header lines the
      forwarder sends on as they are (nothing to tell it of).
    - ``status``: the engine, once the answer's status is known.
    """

    __slots__ = (
        "_finally",
        "call",
        "client",
        "cors_origin",
        "deadline",
        "headers",
        "identity",
        "keep_alive",
        "method",
        "path",
        "policy",
        "query",
        "rate_limit",
        "received_path",
        "request_id",
        "route",
        "scheme",
        "service",
        "started",
        "status",
        "trace",
        "trace_line",
        "upstream",
        "version",
    )

    def __init__(
        self,
        *,
        method: str,
        path: str,
        query: str,
        headers: Headers,
        client: str,
        request_id: str,
        version: str = "1.1",
        scheme: str = "http",
        keep_alive: bool = True,
        started: float = 0.0,
    ) -> None:
        self.method = method
        self.path = path
        self.received_path = path  # as the client sent it: ``path`` may be rewritten
        self.query = query
        self.headers = headers
        self.client = client
        self.request_id = request_id
        self.version = version
        self.scheme = scheme
        self.keep_alive = keep_alive
        self.started = started
        self.upstream: tuple[str, int] | None = None
        self.deadline: float | None = None
        self.route: str | None = None
        self.service: str | None = None
        self.policy = _CLOSED
        self.identity: str | None = None
        self.rate_limit: Headers | None = None
        self.cors_origin: bytes | None = None
        self.call: UpstreamCall | None = None
        self.trace: RequestTrace | None = None
        self.trace_line = b""  # an unsampled request's context, as header lines to send on
        self.status = 0
        self._finally: list[Callable[[], None]] | None = None

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the exchange is over, however it ended (the client
        may have left): where a filter gives back what it took for the request."""
        if self._finally is None:
            self._finally = []
        self._finally.append(callback)

    def finished(self) -> list[Callable[[], None]]:
        """The callbacks ``on_finish`` collected, handed out once (for the engine)."""
        callbacks, self._finally = self._finally or [], None
        return callbacks

    @property
    def target(self) -> str:
        """The request target to send upstream: path and query."""
        return f"{self.path}?{self.query}" if self.query else self.path

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        return first_value(self.headers, name)

    def __repr__(self) -> str:
        return f"<ProxyRequest {self.request_id} {self.method} {self.target}>"


class ProxyResponse:
    """A response on its way back: status, headers (lower-case names) and a body.

    ``body`` is the whole body of an answer the proxy makes itself; an
    upstream's body streams past the filters and is not here. Framing
    headers (``Content-Length``, ``Transfer-Encoding``) are the engine's to
    write, not the filters'.
    """

    __slots__ = ("body", "headers", "status", "upstream")

    def __init__(
        self, status: int, headers: Headers, body: bytes = b"", *, upstream: bool = False
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.upstream = upstream  # answered by the upstream, not by the proxy itself

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower-case), or ``None``."""
        return first_value(self.headers, name)

    def __repr__(self) -> str:
        return f"<ProxyResponse {self.status}>"


def error_response(
    status: int, message: str, request_id: str, *, headers: Headers | None = None
) -> ProxyResponse:
    """An answer from the proxy itself: a problem (RFC 9457) whose ``instance`` is the
    request id, with ``retry_after`` when ``headers`` carry a Retry-After."""
    problem = Problem(status, message, instance=request_id)
    return ProxyResponse(status, *encode_problem(problem, headers or ()))


class RequestIds:
    """Request ids unique across processes: a random prefix and a counter.

    An incoming ``X-Request-Id`` is kept when it is a short token, so one
    id follows a request through the gateway, the sidecars and the logs.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = os.urandom(5).hex()
        self._counter = count(1)

    def next(self) -> str:
        return f"{self._prefix}-{next(self._counter):x}"

    def accept(self, value: bytes | None) -> str:
        """``value`` if fit to pass on (1-128 visible ASCII characters), else a new id."""
        if value is not None and 0 < len(value) <= 128 and value.isascii():
            text = value.decode("ascii")
            if text.isprintable() and " " not in text and '"' not in text:
                return text
        return self.next()
