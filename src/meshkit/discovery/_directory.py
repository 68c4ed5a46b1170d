"""A watched local cache of service instances and their traffic weights: discovery without
a registry round trip.

The first lookup of a service fetches its snapshot and starts one task that
long-polls the registry for changes; every later lookup reads the cache.
When the registry cannot be reached the cache keeps its last listing (a
service that was reachable a moment ago most likely still is, which is what
Eureka's clients do too) and the watcher retries with backoff until it can
reach the registry again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from meshkit._clock import Clock, SystemClock
from meshkit._tasks import stop
from meshkit.policy import Backoff
from meshkit.registry import Instance, Registry, Snapshot, check_name

__all__ = ["Directory"]

Listener = Callable[[Snapshot], None]
log = logging.getLogger("meshkit.discovery")

# How long one long poll may wait. Shorter than the control plane's 300 s
# limit, and short enough that a watcher notices a dead registry reasonably soon.
_WAIT = 60.0
_RETRY = Backoff(initial=0.1, maximum=5.0)


class Directory:
    """Instances per service, kept current by watching the registry."""

    def __init__(
        self,
        registry: Registry,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._registry = registry
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._first: dict[str, asyncio.Future[None]] = {}
        self._listeners: list[Listener] = []
        self.errors = 0  # registry failures seen by the watchers

    def listen(self, listener: Listener) -> None:
        """Call ``listener(snapshot)`` whenever a watched service's instances or weights change."""
        self._listeners.append(listener)

    def cached(self, service: str) -> tuple[Instance, ...] | None:
        """The cached instances, or ``None`` if the service is not watched yet."""
        snapshot = self._snapshots.get(service)
        return None if snapshot is None else snapshot.instances

    async def instances(self, service: str) -> tuple[Instance, ...]:
        """The instances of ``service``, from the cache once it is watched (see ``snapshot``)."""
        return (await self.snapshot(service)).instances

    async def snapshot(self, service: str) -> Snapshot:
        """The snapshot of ``service`` (instances and weights), from the cache once it is watched.

        The first call for a service waits for its first snapshot and raises
        what the registry raised (``EnvironmentFaultError`` when it cannot be
        reached) if that fails; the next call tries again.
        """
        snapshot = self._snapshots.get(service)
        if snapshot is not None:
            return snapshot
        check_name("service", service)
        first = self._first.get(service)
        if first is None:
            first = self._first[service] = asyncio.get_running_loop().create_future()
            self._watchers[service] = asyncio.get_running_loop().create_task(
                self._watch(service, first)
            )
        await asyncio.shield(first)
        return self._snapshots[service]

    async def aclose(self) -> None:
        await stop(*self._watchers.values())
        self._watchers.clear()

    async def _watch(self, service: str, first: asyncio.Future[None]) -> None:
        try:
            snapshot = await self._registry.lookup(service)
        except Exception as error:  # noqa: BLE001 (handed to every caller waiting on it)
            # Every caller waiting for this first answer gets the error; the
            # next lookup starts over.
            del self._first[service], self._watchers[service]
            first.set_exception(error)
            return
        self._update(snapshot)
        first.set_result(None)
        failures = 0
        while True:
            try:
                snapshot = await self._registry.watch(snapshot, wait=_WAIT)
            except Exception as error:  # noqa: BLE001 (the watcher must outlive any one failure)
                # Keep serving the last listing; say why once, then back off.
                self.errors += 1
                failures += 1
                if failures == 1:
                    log.warning("watching %r: %s; retrying with backoff", service, error)
                await self._clock.sleep(_RETRY.delay(failures, self._rng))
                continue
            if failures:
                log.info("watching %r again", service)
            failures = 0
            self._update(snapshot)

    def _update(self, snapshot: Snapshot) -> None:
        previous = self._snapshots.get(snapshot.service)
        self._snapshots[snapshot.service] = snapshot
        if (
            previous is None
            or previous.instances != snapshot.instances
            or previous.weights != snapshot.weights
        ):
            for listener in self._listeners:
                listener(snapshot)
