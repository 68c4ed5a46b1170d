"""One request's way through the proxy: filters, upstream, and the answer back.

A ``Stream`` is created when a request's head has been parsed. It runs the
request filters, takes a pooled connection to the chosen upstream (opening
one in a task only when none is idle), writes the request, and relays the
response as the upstream connection's callbacks deliver it. It is the
``Sink`` of its upstream connection. Everything on the usual path happens
inside the two connections' ``data_received`` calls: no task, no future.

Bodies are relayed as they arrive, both ways, re-framed (a body of unknown
length goes out chunked to HTTP/1.1 clients, and to HTTP/1.0 clients
delimited by the close). Back-pressure crosses over: when the upstream
cannot take the request body fast enough the client's connection stops
reading, and when the client cannot take the response the upstream's
does. A request body that is complete before the upstream is chosen (most
are) goes out with a ``Content-Length`` in the same write as the head, and
is kept so that a kept-alive connection found closed can be retried once.

The answer is decided in one place per outcome:

- a filter answers: its response;
- a filter or the proxy fails: ``ProxyServer.answer_error`` (4xx for the
  client's faults, 502/503/504 for the upstream's, 500 otherwise);
- the upstream fails before its answer began: the same mapping, after one
  retry on a fresh connection when a reused one was found closed, the
  method is idempotent and the body can be sent again;
- the upstream fails after its answer began: the client's connection is
  aborted, which is the only way left to tell it the answer is incomplete.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from meshkit.errors import (
    DeadlineExceededError,
    MeshkitError,
    PeerClosedError,
    RequestRefusedError,
    UsageError,
)
from meshkit.http import IDEMPOTENT_METHODS, RETRYABLE_STATUSES
from meshkit.proxy._headers import response_headers
from meshkit.proxy._message import ProxyRequest, ProxyResponse, reason
from meshkit.proxy._upstream import Headers, UpstreamConnection

if TYPE_CHECKING:
    from meshkit.proxy._downstream import ClientConnection
    from meshkit.proxy._server import ProxyServer

__all__ = ["HIGH_WATER", "Stream"]

# Request body bytes held before the upstream is ready, past which the
# client's connection stops reading: four socket reads' worth.
HIGH_WATER = 256 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BODYLESS = frozenset({204, 304})
_LAST_CHUNK = b"0\r\n\r\n"


class Stream:
    """The state of one request, from its parsed head to the last byte of its answer."""

    __slots__ = (
        "_chain",
        "_chunked_in",
        "_chunked_out",
        "_client",
        "_close",
        "_deadline_timer",
        "_failed_early",
        "_out",
        "_retry_timer",
        "_reused",
        "_server",
        "_started",
        "_streaming",
        "_task",
        "body",
        "complete",
        "continue_wanted",
        "error",
        "finished",
        "length",
        "received",
        "request",
        "response",
        "sent",
        "upstream",
    )

    def __init__(
        self,
        client: ClientConnection,
        server: ProxyServer,
        request: ProxyRequest,
        *,
        length: int | None,
        continue_wanted: bool,
    ) -> None:
        self._client = client
        self._server = server
        self._chain = server.chain  # a reload meanwhile does not mix two configurations
        self.request = request
        self.length = length  # the request body's Content-Length; None when chunked
        self.continue_wanted = continue_wanted  # the client waits for 100 Continue
        self.body: list[bytes] = []  # request body held until the upstream is ready
        self.received = 0
        self.complete = length == 0
        self.response: ProxyResponse | None = None
        self.upstream: UpstreamConnection | None = None
        self.sent = 0
        self.error: BaseException | None = None
        self.finished = False
        self._reused = False
        self._streaming = False  # the body goes upstream as it arrives (not replayable)
        self._chunked_in = length is None
        self._chunked_out = False
        self._close = False
        self._out: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._started = False
        self._failed_early: RequestRefusedError | None = None  # body failed while queued

    # -- the request phase -----------------------------------------------------

    def start(self) -> None:
        self._started = True
        if self._failed_early is not None:
            # Its body failed while requests before it were being answered;
            # its answer had to wait its turn.
            self._close = True
            self.respond(self._server.answer_error(self.request, self._failed_early))
            return
        self._run_filters(0)

    def _run_filters(self, index: int) -> None:
        filters = self._chain.filters
        request = self.request
        try:
            while index < len(filters):
                decision = filters[index].on_request(request)
                index += 1
                if decision is None:
                    continue
                if isinstance(decision, ProxyResponse):
                    self.respond(decision)
                else:
                    self._task = self._client.loop.create_task(self._await_filter(decision, index))
                return
        except Exception as error:  # noqa: BLE001 (a failing filter is an answer, not a crash)
            self.fail_before_answer(error)
            return
        self._forward()

    async def _await_filter(self, pending: Awaitable[ProxyResponse | None], index: int) -> None:
        try:
            decision = await pending
        except Exception as error:  # noqa: BLE001 (as above)
            self._task = None
            self.fail_before_answer(error)
            return
        self._task = None
        if self.finished:
            return
        if decision is not None:
            self.respond(decision)
        else:
            self._run_filters(index)

    def _forward(self) -> None:
        request = self.request
        origin = request.upstream
        if origin is None:
            self.fail_before_answer(UsageError("no filter chose an upstream for this request"))
            return
        if request.trace is not None:
            request.trace.attempt_started(request)
        loop = self._client.loop
        if request.deadline is not None and self._deadline_timer is None:
            self._deadline_timer = loop.call_at(request.deadline, self._deadline_passed)
        connection = self._server.forwarder.pool.take_idle(origin)
        if connection is not None:
            self._attach(connection, reused=True)
        else:
            self._task = loop.create_task(self._connect(origin, fresh=False))

    async def _connect(self, origin: tuple[str, int], *, fresh: bool) -> None:
        forwarder = self._server.forwarder
        connect = forwarder.timeouts.connect
        if self.request.deadline is not None:
            connect = min(connect, self.request.deadline - self._client.loop.time())
        try:
            if connect <= 0:
                raise DeadlineExceededError("the request's time ran out before it was sent")
            connection, reused = await forwarder.pool.acquire(origin, connect, fresh=fresh)
        except MeshkitError as error:
            self._task = None
            if self.request.trace is not None:
                self.request.trace.attempt_ended(error)
            if not self._try_again(error):
                self.fail_before_answer(error)
            return
        self._task = None
        if self.finished:
            forwarder.done(connection, reusable=True)
        else:
            self._attach(connection, reused=reused)

    def _attach(self, connection: UpstreamConnection, *, reused: bool) -> None:
        self.upstream = connection
        self._reused = reused
        forwarder = self._server.forwarder
        request = self.request
        head = forwarder.head(request)
        read = forwarder.timeouts.read
        if request.deadline is not None:
            read = max(0.001, min(read, request.deadline - self._client.loop.time()))
        head_request = request.method == "HEAD"
        if self._client.write_paused:
            connection.pause_reading()  # the client has not taken the last answer yet
        if self.complete:
            data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
            self.body = [data] if data else []  # kept for a retry
            message = b"%scontent-length: %d\r\n\r\n%s" % (head, len(data), data)
            connection.start(self, message, head_request=head_request, read_timeout=read)
            connection.request_sent()
            self._client.resume_reading()  # if a large body paused it while we waited
            return
        self._streaming = True
        if self._chunked_in:
            parts = [head, b"transfer-encoding: chunked\r\n\r\n"]
            parts.extend(_chunk(data) for data in self.body)
        else:
            parts = [head, b"content-length: %d\r\n\r\n" % (self.length or 0), *self.body]
        self.body = []
        connection.start(self, b"".join(parts), head_request=head_request, read_timeout=read)
        if self.continue_wanted and self.received == 0:
            self._client.write(_CONTINUE)
        self.continue_wanted = False
        self._client.resume_reading()

    # -- the request body, as the client sends it --------------------------------

    def body_data(self, data: bytes) -> None:
        self.received += len(data)
        if self._streaming:
            if self.upstream is not None:
                self.upstream.send(_chunk(data) if self._chunked_in else data)
            return
        self.body.append(data)
        if self.received > HIGH_WATER:
            # Not forwarded yet (filters still deciding, or connecting): stop
            # reading; from here on the body cannot be kept for a retry either.
            self._client.pause_reading()

    def body_end(self) -> None:
        self.complete = True
        if self._streaming and self.upstream is not None:
            if self._chunked_in:
                self.upstream.send(_LAST_CHUNK)
            self.upstream.request_sent()

    def body_failed(self, error: RequestRefusedError) -> None:
        """The request body cannot be completed (too large, malformed, too slow)."""
        if self.finished:
            return
        if not self._started:
            self._failed_early = error  # answered in order, when its turn comes
            return
        self._drop_upstream()
        if self.response is None:
            self._close = True
            self.respond(self._server.answer_error(self.request, error))
        else:
            self._client.abort()
            self.finish(error)

    # -- the response, as the upstream sends it (the Sink) -------------------------

    def upstream_head(self, status: int, headers: Headers, length: int | None) -> None:
        request = self.request
        if request.trace is not None:
            request.trace.attempt_answered(status)
        if status in RETRYABLE_STATUSES and self._try_again(status):
            return
        response = ProxyResponse(
            status, response_headers(headers, self._server.forwarder.forwarding), upstream=True
        )
        self.response = response
        request.status = status
        try:
            for layer in self._chain.responders:
                layer.on_response(request, response)
        except Exception as error:  # noqa: BLE001 (a failing filter is a 500, not a crash)
            self._drop_upstream()
            self.response = None
            self.fail_before_answer(error)
            return
        status = response.status
        bodyless = request.method == "HEAD" or status in _BODYLESS
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
        for name, value in response.headers:
            if (name == b"content-length" and not bodyless) or name == b"x-request-id":
                continue  # framed below (a HEAD answer keeps the upstream's); ours below
            lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"x-request-id: %s\r\n" % request.request_id.encode("ascii"))
        if not bodyless:
            if length is not None:
                lines.append(b"content-length: %d\r\n" % length)
            elif request.version == "1.1":
                lines.append(b"transfer-encoding: chunked\r\n")
                self._chunked_out = True
            else:
                self._close = True  # an HTTP/1.0 client learns the end from the close
        lines.append(self._connection_header())
        self._out.append(b"".join(lines))

    def upstream_body(self, data: bytes) -> None:
        self.sent += len(data)
        self._out.append(_chunk(data) if self._chunked_out else data)

    def upstream_flush(self) -> None:
        if self._out and not self.finished:
            self._client.write(b"".join(self._out))
            self._out.clear()

    def upstream_done(self, connection: UpstreamConnection, *, reusable: bool) -> None:
        self._server.forwarder.done(connection, reusable=reusable)
        self.upstream = None
        if self.request.trace is not None:
            self.request.trace.attempt_ended(None)
        if self._chunked_out:
            self._out.append(_LAST_CHUNK)
        self.upstream_flush()
        self.finish(None)

    def upstream_failed(
        self, connection: UpstreamConnection, error: MeshkitError, *, answered: bool
    ) -> None:
        self._server.forwarder.done(connection, reusable=False)
        self.upstream = None
        if self.finished:
            return
        trace = self.request.trace
        if trace is not None:
            trace.attempt_ended(error)
        if self.response is not None:
            self.upstream_flush()
            self._client.abort()
            self.finish(error)
            return
        request = self.request
        if (
            isinstance(error, PeerClosedError)
            and self._reused
            and not answered
            and not self._streaming
            and self.complete
            and request.method in IDEMPOTENT_METHODS
            and request.upstream is not None
        ):
            # A kept-alive connection the upstream closed as we reused it.
            self._reused = False
            if trace is not None:
                trace.attempt_started(request)
            self._task = self._client.loop.create_task(self._connect(request.upstream, fresh=True))
            return
        if not self._try_again(error):
            self.fail_before_answer(error)

    def upstream_write_paused(self, *, paused: bool) -> None:
        if paused:
            self._client.pause_reading()
        else:
            self._client.resume_reading()

    # -- the client's side of flow control ----------------------------------------

    def client_write_paused(self, *, paused: bool) -> None:
        if self.upstream is not None:
            if paused:
                self.upstream.pause_reading()
            else:
                self.upstream.resume_reading()

    def _try_again(self, failure: BaseException | int) -> bool:
        """Send the request again if the retrier says so and the body allows it."""
        retrier = self._server.retrier
        if retrier is None or self.finished or self._streaming or not self.complete:
            return False
        loop = self._client.loop
        deadline = self.request.deadline
        left = None if deadline is None else deadline - loop.time()
        try:
            delay = retrier.retry(self.request, failure, left)
        except Exception as error:  # noqa: BLE001 (a retrier's bug leaves the failure standing)
            self._server.report_error(self.request.request_id, error)
            return False
        if delay is None:
            return False
        if self.request.trace is not None:
            self.request.trace.attempt_ended(None if isinstance(failure, int) else failure)
        self._drop_upstream()
        self._reused = False
        self._retry_timer = loop.call_later(delay, self._forward)
        return True

    def client_lost(self) -> None:
        """The client closed its connection: stop everything this request started."""
        if self.finished:
            return
        self._drop_upstream()
        self.finish(PeerClosedError("the client closed the connection"))

    # -- answering ------------------------------------------------------------------

    def fail_before_answer(self, error: BaseException) -> None:
        if self.finished:
            return
        self.error = error
        answer = self._server.answer_error(self.request, error)
        self.respond(answer)

    def respond(self, response: ProxyResponse) -> None:
        """Answer with a response the proxy made (bytes body), then finish."""
        if self.finished:
            return
        request = self.request
        self.response = response
        request.status = response.status
        for layer in self._chain.responders:
            try:
                layer.on_response(request, response)
            except Exception as error:  # noqa: BLE001 (one bad filter must not stop the answer)
                self._server.report_error(request.request_id, error)
        body = response.body
        status = response.status
        if not self.complete:
            self._close = True  # the rest of the request body would be read as a request
        lines = [b"HTTP/1.1 %d %s\r\n" % (status, reason(status))]
        for name, value in response.headers:
            if name != b"content-length" and name != b"x-request-id":
                lines.append(b"%s: %s\r\n" % (name, value))
        lines.append(b"x-request-id: %s\r\n" % request.request_id.encode("ascii"))
        if status not in _BODYLESS:
            lines.append(b"content-length: %d\r\n" % len(body))
        lines.append(self._connection_header())
        if request.method != "HEAD" and status not in _BODYLESS:
            lines.append(body)
            self.sent = len(body)
        self._client.write(b"".join(lines))
        self.finish(None)

    def _connection_header(self) -> bytes:
        request = self.request
        client = self._client
        # A stopped connection parses no more requests, but those already
        # parsed are still answered, in order: the last one closes it.
        if (
            not request.keep_alive
            or self._server.draining
            or (client.stopped and not client.queued)
        ):
            self._close = True
        if self._close:
            return b"connection: close\r\n\r\n"
        if request.version == "1.0":
            return b"connection: keep-alive\r\n\r\n"
        return b"\r\n"

    def finish(self, error: BaseException | None) -> None:
        if self.finished:
            return
        self.finished = True
        if error is not None:
            self.error = error
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        if self.upstream is not None:
            self._drop_upstream()  # nothing may keep a connection this stream no longer reads
        if self._task is not None and not self._task.done():
            self._task.cancel()
        for callback in self.request.finished():
            try:
                callback()
            except Exception as failure:  # noqa: BLE001 (a filter's bug must not stop the rest)
                self._server.report_error(self.request.request_id, failure)
        self._server.request_finished(self)
        self._client.stream_finished(self, close=self._close or not self.complete)

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if self.finished:
            return
        error = DeadlineExceededError("the upstream did not answer within the request's timeout")
        self._drop_upstream()
        if self.response is None:
            self.fail_before_answer(error)
        else:
            self._client.abort()
            self.finish(error)

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.abort()
            self._server.forwarder.done(upstream, reusable=False)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            self._task = None


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)
