"""The registry of a control plane, reached over its HTTP API.

This is the backend services use by default: ``meshkit up`` starts the
control plane and hands its children the address and token. Failures are
translated at this boundary: an unreachable or failing control plane is an
``EnvironmentFaultError``, a refused token a ``ConfigError`` on ``token``,
a lease the control plane no longer knows ``LeaseNotFoundError``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import msgspec

from meshkit.errors import (
    ConfigError,
    DeadlineExceededError,
    EnvironmentFaultError,
    LeaseNotFoundError,
    PeerError,
)
from meshkit.http import HTTPClient, Response, Timeouts
from meshkit.policy import _check as check
from meshkit.registry._model import (
    Instance,
    Registration,
    ServiceCount,
    ServiceList,
    Snapshot,
    check_name,
)

__all__ = ["RemoteRegistry", "parse_http_url"]


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


class RemoteRegistry:
    """A ``Registry`` backed by a control plane at ``url``."""

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

    async def __aenter__(self) -> RemoteRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def register(self, instance: Instance, *, ttl: float) -> Registration:
        body = msgspec.json.encode(
            {
                "service": instance.service,
                "id": instance.id,
                "host": instance.host,
                "port": instance.port,
                "version": instance.version,
                "metadata": instance.metadata,
                "ttl": ttl,
            }
        )
        data = await self._call("POST", "/v1/registry/instances", body=body, expect=201)
        try:
            return Registration(
                instance=instance, lease_id=int(data["lease_id"]), ttl=float(data["ttl"])
            )
        except (KeyError, TypeError, ValueError) as error:
            raise self._garbled(error) from error

    async def renew(self, registration: Registration) -> None:
        await self._call("PUT", f"/v1/registry/leases/{registration.lease_id}", expect=200)

    async def deregister(self, registration: Registration) -> None:
        await self._call("DELETE", f"/v1/registry/leases/{registration.lease_id}", expect=204)

    async def lookup(self, service: str) -> Snapshot:
        check_name("service", service)
        return self._snapshot(await self._call("GET", f"/v1/registry/services/{service}"))

    async def services(self) -> ServiceList:
        return self._service_list(await self._call("GET", "/v1/registry/services"))

    async def watch(self, previous: Snapshot, *, wait: float) -> Snapshot:
        check_name("service", previous.service)
        check.seconds("wait", wait, allow_zero=True)
        target = (
            f"/v1/registry/services/{previous.service}"
            f"?epoch={previous.epoch}&index={previous.index}&wait={wait:g}"
        )
        return self._snapshot(await self._call("GET", target, wait=wait))

    async def watch_services(self, previous: ServiceList, *, wait: float) -> ServiceList:
        """The next service list once any membership changes after ``previous``."""
        check.seconds("wait", wait, allow_zero=True)
        target = (
            f"/v1/registry/services?epoch={previous.epoch}&index={previous.index}&wait={wait:g}"
        )
        return self._service_list(await self._call("GET", target, wait=wait))

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    # -- internals -------------------------------------------------------------

    async def _call(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        expect: int = 200,
        wait: float = 0.0,
    ) -> Any:
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
        if response.status == expect:
            try:
                return response.json() if response.body else None
            except PeerError as error:
                raise EnvironmentFaultError(
                    f"the control plane at {self.url} answered {method} {target} with non-JSON"
                ) from error
        raise self._refusal(response, method, target)

    def _refusal(self, response: Response, method: str, target: str) -> Exception:
        try:
            data = response.json()
            message = data.get("error", "") if isinstance(data, dict) else ""
        except PeerError:
            data, message = {}, response.body[:200].decode("latin-1")
        if response.status == 401:
            return ConfigError("token", f"the control plane at {self.url} refused it")
        if response.status == 404 and "/leases/" in target:
            lease_id = int(target.rsplit("/", 1)[1])
            return LeaseNotFoundError(lease_id, message or "unknown to the control plane")
        if response.status == 400:
            field = data.get("field") if isinstance(data, dict) else None
            return ConfigError(field or "request", message)
        return EnvironmentFaultError(
            f"the control plane at {self.url} answered {method} {target}"
            f" with {response.status}: {message}"
        )

    def _snapshot(self, data: Any) -> Snapshot:
        try:
            return Snapshot(
                service=data["service"],
                instances=msgspec.convert(data["instances"], tuple[Instance, ...]),
                epoch=int(data["epoch"]),
                index=int(data["index"]),
            )
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as error:
            raise self._garbled(error) from error

    def _service_list(self, data: Any) -> ServiceList:
        try:
            return ServiceList(
                services=msgspec.convert(data["services"], tuple[ServiceCount, ...]),
                epoch=int(data["epoch"]),
                index=int(data["index"]),
            )
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as error:
            raise self._garbled(error) from error

    def _garbled(self, error: Exception) -> EnvironmentFaultError:
        return EnvironmentFaultError(
            f"the control plane at {self.url} answered with an unexpected listing: {error!r}"
        )
