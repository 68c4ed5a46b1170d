"""A small HTTP/1.1 server on asyncio protocols and httptools.

The control plane serves its API with it: thousands of lease renewals a
second must cost tens of microseconds each, which a per-request framework
cannot do (DESIGN.md measured ASGI servers at a sixth of this design's
rate). Handlers receive a whole ``Request``; bodies are buffered, up to
``ServerLimits.max_body_bytes``.

A handler returns a ``Response``, or an awaitable of one when it has to
wait (a long poll). A response returned at once is written at once: no task
is created for it, which is most of what a renewal would otherwise cost.
Per connection, requests are answered one at a time and in order, so
pipelined requests work. No client makes the server hold unbounded memory:
while a client is not reading its answers, the server stops writing them and
stops reading its requests; and a client that pipelines more than 64
requests has its connection closed (answers must go in order, so closing is
the only clean refusal; httptools parses a whole read at once, so stopping
the reads alone would come too late).

The server refuses what it cannot handle safely and closes the connection
after answering: a malformed request (400), a body over the limit (413),
headers over the limit (431); these answers, and the 500 of a handler that
raised, are problem details (``meshkit.http.Problem``). A client that takes longer than
``request_timeout`` to send a request, or leaves a connection idle for
``idle_timeout``, is disconnected, so slow clients cannot hold connections
forever. Each connection has one ``LazyDeadline`` for this: its timer is
moved only when a deadline comes earlier, so a request that arrives whole
in one read, the usual case, touches no timer at all; moving timers on
every request would cost more than parsing it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast

import httptools
import msgspec

from meshkit.http._listener import Listener
from meshkit.http._problem import Problem, problem_response
from meshkit.http._response import Response, first_header
from meshkit.http._timer import LazyDeadline
from meshkit.policy import _check as check

__all__ = ["HTTPServer", "Request", "ServerLimits", "json_response"]

_REASONS = {
    200: b"OK",
    201: b"Created",
    204: b"No Content",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    410: b"Gone",
    413: b"Content Too Large",
    415: b"Unsupported Media Type",
    422: b"Unprocessable Content",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class ServerLimits(msgspec.Struct, frozen=True, kw_only=True):
    """What a client may send, and how long it may take.

    Defaults follow common servers: 64 KiB of headers (nginx allows 32 KiB
    in large buffers, Node 16 KiB), a 1 MiB body, 10 s from the first byte
    of a request to its last, 60 s idle before a kept-alive connection is
    closed.
    """

    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 1024 * 1024
    request_timeout: float = 10.0
    idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        check.whole("max_header_bytes", self.max_header_bytes, minimum=1024)
        check.whole("max_body_bytes", self.max_body_bytes, minimum=0)
        check.seconds("request_timeout", self.request_timeout)
        check.seconds("idle_timeout", self.idle_timeout)


class Request:
    """One request: method, path and raw query, lower-cased headers, the whole body."""

    __slots__ = ("body", "headers", "method", "path", "peer", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        peer: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), decoded as Latin-1."""
        return first_header(self.headers, name)

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path}>"


Handler = Callable[[Request], Response | Awaitable[Response]]

_JSON = [(b"content-type", b"application/json")]
_MAX_QUEUED = 64  # pipelined requests held per connection before it is closed
# RFC 9110, 8.6: these responses carry no Content-Length.
_NO_LENGTH = frozenset({204, 304})


def json_response(status: int, data: object) -> Response:
    """A response with ``data`` encoded as JSON."""
    return Response(status, _JSON, msgspec.json.encode(data))


def _error(status: int, message: str) -> Response:
    return problem_response(Problem(status, message))


