"""The HTTP/1.1 client: pooled keep-alive connections per origin, with timeouts.

``HTTPClient.request()`` takes a connection from the origin's pool (or opens
one, up to ``Limits.max_connections``, or waits for one to come free), sends
the request, and returns the whole response. A connection goes back to the
pool if the response allows keep-alive; idle ones are closed after
``Limits.idle_timeout``.

A pooled connection the server has closed while it sat idle is usually seen
and dropped before reuse (the protocol hears the close). When the close
races with a new request and the request fails before any response byte,
an idempotent request is sent once more on a fresh connection; anything
else raises, because the server may have acted on it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable

from meshkit.errors import (
    DeadlineExceededError,
    PeerClosedError,
    ReadTimeoutError,
    UsageError,
)
from meshkit.http._config import Limits, Timeouts
from meshkit.http._connection import Connection
from meshkit.http._grammar import TOKEN_BYTES
from meshkit.http._pool import ConnectionPool
from meshkit.http._response import Response
from meshkit.http._semantics import IDEMPOTENT_METHODS

__all__ = ["HTTPClient"]

Headers = Iterable[tuple[bytes, bytes]]


class HTTPClient:
    """A pooled HTTP/1.1 client. Use ``async with`` or call ``aclose()``.

    With ``tls`` (``ssl.create_default_context()`` for the system's
    certificate authorities), every connection is HTTPS.
    """

    def __init__(
        self,
        *,
        timeouts: Timeouts | None = None,
        limits: Limits | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or Limits()
        self._pool = ConnectionPool(
            lambda origin: Connection(origin, self.limits), self.limits, tls=tls
        )
        self._closed = False

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        *,
        headers: Headers = (),
        body: bytes = b"",
        timeouts: Timeouts | None = None,
    ) -> Response:
        """Send ``method target`` to ``host:port`` and return the complete response.

        Raises ``ConnectError``, ``ConnectTimeoutError``, ``ReadTimeoutError``,
        ``PeerClosedError``, ``ProtocolViolationError`` or
        ``ResponseTooLargeError``; an HTTP error status is a response, not an
        exception.
        """
        timeouts = timeouts or self.timeouts
        sending = self.send(
            method,
            host,
            port,
            target,
            headers=headers,
            body=body,
            connect=timeouts.connect,
            read=timeouts.read,
        )
        if timeouts.total is None:
            return await sending
        try:
            async with asyncio.timeout(timeouts.total):
                return await sending
        except DeadlineExceededError:
            raise  # a connect or read timeout inside: already the right error
        except TimeoutError as error:
            raise ReadTimeoutError(
                f"{method} {host}:{port}{target} took longer than {timeouts.total}s"
            ) from error

    async def send(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        *,
        headers: Headers = (),
        body: bytes = b"",
        connect: float,
        read: float,
        deadline: float | None = None,
        idempotent: bool | None = None,
    ) -> Response:
        """``request()`` with its timeouts as plain seconds, checked by the caller.

        The path the service client and the proxy take on every call: a
        ``Timeouts`` object is validated when built, which costs more than
        the rest of the bookkeeping here. ``deadline`` (on the event loop's
        clock) bounds everything: waiting for a connection, connecting,
        reading, and a resend on a stale connection. ``idempotent`` overrides
        what the method implies for that resend.
        """
        if self._closed:
            raise UsageError("this HTTPClient is closed")
        data = encode_request(method, target, host, port, headers, body)
        resend = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        return await self._send(method, (host, port), data, connect, read, deadline, resend=resend)

    async def aclose(self) -> None:
        """Close idle connections now; requests in flight finish, then close theirs."""
        self._closed = True
        self._pool.close()

    # -- one request ------------------------------------------------------

    async def _send(
        self,
        method: str,
        origin: tuple[str, int],
        data: bytes,
        connect: float,
        read: float,
        deadline: float | None,
        *,
        resend: bool,
    ) -> Response:
        pool = self._pool
        head = method == "HEAD"
        connection, reused = await pool.acquire(origin, _within(connect, deadline))
        try:
            response = await connection.roundtrip(
                data, read_timeout=_within(read, deadline), head=head
            )
        except PeerClosedError:
            pool.discard(origin, connection)
            if not (reused and resend):
                raise
            # A kept-alive connection the server closed just as we reused it.
            connection, _ = await pool.acquire(origin, _within(connect, deadline), fresh=True)
            try:
                response = await connection.roundtrip(
                    data, read_timeout=_within(read, deadline), head=head
                )
            except BaseException:
                pool.discard(origin, connection)
                raise
        except BaseException:
            pool.discard(origin, connection)
            raise
        pool.release(origin, connection)
        return response


def _within(timeout: float, deadline: float | None) -> float:
    """``timeout``, cut short to what is left before ``deadline`` (the loop's clock)."""
    if deadline is None:
        return timeout
    left = deadline - asyncio.get_running_loop().time()
    if left <= 0:
        raise ReadTimeoutError("the deadline passed before the request could be sent")
    return timeout if timeout < left else left


# Set here from the request itself; a caller's copy could contradict them.
_RESERVED = frozenset({b"host", b"content-length", b"transfer-encoding"})


def encode_request(
    method: str, target: str, host: str, port: int, headers: Headers, body: bytes
) -> bytes:
    """The bytes of an HTTP/1.1 request, refusing anything that would make it ambiguous.

    ``Host`` and ``Content-Length`` are set here, so callers may not pass
    them (nor ``Transfer-Encoding``): two conflicting copies are how request
    smuggling starts. Header names must be tokens and values free of CR, LF
    and NUL; the target must be printable ASCII without spaces.
    """
    if not method.isascii() or not method.isalpha() or not method.isupper():
        raise UsageError(f"not an HTTP method: {method!r}")
    if (
        not target.startswith("/")
        or not target.isascii()
        or not target.isprintable()
        or " " in target
    ):
        raise UsageError(
            f"request target must be an absolute path of printable ASCII without spaces: {target!r}"
        )
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    parts = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n".encode()]
    for name, value in headers:
        if TOKEN_BYTES.fullmatch(name) is None:
            raise UsageError(f"not a header name: {name!r}")
        if name.lower() in _RESERVED:
            raise UsageError(f"the {name.decode()} header is set by the client, not by callers")
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise UsageError(f"header {name!r} has CR, LF or NUL in its value")
        parts.append(b"%s: %s\r\n" % (name, value))
    if body or method in ("POST", "PUT", "PATCH"):
        parts.append(b"content-length: %d\r\n" % len(body))
    parts.append(b"\r\n")
    if body:
        parts.append(body)
    return b"".join(parts)
