"""The client side of the proxy: one asyncio protocol per client connection.

httptools (llhttp) parses; this module adds what llhttp leaves to its user.
Measured against httptools 0.9: llhttp itself refuses a request with both
``Content-Length`` and ``Transfer-Encoding``, a repeated or malformed
``Content-Length``, a ``Transfer-Encoding`` that does not end in chunked,
obsolete line folding, bare LF line ends, whitespace before a header's
colon, and a malformed request line. It accepts, and this module refuses
with 400: a version other than HTTP/1.0 and 1.1 (HTTP/0.9's bare
``GET /``), an HTTP/1.1 request without exactly one ``Host`` (RFC 9112,
3.2), a target that is not a path (absolute- and authority-form belong to
forward proxies), and CONNECT. It has no limits on headers: the callbacks
count bytes and fields (431). Every refusal closes the connection, because
after a framing error nothing that follows can be trusted to be where a
request starts.

Requests are answered one at a time, in order (pipelined ones wait, up to
``max_pipelined``); each is a ``Stream``, which relays bodies both ways
with back-pressure. ``Expect: 100-continue`` is answered when the request
is forwarded, so a request a filter refuses never has its body sent at
all (nginx does the same).

Timers: one ``LazyDeadline`` per connection. Until a
request's head is complete it must arrive within ``header_timeout`` of the
read that started it; each silence while a body arrives may last
``body_timeout``; a kept-alive connection may sit idle for
``idle_timeout``. A request that arrives whole in one read moves no timer.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from meshkit.errors import RequestRefusedError
from meshkit.http._cork import cork_for
from meshkit.http._timer import LazyDeadline
from meshkit.proxy._message import ProxyRequest, error_response, reason
from meshkit.proxy._stream import Stream

if TYPE_CHECKING:
    from meshkit.proxy._server import ProxyServer

__all__ = ["ClientConnection"]


class _Refusal:
    """An answer the engine gives by itself, queued behind the requests before it."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


class _StopParsingError(Exception):
    """Raised in a parser callback to stop parsing; what to answer is already recorded."""


