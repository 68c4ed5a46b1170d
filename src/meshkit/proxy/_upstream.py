"""One pooled connection to an upstream, driven by callbacks both ways.

The engine does not await anything on the path of an ordinary request: the
client's parser callbacks start the exchange, and this connection's parser
callbacks carry the answer back through a ``Sink`` (the request's stream)
as bytes arrive. Measured on the 2-core benchmark machine, a task and two
future wake-ups per request cost more than all of the HTTP work of a
minimal proxy; Envoy and nginx drive their streams the same way.

``start()`` writes the request head (and any body already here);
``send()`` writes body bytes the client sends later; ``request_sent()``
says the request is complete, which starts the read timeout. The sink
hears ``upstream_head``, ``upstream_body`` (any number), then
``upstream_done`` with whether the connection may carry another request,
or ``upstream_failed`` with the error. ``upstream_flush`` ends each read,
so the sink can write what one read produced in one write.

The read timeout bounds the wait for the response head once the request is
sent, and every silence while the response arrives. One lazy timer per
connection enforces it (``data_received`` moves a deadline; the timer,
when it fires, re-arms itself if the deadline moved). While the client is
too slow to take the response, reading pauses and the timeout with it.
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol, cast

import httptools

from meshkit.errors import (
    MeshkitError,
    PeerClosedError,
    ProtocolViolationError,
    ReadTimeoutError,
    ResponseTooLargeError,
)
from meshkit.http._config import Limits
from meshkit.http._cork import cork_for
from meshkit.http._timer import LazyDeadline

__all__ = ["Sink", "UpstreamConnection"]

Headers = list[tuple[bytes, bytes]]


class Sink(Protocol):
    """Where an upstream connection delivers the response to one request."""

    def upstream_head(self, status: int, headers: Headers, length: int | None) -> None: ...

    def upstream_body(self, data: bytes) -> None: ...

    def upstream_flush(self) -> None: ...

    def upstream_done(self, connection: UpstreamConnection, *, reusable: bool) -> None: ...

    def upstream_failed(
        self, connection: UpstreamConnection, error: MeshkitError, *, answered: bool
    ) -> None: ...

    def upstream_write_paused(self, *, paused: bool) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """A keep-alive HTTP/1.1 connection to one upstream origin."""

    __slots__ = (
        "_completed",
        "_cork",
        "_deadline",
        "_framed",
        "_head_request",
        "_header_size",
        "_headers",
        "_in_body",
        "_interim",
        "_junk",
        "_keep",
        "_limits",
        "_parser",
        "_read_timeout",
        "_reading",
        "_responded",
        "_sent",
        "_sink",
        "_transport",
        "closed",
        "idle_since",
        "loop",
        "origin",
    )

    def __init__(self, origin: tuple[str, int], limits: Limits) -> None:
        self.origin = origin
        self._limits = limits
        self.loop = asyncio.get_running_loop()
        self._cork = cork_for(self.loop)
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._sink: Sink | None = None
        self._headers: Headers = []
        self._header_size = 0
        self._framed = False
        self._interim = False
        self._in_body = False
        self._completed = False  # the response ended in this read; handed over after it
        self._keep = False
        self._junk = False  # bytes came after the response: the connection is out of step
        self._responded = False  # some byte of the response has arrived
        self._head_request = False
        self._sent = False  # the whole request is written
        self._reading = True
        self._read_timeout = 30.0
        self._deadline = LazyDeadline(self.loop, self._deadline_reached)  # for the answer
        self.closed = False
        self.idle_since = 0.0  # when the pool last took it back (loop time)

    @property
    def reusable(self) -> bool:
        return not self.closed and self._sink is None

    # -- driven by the request's stream ----------------------------------------

    def start(self, sink: Sink, data: bytes, *, head_request: bool, read_timeout: float) -> None:
        """Begin an exchange: write ``data`` (the head, and any body already here)."""
        self._sink = sink
        self._head_request = head_request
        self._read_timeout = read_timeout
        self._sent = False
        self._responded = False
        self._completed = self._junk = False
        self._start_message()
        if self._transport is None or self._transport.is_closing():
            self._fail(PeerClosedError(f"{self._where} closed the connection"))
            return
        self._cork.write(self._transport, data)

    def send(self, data: bytes) -> None:
        """Write more of the request body (already framed)."""
        if self._transport is not None and not self.closed:
            self._cork.write(self._transport, data)

    def request_sent(self) -> None:
        """The request is written whole: the wait for the answer is timed from now."""
        self._sent = True
        self._move_deadline()

    def pause_reading(self) -> None:
        # The client reads slower than the upstream sends: not the upstream's
        # fault, so its read timeout stops until reading starts again.
        self._reading = False
        self._deadline.at = math.inf
        if self._transport is not None and not self.closed:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            if self._transport is not None and not self.closed:
                self._transport.resume_reading()
            self._move_deadline()

    def abort(self) -> None:
        """The client went away: forget the exchange and close."""
        self._sink = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._deadline.cancel()
            if self._transport is not None:
                self._cork.flush(self._transport)
                self._transport.close()

    # -- asyncio protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        sink = self._sink
        if sink is None:
            self.close()  # an upstream talking unprompted is out of step
            return
        self._responded = True
        if self._reading and (self._deadline.at != math.inf or self._sent):
            self._deadline.at = self.loop.time() + self._read_timeout
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            cause = error.__context__
            if self._completed:
                self._junk = True  # the answer was whole; what followed it was not
            elif isinstance(cause, ResponseTooLargeError | ProtocolViolationError):
                self._fail(cause)
            else:
                self._fail(
                    ProtocolViolationError(f"malformed response from {self._where}: {error}")
                )
        if self._completed:
            # Handed over only now that the parser is done with this read: the
            # connection may carry the next request at once, and nothing of
            # this read may reach that request's stream.
            self._hand_over()
        else:
            sink.upstream_flush()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._deadline.cancel()
        sink = self._sink
        if sink is None:
            return
        if self._in_body and not self._framed:
            self._complete()  # the body ran to the close, as RFC 9112 allows
            self._hand_over()
        else:
            reason = f": {exc}" if exc else ""
            self._fail(PeerClosedError(f"{self._where} closed the connection{reason}"))
            sink.upstream_flush()

    def pause_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_write_paused(paused=True)

    def resume_writing(self) -> None:
        if self._sink is not None:
            self._sink.upstream_write_paused(paused=False)

    # -- httptools callbacks ----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._sink is None or self._completed:
            raise ProtocolViolationError(f"{self._where} sent more than one response")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_size += len(name) + len(value) + 4
        if self._header_size > self._limits.max_header_bytes:
            raise ResponseTooLargeError(
                f"{self._where} sent more than {self._limits.max_header_bytes} bytes of headers"
            )
        name = name.lower()
        if name == b"content-length" or name == b"transfer-encoding":
            self._framed = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            self._interim = True  # 103 Early Hints and the like: read past to the answer
            return
        no_body = self._head_request or status in (204, 304)
        length = None
        if no_body:
            self._framed = True
            length = 0
        else:
            for name, value in self._headers:
                if name == b"content-length":
                    length = int(value)  # llhttp has checked it is one valid number
        sink = self._sink
        if sink is None:
            raise ProtocolViolationError(f"{self._where} answered a request it was not sent")
        headers, self._headers = self._headers, []
        self._in_body = True
        sink.upstream_head(status, headers, length)
        if no_body:
            # httptools cannot be told a HEAD response has no body: end it
            # here (the next response gets a fresh parser, in _hand_over).
            self._complete()

    def on_body(self, data: bytes) -> None:
        if self._completed:
            self._junk = True  # a "body" after a HEAD answer, or after the answer ended
        elif self._sink is not None:
            self._sink.upstream_body(data)

    def on_message_complete(self) -> None:
        if self._interim:
            self._start_message()
        elif self._in_body:
            self._complete()

    # -- internals --------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"upstream {self.origin[0]}:{self.origin[1]}"

    def _start_message(self) -> None:
        self._headers = []
        self._header_size = 0
        self._framed = False
        self._interim = False
        self._in_body = False

    def _complete(self) -> None:
        """The response ended: noted here, handed over once the read is parsed."""
        self._in_body = False
        self._completed = True
        self._keep = self._framed and self._sent and self._parser.should_keep_alive()
        self._deadline.at = math.inf

    def _hand_over(self) -> None:
        self._completed = False
        keep = self._keep and not self._junk
        if self._head_request:
            self._parser = httptools.HttpResponseParser(self)
        sink, self._sink = self._sink, None
        if not self._reading:
            self.resume_reading()
        if not keep:
            self.close()
        if sink is not None:
            sink.upstream_done(self, reusable=keep and not self.closed)

    def _fail(self, error: MeshkitError) -> None:
        sink, self._sink = self._sink, None
        answered = self._responded
        self.close()
        if sink is not None:
            sink.upstream_failed(self, error, answered=answered)

    def _move_deadline(self) -> None:
        if self._sink is not None and self._reading:
            self._deadline.move(self.loop.time() + self._read_timeout)

    def _deadline_reached(self) -> None:
        if self._sink is not None:
            self._fail(ReadTimeoutError(f"{self._where} sent nothing for {self._read_timeout:g}s"))
