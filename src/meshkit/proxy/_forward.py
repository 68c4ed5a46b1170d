"""Where requests go once the filters let them: pooled upstream connections.

The ``Forwarder`` owns the pools and writes the request head as RFC 9110
asks of a proxy: hop-by-hop headers out, ``Via`` and ``X-Forwarded-*`` in,
``Expect`` answered by the engine rather than forwarded, and the framing
(``Content-Length`` or chunked) written afresh, so nothing the client said
about framing reaches the upstream.
"""

from __future__ import annotations

from meshkit.http._config import Limits, Timeouts
from meshkit.http._pool import ConnectionPool
from meshkit.proxy._headers import Forwarding, request_headers
from meshkit.proxy._message import ProxyRequest
from meshkit.proxy._tracing import TRACE_HEADERS
from meshkit.proxy._upstream import UpstreamConnection

__all__ = ["PROXY_LIMITS", "Forwarder"]

# Upstream pools for a proxy: as many idle connections kept as may be open,
# since a gateway under load reuses all of them; 4 s idle, below the keep-alive
# timeouts of the servers behind it (uvicorn 5 s, granian 10 s, nginx 75 s).
PROXY_LIMITS = Limits(max_connections=512, max_idle=512, idle_timeout=4.0)
# Framing is written afresh; Expect is answered here; the request id is set below.
_NOT_FORWARDED = frozenset({b"content-length", b"expect", b"x-request-id"})
# With a trace on the request, its context is written afresh too.
_NOT_FORWARDED_TRACED = _NOT_FORWARDED | TRACE_HEADERS


class Forwarder:
    """Pooled connections to upstreams, and the head each request is sent with."""

    def __init__(
        self,
        *,
        forwarding: Forwarding,
        timeouts: Timeouts | None = None,
        limits: Limits = PROXY_LIMITS,
    ) -> None:
        self.forwarding = forwarding
        self.timeouts = timeouts or Timeouts()
        self.pool: ConnectionPool[UpstreamConnection] = ConnectionPool(
            lambda origin: UpstreamConnection(origin, limits), limits
        )

    def head(self, request: ProxyRequest) -> bytes:
        """The request line and headers to send upstream, without the framing and blank line."""
        headers = request_headers(
            request.headers, self.forwarding, client=request.client, scheme=request.scheme
        )
        lines = [f"{request.method} {request.target} HTTP/1.1\r\n".encode("latin-1")]
        trace, line = request.trace, request.trace_line
        dropped = _NOT_FORWARDED if trace is None and not line else _NOT_FORWARDED_TRACED
        for name, value in headers:
            if name not in dropped:
                lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"x-request-id: %s\r\n" % request.request_id.encode("ascii"))
        if trace is not None:
            lines.append(trace.headers())
        elif line:
            lines.append(line)
        return b"".join(lines)

    def done(self, connection: UpstreamConnection, *, reusable: bool) -> None:
        """An exchange is over: keep the connection for the next request, or close it."""
        if reusable:
            self.pool.release(connection.origin, connection)
        else:
            self.pool.discard(connection.origin, connection)

    async def aclose(self) -> None:
        self.pool.close()
