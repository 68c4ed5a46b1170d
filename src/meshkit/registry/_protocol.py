"""The interface every registry backend implements, and the conformance suite checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from meshkit.registry._model import Instance, Registration, ServiceList, Snapshot

__all__ = ["Registry"]


class Registry(Protocol):
    """Where instances announce themselves and clients find them.

    An instance registers with a TTL and must renew before it runs out, or
    it stops being listed. Reads return snapshots stamped with an
    ``(epoch, index)``; ``watch`` waits until a service's membership or
    traffic weights differ from a snapshot's, which is how clients keep a
    local cache current without asking on every call.

    Errors: ``LeaseNotFoundError`` or ``LeaseExpiredError`` from ``renew``
    and ``deregister`` when the lease is gone (register again);
    ``EnvironmentFaultError`` when the backend cannot be reached;
    ``ConfigError`` for an invalid instance or TTL.
    """

    async def register(self, instance: Instance, *, ttl: float) -> Registration:
        """List ``instance`` for ``ttl`` seconds, replacing any earlier listing of its key."""
        ...

    async def renew(self, registration: Registration) -> None:
        """Extend the registration by its TTL from now."""
        ...

    async def deregister(self, registration: Registration) -> None:
        """Stop listing the instance now."""
        ...

    async def lookup(self, service: str) -> Snapshot:
        """The live instances of ``service`` (an empty snapshot if it has none)."""
        ...

    async def services(self) -> ServiceList:
        """Every service with live instances."""
        ...

    async def set_weights(self, service: str, weights: Mapping[str, int] | None) -> None:
        """Split ``service``'s traffic between versions by ``weights`` (``None``: no split).

        Kept until changed, whether or not the service has instances; a
        change is a change of the service's snapshot, which wakes its watchers.
        """
        ...

    async def watch(self, previous: Snapshot, *, wait: float) -> Snapshot:
        """The service's next snapshot once its membership or weights change after ``previous``.

        Returns at once if it already has; returns a snapshot equal in
        membership after ``wait`` seconds if nothing changed. (It is a long
        poll, not a timeout: running out of time is a normal answer.)
        """
        ...

    async def aclose(self) -> None:
        """Release connections; registrations are not removed."""
        ...
