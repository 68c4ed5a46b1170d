"""Trace context through the proxy, and its spans: the gateway's and the sidecar's.

``Tracing`` is a filter: it reads the request's W3C ``traceparent`` and
``tracestate`` (``meshkit.observe``'s rules: an invalid context restarts
the trace, a broken ``tracestate`` is dropped), decides sampling
(parent-based: an incoming context's flag is obeyed; a new trace is
sampled at the recorder's ratio) and hangs a ``RequestTrace`` on the
request. The engine then asks it for the ``traceparent`` each attempt
sends upstream (the forwarder drops the incoming one) and tells it when
an attempt and the request end.

What is recorded depends on the proxy's place:

- ``server=True``: a SERVER span for the request, from the filter to the
  last byte of the answer (the gateway; the sidecar's inbound port);
- ``client=True``: a CLIENT span per upstream attempt, retries included,
  each the parent named in that attempt's ``traceparent`` (the gateway;
  the sidecar's outbound port). Without it, the upstream's parent is the
  server span (the sidecar's app is not a separate hop).

An unsampled request records nothing and hangs no ``RequestTrace``: it
costs the header's parse, two random ids for a new trace, and the header
lines written upstream (``ProxyRequest.trace_line``).
Attributes follow OpenTelemetry's HTTP semantic conventions.
"""

from __future__ import annotations

from meshkit._clock import Clock
from meshkit.observe import (
    CLIENT,
    SERVER,
    Recorder,
    SpanRecord,
    parse_traceparents,
    parse_tracestate,
)
from meshkit.proxy._chain import RequestOnly
from meshkit.proxy._message import ProxyRequest

__all__ = ["TRACE_HEADERS", "RecordedTrace", "RequestTrace", "Tracing"]

# Replaced by what RequestTrace writes, on every attempt.
TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})


class Tracing(RequestOnly):
    """The filter that gives each request its ``RequestTrace``."""

    def __init__(self, recorder: Recorder, clock: Clock, *, server: bool, client: bool) -> None:
        self.recorder = recorder
        self.clock = clock
        self.server = server
        self.client = client

    def on_request(self, request: ProxyRequest) -> None:
        # Most requests carry no context: a plain scan finds that out cheaper
        # than building the list of traceparent values (a comprehension is a
        # function call of its own).
        for name, _ in request.headers:
            if name == b"traceparent":
                break
        else:
            trace_id, span_id, sampled = self.recorder.new_trace()
            if sampled:
                request.trace = RecordedTrace(self, request, trace_id, span_id, b"", None)
            else:
                request.trace_line = _UNSAMPLED % (trace_id, span_id)  # no call: the common case
            return
        parents = [value for name, value in request.headers if name == b"traceparent"]
        context = parse_traceparents(parents)
        recorder = self.recorder
        if context is None:
            trace_id, span_id, sampled = recorder.new_trace()
            parent_id, state = b"", None
        else:
            trace_id, parent_id, sampled = context
            states = [value for name, value in request.headers if name == b"tracestate"]
            state = parse_tracestate(states) if states else None
            span_id = recorder.new_span_id() if self.server or not sampled else parent_id
        if sampled:
            request.trace = RecordedTrace(self, request, trace_id, span_id, parent_id, state)
        else:
            # Only the header lines: the engine's hooks and an object per
            # request were a third of what an unsampled request cost.
            request.trace_line = _unsampled_line(trace_id, span_id, state)


_UNSAMPLED = b"traceparent: 00-%s-%s-00\r\n"


def _unsampled_line(trace_id: bytes, span_id: bytes, state: bytes | None) -> bytes:
    """``traceparent`` (sampled flag off) and any ``tracestate``, as header lines."""
    line = _UNSAMPLED % (trace_id, span_id)
    return line if state is None else line + b"tracestate: %s\r\n" % state


