"""HTTP/1.1 on asyncio protocols and httptools: the client meshkit calls services with.

The proxy engine and the control plane's server build on the same parser,
and every error any of them answers is a ``Problem`` (RFC 9457).
"""

from meshkit.http._bearer import BEARER_CHALLENGE, bearer_authorized
from meshkit.http._client import HTTPClient
from meshkit.http._config import Limits, Timeouts
from meshkit.http._idempotency import (
    IDEMPOTENCY_KEY,
    MAX_IDEMPOTENCY_KEY,
    idempotency_key_field,
    read_idempotency_key,
)
from meshkit.http._problem import (
    PROBLEM_JSON,
    FieldError,
    Problem,
    encode_problem,
    problem_response,
)
from meshkit.http._response import Response
from meshkit.http._semantics import IDEMPOTENT_METHODS, RETRYABLE_STATUSES
from meshkit.http._server import HTTPServer, Request, ServerLimits, json_response

__all__ = [
    "BEARER_CHALLENGE",
    "IDEMPOTENCY_KEY",
    "IDEMPOTENT_METHODS",
    "MAX_IDEMPOTENCY_KEY",
    "PROBLEM_JSON",
    "RETRYABLE_STATUSES",
    "FieldError",
    "HTTPClient",
    "HTTPServer",
    "Limits",
    "Problem",
    "Request",
    "Response",
    "ServerLimits",
    "Timeouts",
    "bearer_authorized",
    "encode_problem",
    "idempotency_key_field",
    "json_response",
    "problem_response",
    "read_idempotency_key",
]
