"""The control plane's telemetry: an OTLP/HTTP receiver, and queries of what it keeps.

    POST /v1/traces                     OTLP ExportTraceServiceRequest -> ExportTraceServiceResponse
    POST /v1/logs                       OTLP ExportLogsServiceRequest  -> ExportLogsServiceResponse
    GET  /v1/query/traces               ?service=S &errors=true &min_duration=100ms &since=10m
                                        &limit=N (1-1000, default 50)
                                        -> {traces: [{trace_id, service, name, start_ns,
                                            duration_ns, spans, services, error}]}, newest first
    GET  /v1/query/traces/{trace_id}    -> {trace_id, spans: [{trace_id, span_id, parent_span_id,
                                            service, instance, name, kind, start_ns, end_ns,
                                            duration_ns, status, status_message, attributes,
                                            events, links, resource}]}, by start; 404 if unknown
    GET  /v1/query/logs                 ?service=S (repeated for several) &level=warn
                                        &trace_id=ID &since=10m &grep=TEXT &after=CURSOR
                                        &limit=N (1-10000, default 100)
                                        -> {logs: [{id, time_ns, observed_ns, service, instance,
                                            severity_number, severity, body, trace_id, span_id,
                                            attributes}], cursor}

The token is checked by the router (``_api``), as for every other path:
OpenTelemetry's exporters send it through ``OTEL_EXPORTER_OTLP_HEADERS``
(``Authorization=Bearer%20<token>``), meshkit's own processes through
``meshkit.observe.destination``.

The receiver follows OTLP/HTTP: protobuf (``application/x-protobuf``) or
JSON (``application/json``), optionally gzip-compressed; a 200 carries the
export response in the request's encoding, with ``partial_success`` when
some records were malformed; every refusal carries a ``google.rpc.Status``
in the request's encoding, as the exporters expect (400 for an undecodable
export, 415 for another media type, 413 for a body that inflates too far,
503 with ``Retry-After`` when the store's queue is full, which the
exporters retry). The queries answer JSON, and bad parameters with problem
details (RFC 9457) naming the parameter. Durations are written as
``500ms``, ``10m``, ``1h30m``; levels are OpenTelemetry's (trace, debug,
info, warn, error, fatal). Logs come newest last; without ``after`` the
newest ``limit`` records, with it the records stored after that cursor, in
the order they came: a follower passes each answer's ``cursor`` back.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, unquote

import msgspec

from meshkit._clock import Clock
from meshkit.control._answers import error as error_answer
from meshkit.control._answers import invalid
from meshkit.errors import EnvironmentFaultError, InvalidArgumentError
from meshkit.http import Request, Response
from meshkit.observe import (
    LogQuery,
    TelemetryStore,
    TraceList,
    TraceQuery,
    parse_duration,
    parse_level,
)
from meshkit.observe._otlp_decode import (
    Batch,
    decode_logs,
    decode_traces,
    export_response,
    status_body,
)

__all__ = ["MAX_INFLATED_BYTES", "TelemetryAPI"]

# An export inflated from gzip may hold this much: 8x the server's body
# limit, well above what an exporter's batch of 512 spans takes, and still
# a bound on what a small compressed body can make the plane hold.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
RETRY_AFTER = b"1"  # seconds: the writer drains a full queue in about that
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
# google.rpc.Code
_INVALID_ARGUMENT = 3
_UNAVAILABLE = 14
_UNIMPLEMENTED = 12
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_MAX_CURSOR = (1 << 63) - 1  # log ids are SQLite integers


class TelemetryAPI:
    """Serves ``/v1/traces``, ``/v1/logs`` and ``/v1/query/...`` from ``store``."""

    def __init__(self, store: TelemetryStore, *, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """Route one authorized request: exports are answered at once, queries later."""
        path = request.path
        if path in ("/v1/traces", "/v1/logs"):
            return self._export(request, path[len("/v1/") :])
        if request.method != "GET":
            return error_answer(405, f"{request.method} is not allowed here; use GET")
        try:
            if path == "/v1/query/traces":
                return self._read(self._traces, _trace_query(request.query))
            if path == "/v1/query/logs":
                return self._read(self._logs, _log_query(request.query))
            if path.startswith("/v1/query/traces/"):
                trace_id = unquote(path[len("/v1/query/traces/") :]).lower()
                if _TRACE_ID.fullmatch(trace_id) is None:
                    raise InvalidArgumentError("trace_id", "must be 32 hex digits")
                return self._read(self._trace, trace_id)
        except InvalidArgumentError as error:
            return invalid(error)
        return error_answer(404, f"no such endpoint: {path}")

    # -- the OTLP receiver -----------------------------------------------------------------

    def _export(self, request: Request, signal: str) -> Response:
        media = (request.header("content-type") or "").partition(";")[0].strip().lower()
        json = media == _JSON
        if request.method != "POST":
            refused = f"{request.method} is not allowed; use POST"
            return _status(405, _UNIMPLEMENTED, refused, json=json)
        if media not in (_PROTOBUF, _JSON):
            return _status(
                415, _INVALID_ARGUMENT, f"Content-Type must be {_PROTOBUF} or {_JSON}", json=json
            )
        try:
            body = _inflated(request)
            now_ns = int(self._clock.time() * 1e9)
            batch = (
                decode_traces(body, json=json)
                if signal == "traces"
                else decode_logs(body, json=json, now_ns=now_ns)
            )
        except _TooLargeError as error:
            return _status(413, _INVALID_ARGUMENT, str(error), json=json)
        except InvalidArgumentError as error:
            return _status(400, _INVALID_ARGUMENT, str(error), json=json)
        return self._keep(signal, batch, json=json)

    def _keep(self, signal: str, batch: Batch, *, json: bool) -> Response:
        offer = self._store.offer_spans if signal == "traces" else self._store.offer_logs
        if not offer(batch.rows):
            return _status(
                503,
                _UNAVAILABLE,
                "the telemetry store is busy writing; retry",
                (b"retry-after", RETRY_AFTER),
                json=json,
            )
        media = _JSON if json else _PROTOBUF
        return Response(
            200, [(b"content-type", media.encode())], export_response(signal, batch, json=json)
        )

    # -- queries ---------------------------------------------------------------------------

    async def _read(self, query: Callable[[Any], Response], asked: Any) -> Response:
        try:
            return await asyncio.to_thread(query, asked)
        except EnvironmentFaultError as error:
            return error_answer(503, str(error))

    def _traces(self, query: TraceQuery) -> Response:
        return _json(TraceList(self._store.traces(query, now=self._clock.time())))

    def _trace(self, trace_id: str) -> Response:
        found = self._store.trace(trace_id)
        if found is None:
            return error_answer(404, f"no trace {trace_id} is kept (unknown, or past retention)")
        return _json(found)

    def _logs(self, query: LogQuery) -> Response:
        return _json(self._store.logs(query, now=self._clock.time()))


class _TooLargeError(Exception):
    pass


def _inflated(request: Request) -> bytes:
    encoding = (request.header("content-encoding") or "identity").strip().lower()
    if encoding == "identity":
        return request.body
    if encoding != "gzip":
        raise InvalidArgumentError("content-encoding", f"must be gzip or none, got {encoding!r}")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(request.body, MAX_INFLATED_BYTES)
    except zlib.error as error:
        raise InvalidArgumentError("body", f"is not valid gzip: {error}") from None
    if inflater.unconsumed_tail:
        raise _TooLargeError(f"the export inflates to more than {MAX_INFLATED_BYTES} bytes")
    return body


def _status(
    status: int, code: int, message: str, *headers: tuple[bytes, bytes], json: bool
) -> Response:
    media = _JSON if json else _PROTOBUF
    return Response(
        status,
        [(b"content-type", media.encode()), *headers],
        status_body(code, message, json=json),
    )


_encode = msgspec.json.encode


def _json(value: Any) -> Response:
    return Response(200, [(b"content-type", b"application/json")], _encode(value))


# -- query parameters --------------------------------------------------------------------


def _params(query: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    params = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidArgumentError(unknown[0], f"is not a parameter here ({', '.join(allowed)})")
    return params


def _one(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    return None if values is None else values[-1]


def _limit(params: dict[str, list[str]], default: int, maximum: int) -> int:
    given = _one(params, "limit")
    if given is None:
        return default
    if not _decimal(given) or not 1 <= int(given) <= maximum:
        raise InvalidArgumentError("limit", f"must be a whole number from 1 to {maximum}")
    return int(given)


def _decimal(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²``, which ``int()`` refuses."""
    return text.isascii() and text.isdigit()


