"""The sidecar's filters: to the app (inbound), by service name (outbound), and trace context."""

from __future__ import annotations

import random
from collections.abc import Callable

import msgspec

from meshkit._clock import Clock
from meshkit.errors import ConfigError
from meshkit.proxy import CONTENT_TYPE, ProxyRequest, ProxyResponse, error_response
from meshkit.registry import check_name

__all__ = ["METRICS_PATH", "READY_PATH", "ByName", "Metrics", "Span", "ToApp", "Tracing"]

METRICS_PATH = "/.meshkit/metrics"  # on the outbound port: no service name starts with "."
# On the inbound port: 200 once the app is registered (the app answering is
# not enough: callers find it only once it is in the registry).
READY_PATH = "/.meshkit/sidecar/ready"


class ToApp:
    """Inbound: every request goes to the app."""

    def __init__(self, app: tuple[str, int]) -> None:
        self._app = app

    def on_request(self, request: ProxyRequest) -> None:
        request.upstream = self._app
        request.route = "inbound"

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


class ByName:
    """Outbound: ``/<service>/<path>`` goes to ``<path>`` on an instance of ``<service>``."""

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        service, slash, rest = request.path[1:].partition("/")
        try:
            check_name("service", service)
        except ConfigError as error:
            return error_response(
                400,
                f"outbound requests go to /<service>/<path>; {error.problem}, got {service!r}",
                request.request_id,
            )
        request.service = service
        request.route = service
        request.path = slash + rest if slash else "/"
        return None

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


class Metrics:
    """``GET /.meshkit/metrics``: the sidecar's Prometheus metrics."""

    def __init__(self, exposition: Callable[[], bytes]) -> None:
        self._exposition = exposition

    def on_request(self, request: ProxyRequest) -> ProxyResponse | None:
        if request.path != METRICS_PATH:
            return None
        return ProxyResponse(200, [(b"content-type", CONTENT_TYPE)], self._exposition())

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass


class Span(msgspec.Struct, frozen=True, kw_only=True):
    """One request through the sidecar, as a trace span (W3C Trace Context ids, in hex)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str  # "server" for inbound, "client" for outbound
    name: str
    start: float  # Unix time, seconds
    duration: float
    status: int
    request_id: str


class Tracing:
    """W3C Trace Context: each request gets a span, and carries it on in ``traceparent``.

    A valid incoming ``traceparent`` makes this span its child; without
    one (or with a malformed one, which the spec says to ignore) a new
    trace starts. The header sent on names this span as the parent, so the
    app's own calls, made through the outbound port with the header
    copied, join the same trace. ``tracestate`` passes unchanged. Each
    finished span goes to ``record``; without one, none is made.
    """

    def __init__(
        self,
        kind: str,
        record: Callable[[Span], None] | None,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._kind = kind
        self._record = record
        self._clock = clock
        self._rng = rng or random.Random()

    def on_request(self, request: ProxyRequest) -> None:
        parent = _parse(request.header(b"traceparent"))
        bits = self._rng.getrandbits
        dropped: tuple[bytes, ...] = (b"traceparent",)
        if parent is None:
            trace_id, parent_id, flags = f"{bits(128):032x}", None, "01"
            dropped = (b"traceparent", b"tracestate")  # it belonged to another trace
        else:
            trace_id, parent_id, flags = parent
        span_id = f"{bits(64):016x}"
        value = f"00-{trace_id}-{span_id}-{flags}".encode("ascii")
        request.headers = [(n, v) for n, v in request.headers if n not in dropped]
        request.headers.append((b"traceparent", value))
        record = self._record
        if record is not None:
            started = (self._clock.time(), self._clock.monotonic())
            request.on_finish(
                lambda: record(self._span(request, trace_id, span_id, parent_id, started))
            )

    def on_response(self, request: ProxyRequest, response: ProxyResponse) -> None:
        pass

    def _span(
        self,
        request: ProxyRequest,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        started: tuple[float, float],
    ) -> Span:
        return Span(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            kind=self._kind,
            name=f"{request.method} {request.route or ''}",
            start=started[0],
            duration=self._clock.monotonic() - started[1],
            status=request.status,
            request_id=request.request_id,
        )


_HEX = frozenset("0123456789abcdef")


def _parse(value: bytes | None) -> tuple[str, str, str] | None:
    """``(trace_id, parent_id, flags)`` of a valid ``traceparent``, else None.

    A later version is read as far as version 00 goes, as the spec asks
    (it may only add fields after a dash); version ff is invalid.
    """
    if value is None or len(value) < 55:
        return None
    if value[:2] == b"00":
        if len(value) != 55:
            return None
    elif value[:2] == b"ff" or (len(value) > 55 and value[55:56] != b"-"):
        return None
    parts = value[:55].decode("latin-1").split("-")
    if [len(part) for part in parts] != [2, 32, 16, 2]:
        return None
    _, trace_id, parent_id, flags = parts
    if not set("".join(parts)) <= _HEX:
        return None
    if trace_id == "0" * 32 or parent_id == "0" * 16:  # all zeros: invalid, per the spec
        return None
    return trace_id, parent_id, flags
