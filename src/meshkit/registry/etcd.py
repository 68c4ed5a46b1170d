"""The registry in etcd: for services spread over more than one machine.

Each instance is a key ``{prefix}/{service}/{id}`` holding its JSON,
attached to a lease of its own; etcd deletes the key when the lease runs
out, and a prefix watch sees it go. A service's traffic weights are the
key ``{prefix}/{service}/~weights`` (no instance id starts with ``~``),
under the same prefix, so the same watch sees them change. A snapshot's position is etcd's: the
epoch is the cluster id and the index the store revision of the read, so
``watch`` resumes from exactly the next revision and misses nothing.

Registering a key again revokes the lease of the registration it replaces,
so that one can no longer be renewed, as every backend behaves. etcd raises
a TTL below its minimum (about 2 s) and rounds up to whole seconds; the
granted TTL is the one in the returned ``Registration``.

Needs the ``etcd`` extra (``pip install 'meshkit[etcd]'``, which brings
aetcd, an asyncio client on etcd's gRPC API). Every aetcd and gRPC error is
translated here: a lost lease is ``LeaseNotFoundError``, an unreachable or
failing etcd ``EnvironmentFaultError``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from meshkit._optional import require
from meshkit.errors import ConfigError, EnvironmentFaultError, LeaseNotFoundError, UsageError
from meshkit.policy import _check as check
from meshkit.registry._embedded import MAX_TTL, MIN_TTL
from meshkit.registry._model import (
    Instance,
    Registration,
    ServiceCount,
    ServiceList,
    Snapshot,
    check_name,
    check_weights,
)

__all__ = ["EtcdRegistry"]

T = TypeVar("T")
_decode = msgspec.json.Decoder(Instance).decode
_decode_weights = msgspec.json.Decoder(dict[str, int]).decode
_WEIGHTS = "~weights"
_encode = msgspec.json.Encoder().encode


def _aetcd() -> Any:
    return require("aetcd", extra="etcd", what="the etcd registry")


def _parse(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("etcd", "http") or not parts.hostname:
        raise ConfigError("url", f"must look like etcd://127.0.0.1:2379, got {url!r}")
    try:
        return parts.hostname, parts.port or 2379
    except ValueError as error:
        raise ConfigError("url", f"has a bad port: {url!r}") from error


class EtcdRegistry:
    """A ``Registry`` in the etcd cluster at ``url`` (``etcd://host:port``)."""

    def __init__(
        self, url: str = "etcd://127.0.0.1:2379", *, prefix: str = "/meshkit/registry"
    ) -> None:
        self.url = url
        host, port = _parse(url)
        if not prefix.startswith("/") or prefix.endswith("/"):
            raise ConfigError("prefix", f"must start with '/' and not end with one: {prefix!r}")
        self._prefix = prefix
        self._aetcd = _aetcd()
        self._client = self._aetcd.Client(host, port, timeout=5)
        self._cluster_id: int | None = None  # learnt from the first reply

    async def __aenter__(self) -> EtcdRegistry:
        await self._guard(self._client.connect())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _key(self, instance: Instance) -> bytes:
        return f"{self._prefix}/{instance.service}/{instance.id}".encode()

    def _service_prefix(self, service: str) -> bytes:
        # The trailing slash keeps service "web" from matching "web-admin".
        return f"{self._prefix}/{service}/".encode()

    # -- the Registry protocol ----------------------------------------------

    async def register(self, instance: Instance, *, ttl: float) -> Registration:
        if not isinstance(instance, Instance):
            raise UsageError(f"register() takes an Instance, got {type(instance).__name__}")
        ttl = check.seconds("ttl", ttl)
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ConfigError("ttl", f"must be between {MIN_TTL:g} and {MAX_TTL:g} seconds")
        lease = await self._guard(self._client.lease(math.ceil(ttl)))
        put = await self._guard(
            self._client.put(self._key(instance), _encode(instance), lease=lease.id, prev_kv=True)
        )
        replaced = put.prev_kv.lease if put.prev_kv is not None else 0
        if replaced and replaced != lease.id:
            await self._revoke_quietly(replaced)
        return Registration(instance=instance, lease_id=lease.id, ttl=float(lease.ttl))

    async def renew(self, registration: Registration) -> None:
        reply = await self._guard(self._client.refresh_lease(registration.lease_id))
        if reply is None or reply.TTL <= 0:
            raise LeaseNotFoundError(registration.lease_id, "expired or revoked in etcd")

    async def deregister(self, registration: Registration) -> None:
        try:
            await self._guard(self._client.revoke_lease(registration.lease_id))
        except EnvironmentFaultError as error:
            if "lease not found" in str(error.__cause__):
                raise LeaseNotFoundError(registration.lease_id, "unknown to etcd") from error
            raise

    async def set_weights(self, service: str, weights: Mapping[str, int] | None) -> None:
        check_name("service", service)
        key = self._service_prefix(service) + _WEIGHTS.encode()
        if weights is None:
            await self._guard(self._client.delete(key))
        else:
            await self._guard(self._client.put(key, _encode(check_weights(service, dict(weights)))))

    async def lookup(self, service: str) -> Snapshot:
        check_name("service", service)
        reply = await self._guard(self._client.get_prefix(self._service_prefix(service)))
        self._cluster_id = reply.header.cluster_id
        instances, weights = [], None
        for kv in reply:
            if kv.key.endswith(_WEIGHTS.encode()):
                weights = _decode_weights(kv.value)
            else:
                instances.append(_decode(kv.value))
        return Snapshot(
            service=service,
            instances=tuple(instances),
            epoch=reply.header.cluster_id,
            index=reply.header.revision,
            weights=weights,
        )

    async def services(self) -> ServiceList:
        reply = await self._guard(
            self._client.get_prefix(f"{self._prefix}/".encode(), keys_only=True)
        )
        counts: dict[str, int] = {}
        skip = len(self._prefix) + 1
        for kv in reply:
            service, _, name = kv.key.decode()[skip:].partition("/")
            if name != _WEIGHTS:
                counts[service] = counts.get(service, 0) + 1
        return ServiceList(
            services=tuple(ServiceCount(name=n, instances=c) for n, c in sorted(counts.items())),
            epoch=reply.header.cluster_id,
            index=reply.header.revision,
        )

    async def watch(self, previous: Snapshot, *, wait: float) -> Snapshot:
        service = check_name("service", previous.service)
        check.seconds("wait", wait, allow_zero=True)
        if self._cluster_id is None or previous.epoch == self._cluster_id:
            # From the revision after the snapshot's: a change made since then
            # is returned at once from etcd's history, a later one when it comes.
            try:
                await self._guard(
                    self._client.watch_prefix_once(
                        self._service_prefix(service),
                        timeout=wait,
                        start_revision=previous.index + 1,
                    )
                )
            except EnvironmentFaultError as error:
                quiet = self._aetcd.WatchTimeoutError | self._aetcd.RevisionCompactedError
                if not isinstance(error.__cause__, quiet):
                    raise
        return await self.lookup(service)

    async def aclose(self) -> None:
        await self._client.close()

    # -- internals ---------------------------------------------------------------

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self._guard(self._client.revoke_lease(lease_id))
        except EnvironmentFaultError as error:
            if "lease not found" not in str(error.__cause__):
                raise

    async def _guard(self, call: Awaitable[T]) -> T:
        """Await an aetcd call, translating its errors at this boundary."""
        try:
            return await call
        except asyncio.CancelledError:
            raise
        except self._aetcd.ClientError as error:
            raise EnvironmentFaultError(f"etcd at {self.url}: {error}") from error
        except (OSError, TimeoutError) as error:
            raise EnvironmentFaultError(f"etcd at {self.url} is unreachable: {error}") from error
