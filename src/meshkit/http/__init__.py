"""HTTP/1.1 on asyncio protocols and httptools: the client meshkit calls services with.

The proxy engine and the control plane's server build on the same parser.
"""

from meshkit.http._client import IDEMPOTENT_METHODS, HTTPClient
from meshkit.http._config import Limits, Timeouts
from meshkit.http._response import Response
from meshkit.http._server import HTTPServer, Request, ServerLimits, json_response

__all__ = [
    "IDEMPOTENT_METHODS",
    "HTTPClient",
    "HTTPServer",
    "Limits",
    "Request",
    "Response",
    "ServerLimits",
    "Timeouts",
    "json_response",
]
