"""The registry of a control plane, reached over its HTTP API.

This is the backend services use by default: ``meshkit up`` starts the
control plane and hands its children the address and token. Failures are
translated at this boundary: an unreachable or failing control plane is an
``EnvironmentFaultError``, a refused token a ``ConfigError`` on ``token``,
a lease the control plane no longer knows ``LeaseNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from meshkit._plane_client import PlaneClient, parse_http_url
from meshkit.errors import (
    ConfigError,
    EnvironmentFaultError,
    InvalidArgumentError,
    LeaseNotFoundError,
    NotFoundError,
)
from meshkit.http import HTTPClient, Timeouts
from meshkit.policy import _check as check
from meshkit.registry._model import (
    Instance,
    Registration,
    ServiceCount,
    ServiceList,
    Snapshot,
    check_name,
    check_weights,
)

__all__ = ["RemoteRegistry", "parse_http_url"]


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
        self._plane = PlaneClient(url, token=token, http=http, timeouts=timeouts)

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
        # A registration's fields are the instance's configuration (a Service's
        # options, a sidecar's flags): the plane refusing one is a ConfigError,
        # as the embedded registry raises it.
        data = await self._call(
            "POST", "/v1/registry/instances", body=body, expect=201, invalid=ConfigError
        )
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

    async def set_weights(self, service: str, weights: Mapping[str, int] | None) -> None:
        check_name("service", service)
        target = f"/v1/registry/services/{service}/weights"
        if weights is None:
            await self._call("DELETE", target, expect=204)
            return
        body = msgspec.json.encode({"weights": check_weights(service, dict(weights))})
        await self._call("PUT", target, body=body, invalid=ConfigError)

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
        await self._plane.aclose()

    # -- internals -------------------------------------------------------------

    async def _call(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        expect: int = 200,
        wait: float = 0.0,
        invalid: Callable[[str, str], Exception] = InvalidArgumentError,
    ) -> Any:
        return await self._plane.call(
            method,
            target,
            body=body,
            expect=expect,
            wait=wait,
            not_found=_lease_not_found(target),
            invalid=invalid,
        )

    def _snapshot(self, data: Any) -> Snapshot:
        try:
            return Snapshot(
                service=data["service"],
                instances=msgspec.convert(data["instances"], tuple[Instance, ...]),
                epoch=int(data["epoch"]),
                index=int(data["index"]),
                weights=msgspec.convert(data.get("weights"), dict[str, int] | None),
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
        return self._plane.garbled(error)


def _lease_not_found(target: str) -> Callable[[str], Exception]:
    """A 404 on a lease is ``LeaseNotFoundError``; on anything else, ``NotFoundError``."""
    if "/leases/" not in target:
        return NotFoundError
    lease_id = int(target.rsplit("/", 1)[1])
    return lambda message: LeaseNotFoundError(lease_id, message or "unknown to the control plane")
