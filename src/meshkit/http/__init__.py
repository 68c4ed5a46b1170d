"""HTTP/1.1 on asyncio protocols and httptools: the client meshkit calls services with.

The proxy engine and the control plane's server build on the same parser.
"""

from meshkit.http._client import HTTPClient
from meshkit.http._config import Limits, Timeouts
from meshkit.http._response import Response
from meshkit.http._semantics import IDEMPOTENT_METHODS, RETRYABLE_STATUSES
from meshkit.http._server import HTTPServer, Request, ServerLimits, json_response

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUSES",
    "HTTPClient",
    "HTTPServer",
    "Limits",
    "Request",
    "Response",
    "ServerLimits",
    "Timeouts",
    "json_response",
]