class RequestTrace:
    """One request's trace context; the engine calls it. This one records nothing.

    ``span_id`` is the id the upstream is told its parent is, when no
    attempt span names itself (a sampled request's server span; for an
    unsampled one, a fresh id: its trace goes on, unrecorded).
    """

    __slots__ = ("span_id", "state", "trace_id")

    sampled = False

    def __init__(self, trace_id: bytes, span_id: bytes, state: bytes | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.state = state

    def headers(self) -> bytes:
        """The trace header lines for the attempt being sent (or the app beside a sidecar)."""
        return _unsampled_line(self.trace_id, self.span_id, self.state)

    def attempt_started(self, request: ProxyRequest) -> None:
        """An attempt to reach ``request.upstream`` begins (connecting included)."""

    def attempt_answered(self, status: int) -> None:
        """The upstream's status line arrived."""

    def attempt_ended(self, error: BaseException | None) -> None:
        """The attempt is over: answered whole (``error`` None), or failed."""

    def finished(self, request: ProxyRequest, status: int, error: BaseException | None) -> None:
        """The request is over with ``status`` (0: no complete answer) and ``error``."""


class RecordedTrace(RequestTrace):
    """A sampled request's trace: its server span, and a client span per attempt."""

    __slots__ = (
        "_attempt_id",
        "_attempt_origin",
        "_attempt_parent",
        "_attempt_started",
        "_attempt_status",
        "_method_route",
        "_path",
        "_resends",
        "_started",
        "_tracing",
        "parent_id",
    )

    sampled = True

    def __init__(
        self,
        tracing: Tracing,
        request: ProxyRequest,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes,
        state: bytes | None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.state = state
        self.parent_id = parent_id
        self._tracing = tracing
        self._attempt_id: bytes | None = None
        self._attempt_status = 0
        self._attempt_started = 0.0
        self._attempt_origin: tuple[str, int] | None = None
        # An attempt's parent: the server span when there is one; else the caller's
        # span, or none at all when the attempt begins the trace (an app beside a
        # sidecar that sent no context: its outbound call is the trace's root).
        self._attempt_parent = span_id if tracing.server else parent_id
        self._method_route: tuple[str, str | None] = ("", None)
        self._resends = 0
        self._started = tracing.clock.monotonic()
        self._path = request.path  # as the client sent it, before any rewrite

    def headers(self) -> bytes:
        line = b"traceparent: 00-%s-%s-01\r\n" % (self.trace_id, self._attempt_id or self.span_id)
        if self.state is not None:
            line += b"tracestate: %s\r\n" % self.state
        return line

    def attempt_started(self, request: ProxyRequest) -> None:
        tracing = self._tracing
        if not tracing.client:
            return
        if self._attempt_id is not None:
            self.attempt_ended(None)
        self._attempt_id = tracing.recorder.new_span_id()
        self._attempt_status = 0
        self._attempt_started = tracing.clock.monotonic()
        self._attempt_origin = request.upstream
        # Named by the service called, as the SDK's client spans are: the
        # route already names the server span around it.
        self._method_route = (request.method, request.service or request.route)

    def attempt_answered(self, status: int) -> None:
        self._attempt_status = status

    def attempt_ended(self, error: BaseException | None) -> None:
        attempt_id = self._attempt_id
        if attempt_id is None:
            return
        self._attempt_id = None
        tracing = self._tracing
        method, route = self._method_route
        status = self._attempt_status
        host, port = self._attempt_origin or ("", 0)
        attributes: list[tuple[str, str | int]] = [
            ("http.request.method", method),
            ("server.address", host),
            ("server.port", port),
        ]
        if status:
            attributes.append(("http.response.status_code", status))
        if self._resends:
            attributes.append(("http.request.resend_count", self._resends))
        self._resends += 1
        tracing.recorder.span(
            SpanRecord(
                self.trace_id,
                attempt_id,
                self._attempt_parent,
                f"{method} {route}" if route else method,
                CLIENT,
                self._attempt_started,
                tracing.clock.monotonic(),
                tuple(attributes),
                _error_type(error, status, client=True),
            )
        )

    def finished(self, request: ProxyRequest, status: int, error: BaseException | None) -> None:
        self.attempt_ended(error)
        tracing = self._tracing
        if not tracing.server:
            return
        # http.route is the path template that matched (HTTP conventions); a
        # route that names no path (the sidecar's "inbound", a label for its
        # metrics: it does not know the app's routes) leaves the span named by
        # its method alone.
        route = request.route if request.route and request.route.startswith("/") else None
        attributes: list[tuple[str, str | int]] = [
            ("http.request.method", request.method),
            ("url.path", self._path),
            ("url.scheme", request.scheme),
            ("client.address", request.client),
        ]
        host = request.header(b"host")
        if host:
            attributes.append(("server.address", host.decode("latin-1").rsplit(":", 1)[0]))
        if route:
            attributes.append(("http.route", route))
        if status:
            attributes.append(("http.response.status_code", status))
        tracing.recorder.span(
            SpanRecord(
                self.trace_id,
                self.span_id,
                self.parent_id,
                f"{request.method} {route}" if route else request.method,
                SERVER,
                self._started,
                tracing.clock.monotonic(),
                tuple(attributes),
                _error_type(error, status, client=False),
            )
        )


def _error_type(error: BaseException | None, status: int, *, client: bool) -> str | None:
    """OpenTelemetry's ``error.type``: the exception's class, or a failed status as text.

    A client span fails from 400 on; a server span from 500 on (a 4xx is
    the client's fault, not the server's), as the HTTP conventions say.
    """
    if error is not None:
        return type(error).__name__
    if status >= (400 if client else 500):
        return str(status)
    return None
