"""One client connection: an asyncio protocol parsing responses with httptools.

A connection carries one request at a time (HTTP/1.1 without pipelining).
``roundtrip()`` writes a request and waits for the complete response; the
parser's callbacks fill it in as bytes arrive. Interim 1xx responses (103
Early Hints, 100 Continue) are read past. Everything the peer can get wrong
(malformed HTTP, oversized headers or body, closing early, bytes beyond the
one response asked for) ends in a meshkit error and a closed connection,
never in a response handed to the wrong request. A body delimited by the
server closing the connection (RFC 9112, 6.3) is complete when it closes.

Why not a library: on the service-to-service path this client is measured
against a direct call, and per-request frameworks cost a factor there (see
DESIGN.md); httptools is the parser uvicorn and the proxy engine use.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from meshkit.errors import (
    PeerClosedError,
    ProtocolViolationError,
    ReadTimeoutError,
    ResponseTooLargeError,
    UsageError,
)
from meshkit.http._config import Limits
from meshkit.http._response import Response

__all__ = ["Connection"]


class Connection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one origin."""

    __slots__ = (
        "_answered",
        "_body",
        "_body_size",
        "_framed",
        "_head_request",
        "_header_size",
        "_headers",
        "_headers_done",
        "_interim",
        "_limits",
        "_parser",
        "_reusable",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
        "loop",
        "origin",
    )

    def __init__(self, origin: tuple[str, int], limits: Limits) -> None:
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[Response] | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._header_size = 0
        self._body_size = 0
        self._head_request = False
        self._reusable = False
        self._answered = False  # this request's response is complete
        self._headers_done = False
        self._framed = False  # the response says where its body ends
        self._interim = False  # the message being read is a 1xx
        self.closed = False
        self.idle_since = 0.0  # when the pool last took it back (loop time)

    # -- used by the pool -------------------------------------------------

    @property
    def reusable(self) -> bool:
        """Whether the last response left the connection fit for another request."""
        return self._reusable and not self.closed

    async def roundtrip(
        self, request: bytes, *, read_timeout: float, head: bool = False
    ) -> Response:
        """Send one encoded request and return its response.

        Raises ``ReadTimeoutError`` if the whole response has not arrived
        ``read_timeout`` seconds after sending. A timeout or a cancelled wait
        closes the connection: the response may still arrive, and it must
        not be read as the next request's. (One timer per request, because an
        ``asyncio.timeout`` block costs several times more on this path.)
        """
        if self._transport is None or self._waiter is not None:
            raise UsageError("a connection carries one request at a time")
        self._reusable = False
        self._head_request = head
        self._answered = False
        self._start_message()
        loop = self.loop
        waiter: asyncio.Future[Response] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(read_timeout, self._read_timed_out, read_timeout)
        self._transport.write(request)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            timer.cancel()
            self._waiter = None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self._transport is not None:
                self._transport.close()

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Nothing was asked: a server that talks unprompted is broken.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            # httptools wraps what a callback raised; the limit errors are ours.
            cause = error.__context__
            if isinstance(cause, ResponseTooLargeError | ProtocolViolationError):
                self._fail(cause)
            else:
                self._fail(
                    ProtocolViolationError(f"malformed response from {self._where}: {error}")
                )

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is None or self._waiter.done():
            return
        if exc is None and self._headers_done and not self._framed and not self._interim:
            self._finish()  # the body ran to the close, as RFC 9112 allows
            return
        reason = f": {exc}" if exc else ""
        self._waiter.set_exception(
            PeerClosedError(f"{self._where} closed the connection before answering{reason}")
        )

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        if self._answered:
            # A second response to one request: the peer is out of step, and
            # anything more it sends could be mistaken for the next answer.
            raise ProtocolViolationError(f"{self._where} sent more than one response")
        self._start_message()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._limits.max_header_bytes:
            raise ResponseTooLargeError(
                f"{self._where} sent more than {self._limits.max_header_bytes} bytes of headers"
            )
        name = name.lower()
        if name in (b"content-length", b"transfer-encoding"):
            self._framed = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._headers_done = True
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # read past it to the final response
            return
        if status in (204, 304):
            self._framed = True  # never a body (RFC 9110, 15.3.5 and 15.4.5)
        if self._head_request:
            # A response to HEAD has no body whatever its Content-Length says,
            # and httptools cannot be told so: finish here, and give the next
            # response a fresh parser.
            self._finish()
            self._parser = httptools.HttpResponseParser(self)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            raise ResponseTooLargeError(
                f"{self._where} sent a body over {self._limits.max_body_bytes} bytes"
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._start_message()
        elif not self._head_request:
            self._finish()

    # -- internals --------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.origin[0]}:{self.origin[1]}"

    def _start_message(self) -> None:
        self._headers = []
        self._body = []
        self._header_size = 0
        self._body_size = 0
        self._headers_done = False
        self._framed = False
        self._interim = False

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._answered = True
        self._reusable = self._framed and self._parser.should_keep_alive()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        waiter.set_result(Response(self._parser.get_status_code(), self._headers, body))
        self._headers = []  # the response owns its list; nothing more is added to it

    def _read_timed_out(self, seconds: float) -> None:
        self._fail(ReadTimeoutError(f"no complete response from {self._where} within {seconds}s"))

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()
