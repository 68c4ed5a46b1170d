"""Calls to the control plane's HTTP/JSON API, shared by the registry and bus clients.

Failures are translated here, once: an unreachable or failing control plane
is ``EnvironmentFaultError``, a refused token ``ConfigError`` on ``token``,
a 400 and a 404 what the caller says they mean (``InvalidArgumentError`` on
the field the plane's problem details name in their ``errors``, and
``NotFoundError``, unless told otherwise), a 409 ``ConflictError``, with the
problem's ``detail`` as the message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec

from meshkit.errors import (
    ConfigError,
    ConflictError,
    DeadlineExceededError,
    EnvironmentFaultError,
    InvalidArgumentError,
    NotFoundError,
    PeerError,
)
from meshkit.http import PROBLEM_JSON, HTTPClient, Problem, Response, Timeouts
from meshkit.policy import _check as check

__all__ = ["PlaneClient", "parse_http_url"]


def parse_http_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http://host:port`` URL, or ``ConfigError`` on ``url``."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise ConfigError("url", f"must look like http://127.0.0.1:7700, got {url!r}")
    try:
        port = parts.port or 80
    except ValueError as error:
        raise ConfigError("url", f"has a bad port: {url!r}") from error
    return parts.hostname, port


class PlaneClient:
    """One control plane at ``url``, called with the project's ``token``."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        http: HTTPClient | None = None,
        timeouts: Timeouts | None = None,
    ) -> None:
        self.url = url
        self._host, self._port = parse_http_url(url)
        self._auth = [(b"authorization", f"Bearer {check.text('token', token)}".encode())]
        self._owns_http = http is None
        self._http = http or HTTPClient()
        self._timeouts = timeouts or Timeouts(connect=2.0, read=5.0)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def call(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        expect: int = 200,
        wait: float = 0.0,
        not_found: Callable[[str], Exception] = NotFoundError,
        invalid: Callable[[str, str], Exception] = InvalidArgumentError,
        kind: Any = None,
    ) -> Any:
        """The JSON answer of a call answered ``expect``: as ``kind`` if given, else as Python
        values (``None`` for an empty one)."""
        timeouts = self._timeouts
        if wait:
            # A long poll legitimately takes up to `wait`; allow for it.
            timeouts = Timeouts(connect=timeouts.connect, read=wait + timeouts.read)
        headers = self._auth
        if body:
            headers = [*headers, (b"content-type", b"application/json")]
        try:
            response = await self._http.request(
                method,
                self._host,
                self._port,
                target,
                headers=headers,
                body=body,
                timeouts=timeouts,
            )
        except (PeerError, DeadlineExceededError) as error:
            raise EnvironmentFaultError(
                f"the control plane at {self.url} did not answer {method} {target}: {error}"
            ) from error
        if response.status == expect and kind is not None:
            try:
                return msgspec.json.decode(response.body, type=kind)
            except (msgspec.ValidationError, msgspec.DecodeError) as error:
                raise self.garbled(error) from error
        if response.status == expect:
            try:
                return response.json() if response.body else None
            except PeerError as error:
                raise EnvironmentFaultError(
                    f"the control plane at {self.url} answered {method} {target} with non-JSON"
                ) from error
        raise self._refusal(response, method, target, not_found, invalid)

    def _refusal(
        self,
        response: Response,
        method: str,
        target: str,
        not_found: Callable[[str], Exception],
        invalid: Callable[[str, str], Exception],
    ) -> Exception:
        problem = Problem.read(response.status, response.body)
        # Only the plane's own answers are problems: a 404 from something
        # else at this address (a wrong URL) is no proof that a thing is gone.
        from_plane = (response.header("content-type") or "").startswith(PROBLEM_JSON)
        if response.status == 401:
            return ConfigError("token", f"the control plane at {self.url} refused it")
        if response.status == 404 and from_plane:
            return not_found(problem.detail)
        if response.status == 409 and from_plane:
            return ConflictError(problem.detail)
        if response.status == 400 and problem.errors:
            return invalid(problem.errors[0].field, problem.errors[0].detail)
        if response.status == 400:
            return invalid("request", problem.summary())
        return EnvironmentFaultError(
            f"the control plane at {self.url} answered {method} {target}"
            f" with {response.status}: {problem.summary()}"
        )

    def garbled(self, error: Exception) -> EnvironmentFaultError:
        return EnvironmentFaultError(
            f"the control plane at {self.url} answered with something unexpected: {error!r}"
        )