class _HTTPConnection(asyncio.Protocol):
    """The server side of one connection."""

    def __init__(self, server: HTTPServer) -> None:
        self._server = server
        self._limits = server.limits
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = "?"
        self._ready: deque[tuple[Request, bool]] = deque()  # with its keep-alive
        self._worker: asyncio.Task[None] | None = None  # answering a request that waits
        self._closing = False
        self._write_paused = False  # the client is not reading our answers
        self._read_paused = False
        self._overflow = False  # the client pipelined more than we hold
        self._in_message = False
        # When this connection is closed unless it moves on.
        self._deadline = LazyDeadline(self._loop, self.close)
        self._reset_message()

    def _reset_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._header_size = 0
        self._body_size = 0
        self._refusal: Response | None = None

    # -- asyncio protocol -------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._server.connections.add(self)
        self._deadline.move(self._loop.time() + self._limits.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(_error(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as error:
            if self._overflow:
                self.close()  # an answer now would come out of order: just close
                return
            refusal = self._refusal or _error(400, f"malformed request: {error}")
            self._refuse(refusal)
        else:
            if self._in_message:  # part of a request: the rest must follow in time
                limit = self._loop.time() + self._limits.request_timeout
                self._deadline.move(min(self._deadline.at, limit))

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 (asyncio's signature)
        self._closing = True
        self._deadline.cancel()
        self._server.connections.discard(self)
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()

    # -- httptools callbacks ----------------------------------------------

    def on_message_begin(self) -> None:
        self._reset_message()
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self._headers.append((name.lower(), value))

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body_bytes:
            self._refusal = _error(413, f"body over {self._limits.max_body_bytes} bytes")
            raise ValueError("body too large")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._in_message = False
        self._deadline.at = math.inf  # being answered: a long poll may take minutes
        url = httptools.parse_url(self._url)
        path = url.path.decode("latin-1") if url.path else "/"
        query = url.query.decode("latin-1") if url.query else ""
        method = self._parser.get_method().decode("latin-1")
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(method, path, query, self._headers, body, self._peer)
        if len(self._ready) >= _MAX_QUEUED:
            self._overflow = True
            raise ValueError("too many pipelined requests")  # data_received closes
        self._ready.append((request, self._parser.should_keep_alive()))
        self._dispatch()

    # -- flow control ---------------------------------------------------------

    def pause_writing(self) -> None:
        # The client is not reading: answer no more, and read no more, until it does.
        self._write_paused = True
        if self._transport is not None and not self._read_paused and not self._closing:
            self._transport.pause_reading()
            self._read_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and self._read_paused and not self._closing:
            self._transport.resume_reading()
            self._read_paused = False
        self._dispatch()

    # -- answering ----------------------------------------------------------

    def _dispatch(self) -> None:
        """Answer queued requests in order; at once while handlers answer at once."""
        while self._ready and self._worker is None and not self._closing and not self._write_paused:
            request, keep_alive = self._ready.popleft()
            self._server.request_started()
            try:
                result = self._server.handler(request)
            except Exception as error:  # noqa: BLE001 (a handler bug answers 500, not a dead server)
                result = self._internal_error(request, error)
            if isinstance(result, Response):
                self._server.request_finished()
                self._respond(request, result, keep_alive=keep_alive)
            else:
                worker = self._loop.create_task(
                    self._finish(request, result, keep_alive=keep_alive)
                )
                # Counted done however the task ends, even cancelled before it
                # started (then the handler's coroutine is closed, not leaked).
                worker.add_done_callback(functools.partial(self._worker_done, result))
                self._worker = worker
                return
        if not self._ready and self._worker is None and not self._closing:
            self._deadline.move(self._loop.time() + self._limits.idle_timeout)

    def _worker_done(self, pending: Awaitable[Response], task: asyncio.Task[None]) -> None:
        self._server.request_finished()
        if task.cancelled() and inspect.iscoroutine(pending):
            pending.close()

    async def _finish(
        self, request: Request, pending: Awaitable[Response], *, keep_alive: bool
    ) -> None:
        try:
            response = await pending
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 (a handler bug answers 500, not a dead server)
            response = self._internal_error(request, error)
        self._worker = None
        self._respond(request, response, keep_alive=keep_alive)
        self._dispatch()

    def _internal_error(self, request: Request, error: Exception) -> Response:
        self._server.report_error(request, error)
        return _error(500, "internal error")

    def _respond(self, request: Request, response: Response, *, keep_alive: bool) -> None:
        last = not keep_alive or (self._server.draining and not self._ready)
        self._write(response, close=last, head=request.method == "HEAD")
        if last:
            self.close()

    def _write(self, response: Response, *, close: bool, head: bool = False) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        reason = _REASONS.get(response.status, b"")
        parts = [b"HTTP/1.1 %d %s\r\n" % (response.status, reason)]
        for name, value in response.headers:
            parts.append(b"%s: %s\r\n" % (name, value))
        if response.status not in _NO_LENGTH:
            parts.append(b"content-length: %d\r\n" % len(response.body))
        if close:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head:  # a HEAD answer has the length of the body it leaves out
            parts.append(response.body)
        self._transport.write(b"".join(parts))

    def _refuse(self, response: Response) -> None:
        self._write(response, close=True)
        self.close()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def close_if_idle(self) -> None:
        """For a draining server: close now unless a request is being answered."""
        if self._worker is None or self._worker.done():
            self.close()

    # -- limits -------------------------------------------------------------

    def _count(self, size: int) -> None:
        self._header_size += size
        if self._header_size > self._limits.max_header_bytes:
            self._refusal = _error(431, f"request head over {self._limits.max_header_bytes} bytes")
            raise ValueError("head too large")


class HTTPServer(Listener[_HTTPConnection]):
    """Serves ``handler`` on one address. Use ``start()`` and ``aclose()``."""

    def __init__(self, handler: Handler, *, limits: ServerLimits | None = None) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.errors: list[tuple[Request, Exception]] = []
        super().__init__()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0 for a free port); returns the address bound."""
        return await self._listen(lambda: _HTTPConnection(self), host, port)

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop accepting, let requests in flight finish for up to ``grace`` s, then close."""
        await self._drain(grace)

    def request_finished(self) -> None:
        self._request_done()

    def report_error(self, request: Request, error: Exception) -> None:
        """A handler raised: kept for tests and logs; the client got a 500."""
        self.errors.append((request, error))
        del self.errors[:-100]