def _since(params: dict[str, list[str]]) -> float | None:
    given = _one(params, "since")
    return None if given is None else parse_duration("since", given)


def _flag(params: dict[str, list[str]], name: str) -> bool:
    given = _one(params, name)
    if given is None:
        return False
    if given.lower() in ("", "true", "1", "yes"):
        return True
    if given.lower() in ("false", "0", "no"):
        return False
    raise InvalidArgumentError(name, f"must be true or false, got {given!r}")


def _trace_query(query: str) -> TraceQuery:
    params = _params(query, ("service", "errors", "min_duration", "since", "limit"))
    min_duration = _one(params, "min_duration")
    return TraceQuery(
        service=_one(params, "service") or None,
        errors=_flag(params, "errors"),
        min_duration=0.0 if min_duration is None else parse_duration("min_duration", min_duration),
        since=_since(params),
        limit=_limit(params, 50, 1000),
    )


def _log_query(query: str) -> LogQuery:
    params = _params(query, ("service", "level", "trace_id", "since", "grep", "after", "limit"))
    level = _one(params, "level")
    trace_id = _one(params, "trace_id")
    if trace_id is not None and _TRACE_ID.fullmatch(trace_id.lower()) is None:
        raise InvalidArgumentError("trace_id", f"must be 32 hex digits, got {trace_id!r}")
    after = _one(params, "after")
    if after is not None and not (_decimal(after) and int(after) <= _MAX_CURSOR):
        raise InvalidArgumentError("after", f"must be a cursor from an answer, got {after!r}")
    return LogQuery(
        services=tuple(name for name in params.get("service", []) if name),
        min_level=0 if level is None else parse_level("level", level),
        trace_id=None if trace_id is None else trace_id.lower(),
        since=_since(params),
        grep=_one(params, "grep") or None,
        after=None if after is None else int(after),
        limit=_limit(params, 100, 10_000),
    )
