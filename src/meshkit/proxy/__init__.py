"""The HTTP/1.1 proxy engine the gateway and the sidecar share.

A ``ProxyServer`` parses requests from clients, runs each through its
``Filter`` layers (which choose ``request.upstream`` or answer), and the
``Forwarder``'s pooled connections carry it upstream; bodies stream both
ways. ``Upstreams`` finds each request's instance through
``meshkit.discovery`` and retries failed attempts on another; ``Ready``,
``ProxyMetrics`` and ``Tracing`` are the health check, the metrics and the
W3C trace context with its spans that every proxy has.
"""

from meshkit.proxy._chain import Filter, RequestDecision, RequestOnly, Retrier
from meshkit.proxy._config import ProxyLimits
from meshkit.proxy._forward import PROXY_LIMITS, Forwarder
from meshkit.proxy._headers import HOP_BY_HOP, Forwarding, request_headers, response_headers
from meshkit.proxy._message import ProxyRequest, ProxyResponse, error_response
from meshkit.proxy._metrics import CONTENT_TYPE, ProxyMetrics
from meshkit.proxy._ready import Ready
from meshkit.proxy._route import RoutePolicy, RouteSplit
from meshkit.proxy._server import Exchange, ProxyServer
from meshkit.proxy._tracing import RequestTrace, Tracing
from meshkit.proxy._upstreams import UpstreamCall, Upstreams, route_breaker

__all__ = [
    "CONTENT_TYPE",
    "HOP_BY_HOP",
    "PROXY_LIMITS",
    "Exchange",
    "Filter",
    "Forwarder",
    "Forwarding",
    "ProxyLimits",
    "ProxyMetrics",
    "ProxyRequest",
    "ProxyResponse",
    "ProxyServer",
    "Ready",
    "RequestDecision",
    "RequestOnly",
    "RequestTrace",
    "Retrier",
    "RoutePolicy",
    "RouteSplit",
    "Tracing",
    "UpstreamCall",
    "Upstreams",
    "error_response",
    "request_headers",
    "response_headers",
    "route_breaker",
]
