"""The proxy server: listens, runs each request through the filters, maps errors.

``filters`` is read when each request starts, so replacing the list (a
configuration reload) takes effect for new requests while those in flight
finish with the filters they started with: no connection is dropped.
``aclose()`` drains: it stops accepting, closes idle connections, and lets
requests in flight finish for a grace period.

Errors become answers here, each a JSON body with the request id: the
client's fault (``RequestRefusedError``) its own status, no instance or an
open circuit 503, a timeout 504, an upstream that could not be reached or
broke the protocol 502, and anything else 500 (kept in ``errors`` for the
logs; the message does not leak to the client). Observers
(``on_exchange``) receive one frozen record per request: the access log
and the metrics hang there.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from meshkit.errors import (
    DeadlineExceededError,
    PeerError,
    RequestRefusedError,
    ServiceUnavailableError,
)
from meshkit.http._listener import Listener
from meshkit.proxy._chain import Chain, Filter, Retrier
from meshkit.proxy._config import ProxyLimits
from meshkit.proxy._downstream import ClientConnection
from meshkit.proxy._forward import Forwarder
from meshkit.proxy._message import ProxyRequest, ProxyResponse, RequestIds, error_response

if TYPE_CHECKING:
    from meshkit.proxy._stream import Stream

__all__ = ["Exchange", "ProxyServer"]


class Exchange(msgspec.Struct, frozen=True, kw_only=True):
    """One request and its answer, as observers see it.

    ``status`` is 0 when no complete answer could be written (the client
    left, or the upstream failed after the answer had begun); ``error``
    then says why. ``upstream`` is ``host:port`` when one was chosen;
    ``route`` and ``service`` are what the routing filter set on the request;
    ``traceparent`` its trace context as the W3C header's value
    (``00-<trace id>-<span id>-<flags>``, sampled or not; ``b""``
    untraced), and ``trace_id`` and ``span_id`` the ids from it. ``path``
    is the path the client sent, before any filter rewrote it.
    """

    request_id: str
    method: str
    path: str
    client: str
    status: int
    duration: float
    received: int
    sent: int
    upstream: str | None
    route: str | None
    service: str | None
    error: str | None
    traceparent: bytes = b""

    # Read from the header's value when asked: most observers (the metrics)
    # never ask, and decoding them for every request cost as much as the
    # rest of an unsampled request's tracing.
    @property
    def trace_id(self) -> str | None:
        return self.traceparent[3:35].decode("ascii") if self.traceparent else None

    @property
    def span_id(self) -> str | None:
        return self.traceparent[36:52].decode("ascii") if self.traceparent else None


Observer = Callable[[Exchange], None]

# Where the header's value sits in an unsampled request's "traceparent: <value>\r\n".
_VALUE = slice(13, 68)


class ProxyServer(Listener[ClientConnection]):
    """Runs requests through ``filters``, then ``forwarder``, on one address."""

    def __init__(
        self,
        filters: Sequence[Filter],
        forwarder: Forwarder,
        *,
        limits: ProxyLimits | None = None,
        retrier: Retrier | None = None,
    ) -> None:
        self.chain = Chain(filters)
        self.forwarder = forwarder
        self.retrier = retrier
        self.limits = limits or ProxyLimits()
        self.request_ids = RequestIds()
        super().__init__()
        self.on_exchange: list[Observer] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.refusals: Counter[int] = Counter()  # by status: requests refused unparsed
        # Read once: asyncio.get_running_loop() costs a getpid() system call
        # on Python 3.11, which on the proxy's path was a fifth of the work.
        self.loop = asyncio.get_running_loop()

    @property
    def filters(self) -> tuple[Filter, ...]:
        return self.chain.filters

    @filters.setter
    def filters(self, filters: Sequence[Filter]) -> None:
        """A new chain for requests from now on (a reload); those under way keep theirs."""
        self.chain = Chain(filters)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0 for a free port); returns the address bound."""
        return await self._listen(lambda: ClientConnection(self), host, port)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` s, then close."""
        await self._drain(grace)
        await self.forwarder.aclose()

    # -- called by connections and streams ---------------------------------------

    def request_finished(self, stream: Stream) -> None:
        self._request_done()
        request, response, error = stream.request, stream.response, stream.error
        trace = request.trace
        if trace is None and not self.on_exchange:
            return
        complete = response is not None and not (error is not None and response.upstream)
        status = response.status if complete and response is not None else 0
        if trace is not None:
            trace.finished(request, status, error)
        if not self.on_exchange:
            return
        upstream = request.upstream
        if trace is not None:
            traceparent = b"00-%s-%s-01" % (trace.trace_id, trace.span_id)
        else:
            traceparent = request.trace_line[_VALUE]  # b"" untraced
        record = Exchange(
            request_id=request.request_id,
            method=request.method,
            path=request.received_path,
            client=request.client,
            status=status,
            duration=self.loop.time() - request.started,
            received=stream.received,
            sent=stream.sent,
            upstream=f"{upstream[0]}:{upstream[1]}" if upstream else None,
            route=request.route,
            service=request.service,
            error=None if error is None else f"{type(error).__name__}: {error}",
            traceparent=traceparent,
        )
        for observer in self.on_exchange:
            observer(record)

    def answer_error(self, request: ProxyRequest, error: BaseException) -> ProxyResponse:
        """The answer to a request that failed with ``error`` before its answer began."""
        request_id = request.request_id
        if isinstance(error, RequestRefusedError):
            return error_response(error.status, error.message, request_id)
        if isinstance(error, ServiceUnavailableError):
            return error_response(503, str(error), request_id)
        if isinstance(error, DeadlineExceededError):
            return error_response(504, str(error), request_id)
        if isinstance(error, PeerError):
            return error_response(502, str(error), request_id)
        self.report_error(request_id, error)
        return error_response(500, "internal error in the proxy", request_id)

    def report_error(self, request_id: str, error: BaseException) -> None:
        """A filter or the proxy failed unexpectedly: kept (the last 100) for the logs."""
        self.errors.append((request_id, error))
        del self.errors[:-100]
