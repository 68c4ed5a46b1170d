"""Sending a recorder's spans and log records in the background, as OTLP/HTTP.

The ``Exporter`` is a task beside the requests: it wakes each
``interval``, or at once when a full batch is waiting, takes batches from
the ``Recorder``, encodes them and hands them to a ``Sink``. A request
never waits for it: when the destination is slow or down, records pile up
to the recorder's bound and are dropped there, counted. A batch the sink
refuses is counted as failed and not sent again (the next batch is
already waiting; OpenTelemetry's exporters retry, at the cost of a queue
that then drops newer records instead).

``OtlpHttpSink`` POSTs to an ``Endpoint`` (``meshkit.observe.destination``)
with meshkit's own HTTP client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

from meshkit._clock import Clock, SystemClock
from meshkit.errors import ConfigError, MeshkitError, PeerError
from meshkit.http import HTTPClient, Timeouts
from meshkit.observe._destination import Destination, Endpoint
from meshkit.observe._otlp_encode import CONTENT_TYPE, encode_logs, encode_spans
from meshkit.observe._recorder import Recorder

__all__ = ["Exporter", "OtlpHttpSink", "Sink"]

_log = logging.getLogger("meshkit.observe")


class Sink(Protocol):
    """Where encoded batches go: ``signal`` is ``"spans"`` or ``"logs"``.

    ``send`` raises ``MeshkitError`` when the batch was not taken.
    """

    async def send(self, signal: str, body: bytes) -> None: ...


class OtlpHttpSink:
    """POSTs OTLP/HTTP JSON to a destination's endpoints; a signal without one is discarded."""

    def __init__(self, destination: Destination, *, timeout: float = 10.0) -> None:
        """Raises ``ConfigError`` for an endpoint that is not an http(s) URL with a host."""
        self._targets = {
            signal: _target(endpoint)
            for signal, endpoint in (("spans", destination.traces), ("logs", destination.logs))
            if endpoint is not None
        }
        # One connection per origin is plenty: exports are one at a time.
        timeouts = Timeouts(connect=timeout, read=timeout)
        self._clients = {
            secure: HTTPClient(
                timeouts=timeouts, tls=ssl.create_default_context() if secure else None
            )
            for secure in {target[0] for target in self._targets.values()}
        }

    async def send(self, signal: str, body: bytes) -> None:
        target = self._targets.get(signal)
        if target is None:
            return
        secure, host, port, path, headers = target
        response = await self._clients[secure].request(
            "POST", host, port, path, headers=headers, body=body
        )
        if not 200 <= response.status < 300:
            raise PeerError(f"{signal}: {host}:{port}{path} answered {response.status}")

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def _target(endpoint: Endpoint) -> tuple[bool, str, int, str, list[tuple[bytes, bytes]]]:
    parts = urlsplit(endpoint.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("OTLP endpoint", f"must be an http(s):// URL, got {endpoint.url!r}")
    secure = parts.scheme == "https"
    headers = [(b"content-type", CONTENT_TYPE)]
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1")) for name, value in endpoint.headers
    )
    return secure, parts.hostname, parts.port or (443 if secure else 80), parts.path or "/", headers


# The pauses before each resend of a batch the destination did not take; None: give up.
_RESENDS = (0.25, 1.0, None)


class Exporter:
    """Runs while ``start()``-ed: takes the recorder's batches to ``sink``.

    ``resource`` is the OTLP resource's attributes (``Identity.resource()``).
    ``flush()`` sends what is waiting now; ``aclose()`` sends what is left,
    for at most ``grace`` seconds, and stops.
    """

    def __init__(
        self,
        recorder: Recorder,
        sink: Sink,
        *,
        resource: Mapping[str, str],
        clock: Clock | None = None,
    ) -> None:
        self._recorder = recorder
        self._sink = sink
        self._resource = dict(resource)
        self._clock = clock or SystemClock()
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        self._closing = False
        recorder.on_batch = self._full

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def _full(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        interval = self._recorder.limits.interval
        while not self._closing:
            sleeping = asyncio.ensure_future(self._clock.sleep(interval))
            waking = asyncio.ensure_future(wake.wait())
            try:
                await asyncio.wait((sleeping, waking), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeping.cancel()
                waking.cancel()
            wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Send every batch waiting now, one request at a time."""
        recorder = self._recorder
        while recorder.spans or recorder.logs:
            offset = round((self._clock.time() - self._clock.monotonic()) * 1e9)
            spans, logs = recorder.take_spans(), recorder.take_logs()
            if spans:
                await self._send("spans", len(spans), encode_spans(spans, self._resource, offset))
            if logs:
                await self._send("logs", len(logs), encode_logs(logs, self._resource, offset))

    async def _send(self, signal: str, count: int, body: bytes) -> None:
        for backoff in _RESENDS:
            try:
                await self._sink.send(signal, body)
                break
            except (MeshkitError, OSError) as error:
                # A busy store answers 503 and a restarting one refuses the
                # connection: try again a little later, then count it failed.
                if backoff is not None and not self._closing:
                    await self._clock.sleep(backoff)
                    continue
                self._recorder.failed[signal] += count
                if not self._failing:  # once per outage, not once per batch
                    _log.warning("telemetry not sent (counted as failed until it is): %s", error)
                self._failing = True
                return
        self._recorder.exported[signal] += count
        if self._failing:
            _log.warning("telemetry is being sent again")
        self._failing = False

    async def aclose(self, grace: float = 5.0) -> None:
        self._closing = True
        task, self._task = self._task, None
        try:
            async with asyncio.timeout(grace):
                if task is not None:
                    self._full()  # its last round sends what is left
                    await task
                else:
                    await self.flush()
        except TimeoutError:
            pass
        finally:
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._recorder.on_batch = None
        close = getattr(self._sink, "aclose", None)
        if close is not None:
            await close()
