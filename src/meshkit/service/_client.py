"""Calling services by name: discovery, load balancing, ejection, retries and deadlines.

``ServiceClient.request("orders", "POST", "/orders", json=...)``:

1. instances come from the ``Directory`` cache (no registry round trip);
2. power-of-two-choices picks one, skipping instances already tried in this
   call and instances ejected after consecutive failures (see
   ``meshkit.discovery``: never more than a share of them, never the last);
3. the attempt gets whatever is left of the deadline: the call's own timeout,
   or less if the request being served has a shorter one, and the time left
   is sent on in ``x-meshkit-timeout-ms``;
4. a failure is retried on another instance when that is safe: a refused
   connection always (nothing was sent), a dropped connection or a 502, 503
   or 504 only for idempotent requests, within the retry policy and budget.
   A request is idempotent when its method is (GET, PUT, DELETE...), when it
   carries an ``idempotency_key`` (sent as the ``Idempotency-Key`` header of
   draft-ietf-httpapi-idempotency-key-header: a server that honours it
   answers a repeat with its first answer), or when the caller says so.

A response, even a 5xx one, is returned as it is. When nothing can serve the
call, ``ServiceUnavailableError`` names the service and says why; when the
deadline runs out, ``DeadlineExceededError`` does.

Each attempt is a client span (OpenTelemetry's HTTP conventions: a resend
is a span of its own), whose context goes out in ``traceparent``. A call to an absolute URL (``client.get("https://...")``)
leaves the mesh: one attempt, under the same deadline, with the trace
context but not meshkit's own timeout field.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import msgspec

from meshkit._clock import Clock, SystemClock
from meshkit.discovery import Attempts, CallPolicy, Directory, InstanceSet
from meshkit.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MeshkitError,
    PeerError,
    ServiceUnavailableError,
)
from meshkit.http import (
    IDEMPOTENCY_KEY,
    IDEMPOTENT_METHODS,
    HTTPClient,
    Response,
    idempotency_key_field,
)
from meshkit.observe._prometheus import exemplar
from meshkit.policy import _check as check
from meshkit.registry import Instance, Snapshot, check_name
from meshkit.service._deadline import TIMEOUT_HEADER, current_deadline
from meshkit.service._tracing import answered, attempt_span, failed, trace_fields

__all__ = ["Call", "CallPolicy", "ServiceClient"]

_JSON = (b"content-type", b"application/json")
Headers = Iterable[tuple[bytes, bytes]]


class Call(msgspec.Struct, frozen=True, kw_only=True):
    """One call to a service, as instrumentation sees it once it ended.

    ``outcome`` is the answer's status code, or ``unavailable`` (no
    instance could serve it), ``deadline_exceeded``, ``cancelled`` or
    ``error`` (the caller's mistake, found before any I/O); ``attempts``
    counts the instances tried (0 when none was); ``duration`` is in
    seconds; ``trace_id`` is the sampled span current as the call ended.
    ``service`` is the host of a call to an absolute URL, as its span names
    it: the URL itself would make a metric series per path and query.
    """

    service: str
    outcome: str
    attempts: int
    duration: float
    trace_id: str | None = None


class _Tally:
    """What ``_request`` tells ``request`` of a call besides its answer."""

    __slots__ = ("attempts",)

    def __init__(self) -> None:
        self.attempts = 0


class ServiceClient:
    """Calls other services by name. Share one per process; close with ``aclose()``."""

    def __init__(
        self,
        directory: Directory,
        *,
        http: HTTPClient | None = None,
        policy: CallPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.directory = directory
        self.policy = policy or CallPolicy()
        self._owns_http = http is None
        self._http = http or HTTPClient()
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._upstreams: dict[str, InstanceSet] = {}
        self._https: HTTPClient | None = None  # for absolute https:// URLs, made when first used
        directory.listen(self._on_change)
        # Instrumentation: each call, once it ends (see ``Call``).
        self.on_call: list[Callable[[Call], None]] = []

    async def get(
        self,
        service: str,
        path: str = "",
        *,
        headers: Headers = (),
        timeout: float | None = None,  # noqa: ASYNC109 (see request)
    ) -> Response:
        return await self.request(service, "GET", path, headers=headers, timeout=timeout)

    async def post(
        self,
        service: str,
        path: str = "",
        *,
        json: object = None,
        body: bytes = b"",
        headers: Headers = (),
        timeout: float | None = None,  # noqa: ASYNC109 (see request)
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        return await self.request(
            service,
            "POST",
            path,
            json=json,
            body=body,
            headers=headers,
            timeout=timeout,
            idempotent=idempotent,
            idempotency_key=idempotency_key,
        )

    async def put(
        self,
        service: str,
        path: str = "",
        *,
        json: object = None,
        body: bytes = b"",
        headers: Headers = (),
        timeout: float | None = None,  # noqa: ASYNC109 (see request)
        idempotency_key: str | None = None,
    ) -> Response:
        return await self.request(
            service,
            "PUT",
            path,
            json=json,
            body=body,
            headers=headers,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    async def delete(
        self,
        service: str,
        path: str = "",
        *,
        headers: Headers = (),
        timeout: float | None = None,  # noqa: ASYNC109 (see request)
        idempotency_key: str | None = None,
    ) -> Response:
        return await self.request(
            service,
            "DELETE",
            path,
            headers=headers,
            timeout=timeout,
            idempotency_key=idempotency_key,
        )

    async def request(
        self,
        service: str,
        method: str,
        path: str = "",
        *,
        json: object = None,
        body: bytes = b"",
        headers: Headers = (),
        # Not an asyncio.timeout's job: the deadline is split across retries
        # and sent on to the callee.
        timeout: float | None = None,  # noqa: ASYNC109
        idempotent: bool | None = None,
        idempotency_key: str | None = None,
    ) -> Response:
        """Call ``method path`` on an instance of ``service``; see the module docstring.

        ``json`` is encoded as the body. ``idempotency_key`` is sent as the
        ``Idempotency-Key`` header and makes the request idempotent for
        retries: the same key is sent with every attempt, so a server that
        honours it acts once. Generate one key per operation (a UUID, or a
        saga run's id and step) and send it again when repeating the
        operation. ``idempotent`` overrides what the method and the key
        imply (POST is not, GET and PUT are, a keyed request is) for retry
        decisions.

        ``service`` may be an absolute ``http://`` or ``https://`` URL
        instead, with no ``path``: see the module docstring.

        Raises ``InvalidArgumentError`` naming ``idempotency_key`` when the
        key is empty, longer than 255 characters or not printable ASCII, or
        when ``headers`` carry an ``Idempotency-Key`` too; naming ``path``
        when one is given with a URL; before any I/O.
        """
        started = self._clock.monotonic()
        tally = _Tally()
        outcome = "error"
        try:
            response = await self._request(
                service,
                method,
                path,
                json=json,
                body=body,
                headers=headers,
                timeout=timeout,
                idempotent=idempotent,
                idempotency_key=idempotency_key,
                tally=tally,
            )
        except ServiceUnavailableError:
            outcome = "unavailable"
            raise
        except DeadlineExceededError:
            outcome = "deadline_exceeded"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        else:
            outcome = str(response.status)
            return response
        finally:
            if self.on_call:
                self._report(_called(service), outcome, tally.attempts, started)

    def _report(self, service: str, outcome: str, attempts: int, started: float) -> None:
        found = exemplar()
        record = Call(
            service=service,
            outcome=outcome,
            attempts=attempts,
            duration=self._clock.monotonic() - started,
            trace_id=None if found is None else found["trace_id"],
        )
        for hook in self.on_call:
            hook(record)

    async def _request(
        self,
        service: str,
        method: str,
        path: str,
        *,
        json: object,
        body: bytes,
        headers: Headers,
        timeout: float | None,  # noqa: ASYNC109 (see request)
        idempotent: bool | None,
        idempotency_key: str | None,
        tally: _Tally,
    ) -> Response:
        if idempotency_key is not None:
            headers = _with_key(headers, idempotency_key)
        now = self._clock.monotonic()
        expires_at = self._expires_at(now, timeout)
        if json is not None:
            body = msgspec.json.encode(json)
            headers = [*headers, _JSON]
        if idempotent is None:
            idempotent = idempotency_key is not None or method in IDEMPOTENT_METHODS
        if service.startswith(("http://", "https://")):
            tally.attempts = 1
            return await self._external(service, method, path, headers, body, expires_at)
        return await self._call(
            service, method, path, headers, body, expires_at, idempotent=idempotent, tally=tally
        )

    async def _call(
        self,
        service: str,
        method: str,
        path: str,
        headers: Headers,
        body: bytes,
        expires_at: float,
        *,
        idempotent: bool,
        tally: _Tally,
    ) -> Response:
        now = self._clock.monotonic()
        upstream = self._upstreams.get(service) or await self._find(service, expires_at - now)
        now = self._clock.monotonic()
        attempts = Attempts(
            upstream,
            self.policy.retry,
            now,
            rng=self._rng,
            idempotent=idempotent,
            patience=self.policy.timeout,
        )
        try:
            pick = attempts.next(now, time_left=expires_at - now)
            if pick is None:
                raise ServiceUnavailableError(service, upstream.why_nothing())
            while True:
                remaining = expires_at - self._clock.monotonic()
                if remaining <= 0:
                    last = attempts.last_error
                    raise DeadlineExceededError(
                        f"{method} {service}{path}: the deadline passed after"
                        f" {attempts.count - 1} attempt(s)"
                        f"{'; the last said: ' + last if last else ''}"
                    )
                outcome = await self._attempt(
                    service,
                    pick.instance,
                    method,
                    path,
                    headers,
                    body,
                    remaining,
                    idempotent=idempotent,
                    resend=attempts.count - 1,
                )
                now = self._clock.monotonic()
                retry_after = None
                if isinstance(outcome, Response):
                    if attempts.answered(now, outcome.status):
                        return outcome
                    failure: BaseException | int = outcome.status
                    retry_after = _retry_after(outcome)
                else:
                    attempts.failed(now, outcome)
                    failure = outcome
                delay = attempts.retry(
                    now,
                    failure,
                    time_left=expires_at - now,
                    retry_after=retry_after,
                )
                if delay is not None and attempts.current is not None:
                    pick = attempts.current
                    await self._clock.sleep(delay)
                    continue
                if isinstance(outcome, Response):
                    return outcome  # the answer we have, since no retry can follow
                if now >= expires_at:
                    raise DeadlineExceededError(
                        f"{method} {service}{path}: the deadline passed;"
                        f" the last said: {attempts.last_error}"
                    ) from outcome
                raise ServiceUnavailableError(
                    service,
                    f"{attempts.count} attempt(s) failed; the last said: {attempts.last_error}",
                ) from outcome
        finally:
            attempts.close(self._clock.monotonic())
            tally.attempts = attempts.count

    def statistics(self) -> dict[str, dict[str, int]]:
        """Per service called so far: its ``instances``, how many are ``ejected`` now, and
        the ``ejections`` since the client started."""
        return {
            name: {
                "instances": len(upstream.instances),
                "ejected": upstream.ejected,
                "ejections": upstream.ejections,
            }
            for name, upstream in self._upstreams.items()
        }

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()
        if self._https is not None:
            await self._https.aclose()

    async def _external(
        self, url: str, method: str, path: str, headers: Headers, body: bytes, expires_at: float
    ) -> Response:
        """One request to ``url``, outside the mesh, within the deadline."""
        if path:
            raise InvalidArgumentError("path", f"is part of the URL {url!r}; give one or the other")
        parts = urlsplit(url)
        if not parts.hostname:
            raise InvalidArgumentError("service", f"{url!r} is a URL without a host")
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if secure and self._https is None:
            self._https = HTTPClient(tls=ssl.create_default_context())
        http = self._https if secure and self._https is not None else self._http
        remaining = expires_at - self._clock.monotonic()
        if remaining <= 0:
            raise DeadlineExceededError(f"{method} {url}: the deadline passed before the call")
        with attempt_span(parts.hostname, method, parts.hostname, port, url, 0) as span:
            try:
                response = await http.send(
                    method,
                    parts.hostname,
                    port,
                    target,
                    headers=[*headers, *trace_fields()],
                    body=body,
                    connect=min(self.policy.connect_timeout, remaining),
                    read=remaining,
                    deadline=asyncio.get_running_loop().time() + remaining,
                )
            except (PeerError, DeadlineExceededError) as error:
                failed(span, error)
                raise
            answered(span, response.status)
            return response

    # -- one attempt --------------------------------------------------------

    async def _attempt(
        self,
        service: str,
        instance: Instance,
        method: str,
        path: str,
        headers: Headers,
        body: bytes,
        remaining: float,
        *,
        idempotent: bool,
        resend: int,
    ) -> Response | PeerError | DeadlineExceededError:
        """Send once to one instance, within ``remaining`` seconds; the response, or the error."""
        host, port = instance.host, instance.port
        url = f"http://{host}:{port}{path}"
        with attempt_span(service, method, host, port, url, resend) as span:
            sent = [
                *headers,
                (TIMEOUT_HEADER, b"%d" % max(1, int(remaining * 1000))),
                *trace_fields(),
            ]
            connect = self.policy.connect_timeout
            try:
                response = await self._http.send(
                    method,
                    host,
                    port,
                    path,
                    headers=sent,
                    body=body,
                    connect=connect if connect < remaining else remaining,
                    read=remaining,
                    # One bound for waiting, connecting, reading and any resend.
                    deadline=asyncio.get_running_loop().time() + remaining,
                    idempotent=idempotent,
                )
            except (PeerError, DeadlineExceededError) as error:
                if span.is_recording():
                    failed(span, error)
                return error
            answered(span, response.status)
            return response

    # -- per-service state ----------------------------------------------------

    def _expires_at(self, now: float, timeout: float | None) -> float:
        """When this call must be over: its own timeout, or the served request's deadline."""
        if timeout is None:
            timeout = self.policy.timeout  # checked once, in CallPolicy
        else:
            check.seconds("timeout", timeout)
        expires_at = now + timeout
        inherited = current_deadline()
        if inherited is not None and inherited.expires_at < expires_at:
            return inherited.expires_at
        return expires_at

    async def _find(self, service: str, remaining: float) -> InstanceSet:
        """The service's state, fetching its instances the first time, within the deadline.

        A bad name is the caller's ``ConfigError``; whatever else keeps the
        registry from answering (unreachable, refusing the token) makes the
        service unavailable to this call.
        """
        check_name("service", service)
        try:
            async with asyncio.timeout(remaining):
                return await self._upstream(service)
        except TimeoutError as error:
            raise DeadlineExceededError(
                f"looking up {service!r} in the registry outlasted the call's deadline"
            ) from error
        except MeshkitError as error:
            raise ServiceUnavailableError(
                service, f"the registry cannot be reached to find it: {error}"
            ) from error

    async def _upstream(self, service: str) -> InstanceSet:
        snapshot = await self.directory.snapshot(service)
        upstream = self._upstreams.get(service)
        if upstream is None:
            upstream = self._upstreams[service] = InstanceSet(service, self.policy, self._rng)
            upstream.update(snapshot.instances, snapshot.weights)
        return upstream

    def _on_change(self, snapshot: Snapshot) -> None:
        upstream = self._upstreams.get(snapshot.service)
        if upstream is not None:
            upstream.update(snapshot.instances, snapshot.weights)


def _with_key(headers: Headers, key: str) -> list[tuple[bytes, bytes]]:
    """``headers`` and the ``Idempotency-Key`` field sending ``key``, which must be the only one.

    The draft forbids two of them in one request.
    """
    given = list(headers)
    if any(name.lower() == _KEY_FIELD for name, _ in given):
        raise InvalidArgumentError(
            "idempotency_key", "is given twice: as the option and in headers; give one"
        )
    return [*given, idempotency_key_field(key)]


_KEY_FIELD = IDEMPOTENCY_KEY.encode("ascii")


def _retry_after(response: Response) -> float | None:
    """Seconds from a Retry-After header in the delay-seconds form (RFC 9110, 10.2.3)."""
    for name, value in response.headers:
        if name == b"retry-after":
            match = _DELAY.fullmatch(value.strip())
            return float(match.group()) if match else None
    return None


_DELAY = re.compile(rb"[0-9]{1,9}")


def _called(service: str) -> str:
    """Who a call went to, for instrumentation: a service's name, or a URL's host."""
    if service.startswith(("http://", "https://")):
        return urlsplit(service).hostname or service
    return service
