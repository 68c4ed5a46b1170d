"""The HTTP/1.1 proxy engine the gateway and the sidecar share.

A ``ProxyServer`` parses requests from clients, runs each through its
``Filter`` layers (which choose ``request.upstream`` or answer), and the
``Forwarder``'s pooled connections carry it upstream; bodies stream both
ways.
"""

from meshkit.proxy._chain import Filter, RequestDecision, Retrier
from meshkit.proxy._config import ProxyLimits
from meshkit.proxy._forward import PROXY_LIMITS, Forwarder
from meshkit.proxy._headers import HOP_BY_HOP, Forwarding, request_headers, response_headers
from meshkit.proxy._message import ProxyRequest, ProxyResponse, error_response
from meshkit.proxy._server import Exchange, ProxyServer

__all__ = [
    "HOP_BY_HOP",
    "PROXY_LIMITS",
    "Exchange",
    "Filter",
    "Forwarder",
    "Forwarding",
    "ProxyLimits",
    "ProxyRequest",
    "ProxyResponse",
    "ProxyServer",
    "RequestDecision",
    "Retrier",
    "error_response",
    "request_headers",
    "response_headers",
]
