"""The one rule for a request that must carry the project's token: ``Authorization: Bearer``.

The control plane's API and a service's own endpoints (``/-/sagas``)
check it the same way, so a client that is let in by one is let in by all.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

__all__ = ["BEARER_CHALLENGE", "bearer_authorized"]

# RFC 9110, 11.6.1: a 401 says how to authenticate.
BEARER_CHALLENGE = (b"www-authenticate", b'Bearer realm="meshkit"')


def bearer_authorized(headers: Iterable[tuple[bytes, bytes]], token: bytes) -> bool:
    """Whether the first ``authorization`` header of ``headers`` (lower-case names, as
    meshkit's server and ASGI give them) is ``Bearer <token>`` (RFC 6750).

    The scheme is case-insensitive (RFC 9110, 11.1); the token is not, and
    is compared in constant time. No header, or an empty ``token``, is false.
    """
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.partition(b" ")
            return (
                bool(token)
                and scheme.lower() == b"bearer"
                and hmac.compare_digest(credentials.strip(), token)
            )
    return False
