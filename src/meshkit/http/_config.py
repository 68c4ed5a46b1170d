"""Timeouts and limits for HTTP connections, grouped as httpx groups them."""

from __future__ import annotations

import msgspec

from meshkit.errors import ConfigError
from meshkit.policy import _check as check

__all__ = ["Limits", "Timeouts"]


class Timeouts(msgspec.Struct, frozen=True, kw_only=True):
    """How long each phase of a request may take, in seconds.

    ``connect`` bounds opening a connection, ``read`` the wait for the whole
    response once the request is sent, and ``total`` (if set) the request
    from start to finish, including waiting for a pooled connection.
    Defaults: a 5 s connect (as Envoy's), a 30 s read, no total bound.
    """

    connect: float = 5.0
    read: float = 30.0
    total: float | None = None

    def __post_init__(self) -> None:
        check.seconds("connect", self.connect)
        check.seconds("read", self.read)
        if self.total is not None:
            check.seconds("total", self.total)


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on connections and on what a peer may send back.

    ``max_connections`` is per origin (host and port); a request beyond it
    waits for a connection to come free. Idle connections are kept for
    reuse up to ``max_idle`` per origin and closed after ``idle_timeout``
    seconds, well before the usual server keep-alive timeouts (nginx closes
    idle connections after 75 s, uvicorn after 5 s; granian after 10 s), so
    a reused connection is rarely one the server has just closed.
    """

    max_connections: int = 100
    max_idle: int = 20
    idle_timeout: float = 4.0
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        check.whole("max_connections", self.max_connections, minimum=1)
        check.whole("max_idle", self.max_idle, minimum=0)
        if self.max_idle > self.max_connections:
            raise ConfigError("max_idle", "must not exceed max_connections")
        check.seconds("idle_timeout", self.idle_timeout)
        check.whole("max_header_bytes", self.max_header_bytes, minimum=1024)
        check.whole("max_body_bytes", self.max_body_bytes, minimum=0)
