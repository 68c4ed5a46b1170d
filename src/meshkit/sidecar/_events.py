"""Bus messages handed to the app beside the sidecar, as HTTP requests.

An app in any language consumes events as it serves calls: the sidecar
joins the consumer group and POSTs each message to a path of the app. The
body is the message's JSON payload; ``meshkit-message-id``,
``meshkit-topic`` and ``meshkit-deliveries`` say which message it is and
how often it has come, and the message's own headers (trace context among
them) follow. A 2xx answer acks the message. Anything else, or no answer
within the timeout, fails it: the group's backoff brings it back, and after
its last delivery it is a dead letter whose error gives the app's status
and what its answer says: a problem's detail (RFC 9457), or the body's text.

Messages wait while the app is out of the registry (starting, or failing
its health check) instead of failing against an app that cannot answer:
a restart of the app must not use up a message's deliveries.
"""

from __future__ import annotations

import asyncio
import re

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.bus import Message, check_group, check_topic
from meshkit.errors import ConfigError, PeerError
from meshkit.http import HTTPClient, Problem, Response, Timeouts
from meshkit.observe import CONSUMER, Recorder, SpanRecord, format_traceparent, parse_traceparent

__all__ = ["AppDelivery", "EventRoute", "check_app_path", "check_max_deliveries", "parse_route"]

_PATH = re.compile(r"/[!-~]*")
# A message refused this often is not going to be handled: past it, a
# setting is a mistake (Azure Service Bus stops at 10, RabbitMQ at 20).
_MOST_DELIVERIES = 100
# What a refused message's error keeps of the app's answer: enough to see
# why in `meshkit dlq show`, no more (the bus keeps errors to 4 KiB).
_SHOWN_BODY = 500
# Headers a message may not pass on to the app: those the sidecar sets
# itself, and those that describe a connection or its framing rather than
# the message (RFC 9110 7.6.1's hop-by-hop fields, and Expect, which would
# make the app wait to be asked for the body).
_OWN = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "connection",
        "transfer-encoding",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "expect",
    }
)


def check_app_path(key: str, path: str) -> str:
    """A path on the app (``/`` and printable ASCII); ``ConfigError`` on ``key`` otherwise."""
    if not _PATH.fullmatch(path):
        raise ConfigError(key, f"must be a path starting with '/', got {path!r}")
    return path


def check_max_deliveries(value: int) -> int:
    """Deliveries of a message to the app before it is a dead letter: 1 to 100."""
    if not 1 <= value <= _MOST_DELIVERIES:
        raise ConfigError("max_deliveries", f"must be between 1 and 100, got {value}")
    return value


class EventRoute(msgspec.Struct, frozen=True, kw_only=True):
    """Messages of ``topic`` in ``group``, POSTed to the app's ``path``."""

    topic: str
    group: str
    path: str

    def __post_init__(self) -> None:
        check_topic(self.topic)
        check_group(self.group)
        check_app_path("path", self.path)


def parse_route(spec: str) -> EventRoute:
    """``TOPIC:GROUP:PATH`` (the command line's form) as a route; ``ConfigError`` if malformed."""
    topic, _, rest = spec.partition(":")
    group, _, path = rest.partition(":")
    if not (topic and group and path):
        raise ConfigError("subscribe", f"must be TOPIC:GROUP:PATH, got {spec!r}")
    return EventRoute(topic=topic, group=group, path=path)


class AppDelivery:
    """A bus handler that delivers each message to the app at ``(host, port)`` + ``route.path``.

    ``present`` is set while the app is in the registry; a message waits
    for it. ``timeouts`` bound the connection and the wait for the answer.
    """

    def __init__(
        self,
        route: EventRoute,
        app: tuple[str, int],
        http: HTTPClient,
        present: asyncio.Event,
        *,
        timeouts: Timeouts,
        recorder: Recorder | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.route = route
        self._app = app
        self._http = http
        self._present = present
        self._timeouts = timeouts
        self._recorder = recorder
        self._clock = clock or SystemClock()

    async def __call__(self, message: Message) -> None:
        await self._present.wait()
        host, port = self._app
        headers = [
            (b"content-type", b"application/json"),
            (b"meshkit-message-id", message.id.encode()),
            (b"meshkit-topic", message.topic.encode()),
            (b"meshkit-deliveries", str(message.deliveries).encode()),
        ]
        headers += [
            (name.encode(), value.encode("latin-1", "replace"))
            for name, value in message.headers.items()
            if name.lower() not in _OWN and (self._recorder is None or name != "traceparent")
        ]
        span = self._process_span(message, headers)
        error: str | None = None
        start = self._clock.monotonic()
        try:
            answer = await self._http.request(
                "POST",
                host,
                port,
                self.route.path,
                headers=headers,
                body=message.payload,
                timeouts=self._timeouts,
            )
            if not 200 <= answer.status < 300:
                error = str(answer.status)
                said = _said(answer)
                raise PeerError(f"the app answered {answer.status} at {self.route.path}: {said}")
        except Exception as failure:
            error = error or type(failure).__qualname__
            raise
        finally:
            if span is not None and self._recorder is not None:
                self._recorder.span(
                    msgspec.structs.replace(
                        span, start=start, end=self._clock.monotonic(), error=error
                    )
                )

    def _process_span(
        self, message: Message, headers: list[tuple[bytes, bytes]]
    ) -> SpanRecord | None:
        """The ``process`` span of delivering ``message``, as a child of its creation
        context, which the app receives as its parent; ``None`` when nothing is recorded.

        OpenTelemetry's messaging conventions: the consumer's span continues
        the message's trace. A message without a sampled context, or a
        sidecar without telemetry, passes its headers on unchanged.
        """
        if self._recorder is None:
            return None
        created = parse_traceparent(message.headers.get("traceparent", "").encode("latin-1"))
        if created is None:
            return None
        trace_id, parent_id, sampled = created
        span_id = self._recorder.new_span_id()
        headers.append((b"traceparent", format_traceparent(trace_id, span_id, sampled=sampled)))
        if not sampled:  # carried on, not recorded
            return None
        return SpanRecord(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            name=f"process {message.topic}",
            kind=CONSUMER,
            start=0.0,
            end=0.0,
            attributes=(
                ("messaging.system", "meshkit"),
                ("messaging.operation.type", "process"),
                ("messaging.destination.name", message.topic),
                ("messaging.consumer.group.name", self.route.group),
                ("messaging.message.id", message.id),
                ("messaging.message.delivery_count", message.deliveries),
                ("url.path", self.route.path),
            ),
        )


def _said(answer: Response) -> str:
    """What a refusal says, on one line: a problem's summary, else the body's text."""
    if answer.status >= 400:
        said = Problem.read(answer.status, answer.body).summary()
    else:  # a redirect, say: no problem to read
        said = answer.body[:_SHOWN_BODY].decode("utf-8", "replace")
    return " ".join(said.split())[:_SHOWN_BODY]
