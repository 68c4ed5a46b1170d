"""The HTTP/1.1 proxy engine the gateway and the sidecar share."""

from meshkit.proxy._headers import HOP_BY_HOP, Forwarding, request_headers, response_headers

__all__ = ["HOP_BY_HOP", "Forwarding", "request_headers", "response_headers"]
