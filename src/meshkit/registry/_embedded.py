"""The embedded registry: a lease table in memory, membership on disk, watchers on events.

The control plane serves this over HTTP; tests and single-process tools can
use it directly. Each service has its own index, the table index of the last
change to its membership, so a watcher of one service is not woken by
changes to others. A background task expires leases at their TTL; reads
check liveness against the clock too, so an expired instance is never listed
even in the moment before the sweep.

Every membership change goes through one hook on the lease table, including
an expiry found by a late ``renew``, so each one advances the service's
index, wakes its watchers and is persisted the same way. Memory comes first:
a disk that fails (full, locked) is logged and counted in ``store_errors``
but stops neither expiry nor watchers; what it failed to save is at worst an
instance that registers again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from pathlib import Path

from meshkit._clock import Clock, SystemClock
from meshkit._tasks import stop
from meshkit.errors import ConfigError, EnvironmentFaultError, UsageError
from meshkit.policy import LeaseEvent, LeaseEventKind, LeaseTable, PolicyEvent
from meshkit.policy import _check as check
from meshkit.registry._model import (
    Instance,
    Registration,
    ServiceCount,
    ServiceList,
    Snapshot,
    check_name,
)
from meshkit.registry._store import RegistryStore

__all__ = ["MAX_TTL", "MIN_TTL", "EmbeddedRegistry"]

log = logging.getLogger("meshkit.registry")

# A TTL below a second would need renewals faster than any scheduler keeps
# reliably; above an hour, a crashed instance would linger for most of a day.
MIN_TTL = 1.0
MAX_TTL = 3600.0


class EmbeddedRegistry:
    """A ``Registry`` held in this process, persisted to ``path`` if one is given.

    Use ``async with EmbeddedRegistry.open(...)`` or ``start()``/``aclose()``:
    the expiry task runs between them.
    """

    def __init__(
        self,
        store: RegistryStore | None = None,
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock or SystemClock()
        self._store = store
        self._table: LeaseTable[Instance] = LeaseTable(
            rng=rng or random.Random(), history=1, hook=self._on_change
        )
        self._members: dict[str, dict[str, int]] = {}  # service -> key -> lease id
        self._index: dict[str, int] = {}  # service -> index of its last change
        self._signals: dict[str, asyncio.Event] = {}  # service -> woken on its next change
        self._any_change = asyncio.Event()
        self._wakeup = asyncio.Event()  # the expiry task re-reads the next expiry
        self._expiry_task: asyncio.Task[None] | None = None
        self.store_errors = 0
        if store is not None:
            self._load(store)

    @classmethod
    def open(
        cls, path: Path, *, clock: Clock | None = None, rng: random.Random | None = None
    ) -> EmbeddedRegistry:
        """A registry persisted in the SQLite file at ``path`` (created if missing)."""
        return cls(RegistryStore(path), clock=clock, rng=rng)

    @property
    def epoch(self) -> int:
        return self._table.epoch

    async def __aenter__(self) -> EmbeddedRegistry:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start expiring leases on time (needs a running event loop)."""
        if self._expiry_task is None:
            self._expiry_task = asyncio.get_running_loop().create_task(self._expire_forever())

    async def aclose(self) -> None:
        if self._expiry_task is not None:
            await stop(self._expiry_task)
            self._expiry_task = None
        if self._store is not None:
            self._store.close()

    # -- the Registry protocol ----------------------------------------------

    async def register(self, instance: Instance, *, ttl: float) -> Registration:
        return self.register_now(instance, ttl=ttl)

    async def renew(self, registration: Registration) -> None:
        self._table.renew(registration.lease_id, self._clock.monotonic())

    async def deregister(self, registration: Registration) -> None:
        self._table.remove(registration.lease_id, self._clock.monotonic())

    async def lookup(self, service: str) -> Snapshot:
        return self.snapshot(check_name("service", service))

    async def services(self) -> ServiceList:
        return self.service_list()

    def service_list(self) -> ServiceList:
        """``services()`` without the await, for the control plane's handlers."""
        now = self._clock.monotonic()
        counts = {}
        for service, members in self._members.items():
            live = sum(1 for key in members if self._table.get(key, now) is not None)
            if live:
                counts[service] = live
        return ServiceList(
            services=tuple(ServiceCount(name=n, instances=c) for n, c in sorted(counts.items())),
            epoch=self.epoch,
            index=self._table.index,
        )

    async def watch(self, previous: Snapshot, *, wait: float) -> Snapshot:
        service = check_name("service", previous.service)
        check.seconds("wait", wait, allow_zero=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while self._unchanged(previous):
                    signal = self._signals.get(service)
                    if signal is None:
                        signal = self._signals[service] = asyncio.Event()
                    await signal.wait()
        return self.snapshot(service)

    async def watch_services(self, previous: ServiceList, *, wait: float) -> ServiceList:
        """The next service list once any membership changes after ``previous``."""
        check.seconds("wait", wait, allow_zero=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                while previous.epoch == self.epoch and previous.index == self._table.index:
                    self._any_change.clear()
                    await self._any_change.wait()
        return self.service_list()

    # -- synchronous forms, for the control plane's hot path -----------------

    def register_now(self, instance: Instance, *, ttl: float) -> Registration:
        if not isinstance(instance, Instance):
            raise UsageError(f"register() takes an Instance, got {type(instance).__name__}")
        ttl = check.seconds("ttl", ttl)
        if not MIN_TTL <= ttl <= MAX_TTL:
            raise ConfigError("ttl", f"must be between {MIN_TTL:g} and {MAX_TTL:g} seconds")
        lease = self._table.register(instance.key, instance, ttl, self._clock.monotonic())
        self._wakeup.set()
        return Registration(instance=instance, lease_id=lease.id, ttl=ttl)

    def renew_now(self, lease_id: int) -> float:
        """Renew by lease id; returns the TTL. Raises like ``LeaseTable.renew``."""
        return self._table.renew(lease_id, self._clock.monotonic()).ttl

    def deregister_now(self, lease_id: int) -> None:
        self._table.remove(lease_id, self._clock.monotonic())

    def snapshot(self, service: str) -> Snapshot:
        now = self._clock.monotonic()
        instances = []
        for key in self._members.get(service, {}):
            lease = self._table.get(key, now)
            if lease is not None:
                instances.append(lease.value)
        return Snapshot(
            service=service,
            instances=tuple(instances),
            epoch=self.epoch,
            index=self._index.get(service, 0),
        )

    def _unchanged(self, previous: Snapshot) -> bool:
        return previous.epoch == self.epoch and previous.index == self._index.get(
            previous.service, 0
        )

    # -- membership bookkeeping -------------------------------------------

    def _on_change(self, event: PolicyEvent) -> None:
        assert isinstance(event, LeaseEvent)
        if event.kind is LeaseEventKind.RENEWED:
            return
        instance: Instance = event.value
        service = instance.service
        members = self._members.setdefault(service, {})
        registered = event.kind is LeaseEventKind.REGISTERED
        if registered:
            members[event.key] = event.lease_id
        elif members.get(event.key) == event.lease_id:
            del members[event.key]
            if not members:
                del self._members[service]
        self._index[service] = event.index
        signal = self._signals.pop(service, None)
        if signal is not None:
            signal.set()
        self._any_change.set()
        if self._store is not None:
            self._persist(event, instance, registered=registered)

    def _persist(
        self, event: LeaseEvent[Instance], instance: Instance, *, registered: bool
    ) -> None:
        assert self._store is not None
        try:
            if registered:
                lease = self._table.get(event.key, event.at)
                ttl = lease.ttl if lease is not None else 0.0
                self._store.save(event.lease_id, event.key, instance, ttl, event.index)
            else:
                self._store.delete(event.lease_id, event.index)
        except EnvironmentFaultError as error:
            self.store_errors += 1
            log.error("could not save a change to %s: %s", event.key, error)

    def _load(self, store: RegistryStore) -> None:
        epoch, index, leases = store.load()
        if epoch is None:
            store.set_epoch(self._table.epoch, self._table.index)
            return
        self._table.restore(
            ((lease_id, key, instance, ttl) for lease_id, key, instance, ttl in leases),
            epoch=epoch,
            index=index,
            now=self._clock.monotonic(),
        )
        for lease_id, key, instance, _ in leases:
            self._members.setdefault(instance.service, {})[key] = lease_id
            self._index[instance.service] = index

    async def _expire_forever(self) -> None:
        while True:
            next_expiry = self._table.next_expiry()
            self._wakeup.clear()
            delay = None if next_expiry is None else max(0.0, next_expiry - self._clock.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wakeup.wait()
            try:
                self._table.expire(self._clock.monotonic())
            except Exception:  # a bug here must not stop every later expiry
                log.exception("expiring leases failed; trying again at the next expiry")
                await self._clock.sleep(1.0)
