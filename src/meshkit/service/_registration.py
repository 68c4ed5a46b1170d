"""Who an instance is in the registry, and the heartbeat that keeps it listed.

The heartbeat renews from a thread with an event loop of its own (see
``_heartbeat``). Given a registry URL, that thread opens a client of its
own, so renewals go on however busy the service's loop is. A registry given
as an object lives on the service's loop, and no object bound to one event
loop may be used from another; the thread then runs each call on the
service's loop. Such a registry is in-process (a test's, a tool's), where a
starved loop is the caller's to see.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from meshkit.registry import (
    Instance,
    Registration,
    Registry,
    ServiceList,
    Snapshot,
    open_registry,
)
from meshkit.service._heartbeat import Heartbeat

__all__ = ["heartbeat_for", "instance_for"]

T = TypeVar("T")


def instance_for(
    *,
    service: str,
    instance_id: str | None,
    host: str,
    port: int,
    version: str,
    metadata: Mapping[str, str],
) -> Instance:
    """The instance as registered; its id defaults to ``{service}-{hostname}-{port}``."""
    return Instance(
        service=service,
        id=instance_id or _default_id(service, port),
        host=host,
        port=port,
        version=version,
        metadata=dict(metadata),
    )


def _default_id(name: str, port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:60].strip("-._") or "host"
    return f"{name}-{host}-{port}"


def heartbeat_for(
    registry: str | Registry, *, token: str | None, instance: Instance, ttl: float
) -> Heartbeat:
    """A heartbeat for ``instance`` (not started); call it on the service's event loop."""
    if isinstance(registry, str):
        url = registry
        return Heartbeat(lambda: open_registry(url, token=token), instance, ttl=ttl)
    loop = asyncio.get_running_loop()
    return Heartbeat(lambda: _OnLoop(registry, loop), instance, ttl=ttl)


class _OnLoop:
    """``registry``, which lives on ``loop``, called from another thread's event loop.

    A call that the caller gives up on (the heartbeat bounds each beat) is
    cancelled on ``loop`` too. Closing this closes nothing: the registry is
    its owner's.
    """

    def __init__(self, registry: Registry, loop: asyncio.AbstractEventLoop) -> None:
        self._registry = registry
        self._loop = loop

    async def _call(self, call: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._loop))

    async def register(self, instance: Instance, *, ttl: float) -> Registration:
        return await self._call(self._registry.register(instance, ttl=ttl))

    async def renew(self, registration: Registration) -> None:
        await self._call(self._registry.renew(registration))

    async def deregister(self, registration: Registration) -> None:
        await self._call(self._registry.deregister(registration))

    async def lookup(self, service: str) -> Snapshot:
        return await self._call(self._registry.lookup(service))

    async def services(self) -> ServiceList:
        return await self._call(self._registry.services())

    async def set_weights(self, service: str, weights: Mapping[str, int] | None) -> None:
        await self._call(self._registry.set_weights(service, weights))

    async def watch(self, previous: Snapshot, *, wait: float) -> Snapshot:
        return await self._call(self._registry.watch(previous, wait=wait))

    async def aclose(self) -> None:
        pass
