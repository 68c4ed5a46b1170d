"""The embedded registry: a lease table in memory, membership on disk, watchers on events.

The control plane serves this over HTTP; tests and single-process tools can
use it directly. Each service has its own index, the table index of the last
change to its membership, so a watcher of one service is not woken by
changes to others. A background task expires leases at their TTL; reads
check liveness against the clock too, so an expired instance is never listed
even in the moment before the sweep.

Time the registry could not hear does not count against a lease. A holder
renewing every third of its TTL, as meshkit's heartbeat does, loses its
lease only if the registry stops hearing it for more than two thirds of the
TTL. So while it holds leases the expiry task wakes every quarter of the
shortest TTL, and whenever the registry reads its clock (that task, or a
request) and finds it has not run for more than half of it (its process was
stopped, its event loop blocked), it tells the lease table, which gives
every lease live before the gap a fresh TTL from now: renewals queued in its
sockets, or retried by their holders, keep their leases, as etcd's do when
a new leader takes over. Leases loaded at a restart get a fresh TTL from the
moment the registry starts.

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
import math
import random
from collections.abc import Mapping
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
    Weights,
    check_name,
    check_weights,
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
        self._weights: dict[str, Weights] = {}  # service -> its traffic split by version
        self._signals: dict[str, asyncio.Event] = {}  # service -> woken on its next change
        self._any_change = asyncio.Event()
        self._wakeup = asyncio.Event()  # the expiry task re-reads the next expiry
        self._expiry_task: asyncio.Task[None] | None = None
        # Lease events since the start, by kind (registered, renewed, expired, removed).
        self.lease_events: dict[str, int] = {kind.value: 0 for kind in LeaseEventKind}
        self.store_errors = 0
        self.stalls = 0  # times the registry found it had not run for half the shortest TTL
        self._stall = math.inf  # a gap this long is a stall: half the shortest TTL held
        if store is not None:
            self._load(store)
        self._heard = self._clock.monotonic()  # when the registry last ran, as far as it knows

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
        """Start expiring leases on time (needs a running event loop).

        Every lease held gets a full TTL from now: saved leases loaded at a
        restart live a TTL from the start, however long the control plane
        took to get there. From here on, a gap in the registry's running
        renews the leases it held (see the module's docstring).
        """
        if self._expiry_task is None:
            self._expiry_task = asyncio.get_running_loop().create_task(self._expire_forever())
            now = self._clock.monotonic()
            self._table.resume(since=min(self._heard, now), now=now)
            self._heard = now

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
        self._table.renew(registration.lease_id, self._now())

    async def deregister(self, registration: Registration) -> None:
        self._table.remove(registration.lease_id, self._now())

    async def lookup(self, service: str) -> Snapshot:
        return self.snapshot(check_name("service", service))

    async def services(self) -> ServiceList:
        return self.service_list()

    def service_list(self) -> ServiceList:
        """``services()`` without the await, for the control plane's handlers."""
        now = self._now()
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

    async def set_weights(self, service: str, weights: Mapping[str, int] | None) -> None:
        self.set_weights_now(service, weights)

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
        lease = self._table.register(instance.key, instance, ttl, self._now())
        self._stall = min(self._stall, ttl / 2)
        self._wakeup.set()
        return Registration(instance=instance, lease_id=lease.id, ttl=ttl)

    def renew_now(self, lease_id: int) -> float:
        """Renew by lease id; returns the TTL. Raises like ``LeaseTable.renew``."""
        return self._table.renew(lease_id, self._now()).ttl

    def deregister_now(self, lease_id: int) -> None:
        self._table.remove(lease_id, self._now())

    def set_weights_now(self, service: str, weights: Mapping[str, int] | None) -> None:
        """``set_weights`` without the await, for the control plane's handlers."""
        check_name("service", service)
        checked = None if weights is None else check_weights(service, dict(weights))
        if checked == self._weights.get(service):
            return  # no change: nobody is woken
        if checked is None:
            del self._weights[service]
        else:
            self._weights[service] = checked
        index = self._index[service] = self._table.advance()
        self._wake(service)
        if self._store is not None:
            try:
                self._store.set_weights(service, checked, index)
            except EnvironmentFaultError as error:
                self.store_errors += 1
                log.error("could not save the weights of %s: %s", service, error)

    def weights(self) -> dict[str, Weights]:
        """Every service's traffic weights."""
        return dict(self._weights)

    def leases(self) -> int:
        """How many leases the table holds (live, or expired and not yet swept)."""
        return len(self._table)

    def snapshot(self, service: str) -> Snapshot:
        now = self._now()
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
            weights=self._weights.get(service),
        )

    def _unchanged(self, previous: Snapshot) -> bool:
        return previous.epoch == self.epoch and previous.index == self._index.get(
            previous.service, 0
        )

    # -- membership bookkeeping -------------------------------------------

    def _on_change(self, event: PolicyEvent) -> None:
        assert isinstance(event, LeaseEvent)
        self.lease_events[event.kind] += 1
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
        self._wake(service)
        if self._store is not None:
            self._persist(event, instance, registered=registered)

    def _wake(self, service: str) -> None:
        signal = self._signals.pop(service, None)
        if signal is not None:
            signal.set()
        self._any_change.set()

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
        self._weights = store.weights()
        for service in self._weights:
            self._index[service] = index

    def _now(self) -> float:
        """The time, for the lease table: after a stall, every lease live before it is renewed.

        Only while the expiry task runs, which is what guarantees the
        registry a look at the clock every quarter of the shortest TTL: a
        registry used without ``start()`` reads liveness at each call,
        however far apart.
        """
        now = self._clock.monotonic()
        if self._expiry_task is not None and now - self._heard > self._stall:
            renewed = self._table.resume(since=self._heard, now=now)
            self.stalls += 1
            log.warning(
                "the registry did not run for %.1f s (its process was stopped, or its event loop"
                " blocked): %d leases get a fresh TTL instead of expiring unheard",
                now - self._heard,
                renewed,
            )
            self._wakeup.set()  # the expiry task re-reads the next expiry
        self._heard = now
        return now

    async def _expire_forever(self) -> None:
        while True:
            now = self._now()
            shortest = min((lease.ttl for lease in self._table.live(now)), default=None)
            self._stall = math.inf if shortest is None else shortest / 2
            next_expiry = self._table.next_expiry()
            self._wakeup.clear()
            # A quarter of the shortest TTL: gaps stay under half of it while all is well.
            delay = math.inf if shortest is None else shortest / 4
            if next_expiry is not None:
                delay = min(delay, max(0.0, next_expiry - now))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(None if delay == math.inf else delay):
                    await self._wakeup.wait()
            try:
                self._table.expire(self._now())
            except Exception:  # a bug here must not stop every later expiry
                log.exception("expiring leases failed; trying again at the next expiry")
                await self._clock.sleep(1.0)
