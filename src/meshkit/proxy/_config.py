"""What the proxy accepts from clients, and how long it waits for them."""

from __future__ import annotations

import msgspec

from meshkit.policy import _check as check

__all__ = ["ProxyLimits"]


class ProxyLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on one client connection and the requests it sends.

    Defaults, and what they follow:

    - ``max_header_bytes`` 32 KiB for the request line and headers together
      (nginx's ``large_client_header_buffers`` allow 4 x 8 KiB; Node 16 KiB),
      and ``max_headers`` 100 fields (Apache's ``LimitRequestFields``, Go's
      default too): 431 beyond either.
    - ``max_body_bytes`` 10 MiB (nginx allows 1 MiB; uploads through an API
      gateway are usually larger): 413 beyond it, before a byte of the body
      is forwarded when ``Content-Length`` says so.
    - ``header_timeout`` 10 s from a request's first byte to the end of its
      headers, however the bytes trickle in (Go's servers commonly use 10 s;
      nginx 60 s), so a slow client cannot hold a connection open for long.
    - ``body_timeout`` 30 s of silence while a body is arriving (nginx's
      ``client_body_timeout`` is 60 s).
    - ``idle_timeout`` 60 s between requests on a kept-alive connection
      (nginx 75 s, HAProxy's examples 10 s).
    - ``max_pipelined`` 16 requests parsed ahead of their answers; a client
      that sends more is disconnected, since answers must go in order.
    """

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_pipelined: int = 16

    def __post_init__(self) -> None:
        check.whole("max_header_bytes", self.max_header_bytes, minimum=1024)
        check.whole("max_headers", self.max_headers, minimum=8)
        check.whole("max_body_bytes", self.max_body_bytes, minimum=0)
        check.seconds("header_timeout", self.header_timeout)
        check.seconds("body_timeout", self.body_timeout)
        check.seconds("idle_timeout", self.idle_timeout)
        check.whole("max_pipelined", self.max_pipelined, minimum=1)