class ClientConnection(asyncio.Protocol):
    """Parses requests from one client and has them answered in order."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._limits = server.limits
        self.loop = asyncio.get_running_loop()
        self._cork = cork_for(self.loop)
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = "?"
        self._queue: deque[Stream | _Refusal] = deque()
        self._current: Stream | None = None  # the request being answered
        self._receiving: Stream | None = None  # the request whose body is arriving
        self.closing = False
        self.stopped = False  # no more requests are parsed on this connection
        self._read_paused = False
        self.write_paused = False
        self._in_head = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_size = 0
        self._refusal: _Refusal | None = None
        self._deadline = LazyDeadline(self.loop, self._deadline_reached)

    # -- asyncio protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self._client = str(peer[0]) if isinstance(peer, tuple) else "unix"
        self._server.connections.add(self)
        self._deadline.move(self.loop.time() + self._limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The request asked to switch protocols. The proxy does not (the
            # Upgrade header is hop-by-hop and is not forwarded): it answers
            # the request as plain HTTP and closes, since what follows on
            # this connection is not HTTP/1.1.
            self._stop()
        except httptools.HttpParserError as error:
            if not self.stopped:  # else the callback that stopped parsing dealt with it
                self._refuse(self._refusal or _Refusal(400, f"malformed request: {error}"))
        self._next()
        if not self.closing:
            self._moved_on()

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002 (asyncio's signature)
        self.closing = self.stopped = True
        self._deadline.cancel()
        self._server.connections.discard(self)
        current, self._current = self._current, None
        if current is not None:
            current.client_lost()
        self._queue.clear()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self._current is not None:
            self._current.client_write_paused(paused=True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._current is not None:
            self._current.client_write_paused(paused=False)

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = b""
        self._headers = []
        self._header_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        if self._in_head:  # not a trailer: those are dropped, as RFC 9110, 6.5.1 allows
            self._headers.append((name.lower(), value))
            if len(self._headers) > self._limits.max_headers:
                self._refusal = _Refusal(431, f"more than {self._limits.max_headers} header fields")
                raise _StopParsingError

    def on_headers_complete(self) -> None:
        self._in_head = False
        stream = self._stream()
        if len(self._queue) >= self._limits.max_pipelined:
            self.close()  # answers must go in order; closing is the only clean refusal
            raise _StopParsingError
        self._queue.append(stream)
        self._receiving = stream

    def on_body(self, data: bytes) -> None:
        stream = self._receiving
        if stream is None:
            return
        if stream.received + len(data) > self._limits.max_body_bytes:
            self._receiving = None
            self._stop()
            stream.body_failed(
                RequestRefusedError(413, f"body over {self._limits.max_body_bytes} bytes")
            )
            raise _StopParsingError
        stream.body_data(data)

    def on_message_complete(self) -> None:
        stream, self._receiving = self._receiving, None
        if stream is not None:
            stream.body_end()

    # -- reading a request head -------------------------------------------------

    def _stream(self) -> Stream:
        parser = self._parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse_now(400, f"HTTP/{version} is not supported; send HTTP/1.1")
        method = parser.get_method().decode("ascii")
        if method == "CONNECT":
            self._refuse_now(501, "CONNECT is not supported: this is a reverse proxy")
        url = self._url
        if not url.startswith(b"/") and not (url == b"*" and method == "OPTIONS"):
            self._refuse_now(400, "the request target must be a path starting with /")
        hosts = 0
        length: int | None = 0
        expect = request_id = None
        for name, value in self._headers:
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                length = int(value)  # llhttp has checked it is one valid number
            elif name == b"transfer-encoding":
                length = None  # chunked: llhttp refuses anything else, and a length beside it
            elif name == b"expect":
                expect = value.lower()
            elif name == b"x-request-id":
                request_id = value
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self._refuse_now(400, "an HTTP/1.1 request needs exactly one Host header")
        if length is not None and length > self._limits.max_body_bytes:
            self._refuse_now(413, f"body over {self._limits.max_body_bytes} bytes")
        continue_wanted = False
        if expect is not None and version == "1.1":  # 1.0 clients cannot expect (RFC 9110, 10.1.1)
            if expect != b"100-continue":
                self._refuse_now(417, "the only expectation supported is 100-continue")
            continue_wanted = length != 0
        path, _, query = url.partition(b"?")
        request = ProxyRequest(
            method=method,
            path=path.decode("latin-1"),
            query=query.decode("latin-1"),
            headers=self._headers,
            client=self._client,
            request_id=self._server.request_ids.accept(request_id),
            version=version,
            keep_alive=parser.should_keep_alive(),
            started=self.loop.time(),
        )
        return Stream(self, self._server, request, length=length, continue_wanted=continue_wanted)

    def _refuse_now(self, status: int, message: str) -> None:
        self._refusal = _Refusal(status, message)
        raise _StopParsingError

    def _count(self, size: int) -> None:
        self._header_size += size
        if self._header_size > self._limits.max_header_bytes:
            self._refusal = _Refusal(
                431, f"request line and headers over {self._limits.max_header_bytes} bytes"
            )
            raise _StopParsingError

    # -- answering in order -------------------------------------------------------

    def _next(self) -> None:
        """Start answering the next request if none is being answered."""
        while self._current is None and self._queue and not self.closing:
            item = self._queue.popleft()
            if isinstance(item, _Refusal):
                self._write_refusal(item)
                return
            self._current = item
            self._server.request_started()
            item.start()  # may finish at once (a filter's answer), and start the next

    def stream_finished(self, stream: Stream, *, close: bool) -> None:
        """Called by the stream when its answer is written (or abandoned)."""
        if self._current is stream:
            self._current = None
        if close:
            self.close()
        elif not self.closing and self._transport is not None:
            # Whatever paused reading for that request (its body waiting for an
            # upstream, the upstream's back-pressure) is over.
            self.resume_reading()
            self._next()
            self._moved_on()

    @property
    def queued(self) -> bool:
        """Requests parsed and waiting for their turn to be answered."""
        return bool(self._queue)

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closing:
            self._cork.write(self._transport, data)

    def _write_refusal(self, refusal: _Refusal) -> None:
        request_id = self._server.request_ids.next()
        response = error_response(refusal.status, refusal.message, request_id)
        lines = [b"HTTP/1.1 %d %s\r\n" % (refusal.status, reason(refusal.status))]
        lines.extend(b"%s: %s\r\n" % (name, value) for name, value in response.headers)
        lines.append(b"x-request-id: %s\r\n" % request_id.encode("ascii"))
        body = response.body
        lines.append(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        lines.append(body)
        self.write(b"".join(lines))
        self._server.refusals[refusal.status] += 1
        self.close()

    def _refuse(self, refusal: _Refusal) -> None:
        """Stop parsing; answer ``refusal`` once the requests before it are answered."""
        self._stop()
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            # The request is already on its way: its body fails, and so does it,
            # with the refusal's status if its answer has not begun.
            receiving.body_failed(RequestRefusedError(refusal.status, refusal.message))
        else:
            self._queue.append(refusal)

    def _stop(self) -> None:
        self.stopped = True
        self.pause_reading()

    # -- closing --------------------------------------------------------------------

    def close(self) -> None:
        self.closing = self.stopped = True
        if self._transport is not None:
            self._cork.flush(self._transport)
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once: an answer already begun cannot be finished."""
        self.closing = self.stopped = True
        if self._transport is not None:
            self._cork.discard(self._transport)
            self._transport.abort()

    def close_if_idle(self) -> None:
        """For a draining server: close now unless a request is being answered."""
        if self._current is None and not self._queue:
            self.close()

    # -- flow control and timers ------------------------------------------------

    def pause_reading(self) -> None:
        if self._transport is not None and not self._read_paused and not self.closing:
            self._read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and self._read_paused and not self.stopped:
            self._read_paused = False
            self._transport.resume_reading()
            self._moved_on()

    def _moved_on(self) -> None:
        """Set the deadline for what the connection is waiting for now."""
        now = self.loop.time()
        deadline = self._deadline
        if self._in_head:
            deadline.move(min(deadline.at, now + self._limits.header_timeout))
        elif self._receiving is not None and not self._read_paused:
            deadline.move(now + self._limits.body_timeout)
        elif self._current is None and not self._queue:
            deadline.move(now + self._limits.idle_timeout)
        else:
            deadline.at = math.inf

    def _deadline_reached(self) -> None:
        """The connection waited too long for what it was waiting for: close it."""
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.body_failed(RequestRefusedError(408, "the request body stopped arriving"))
        self.close()
