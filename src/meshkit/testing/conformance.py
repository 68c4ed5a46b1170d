"""Conformance suites: one set of tests every backend of an interface must pass.

Subclass a suite in a test module and provide its fixture; every test then
runs against your backend::

    class TestMyRegistry(RegistryConformance):
        @pytest.fixture
        async def registry(self) -> AsyncIterator[Registry]:
            async with MyRegistry(...) as registry:
                yield registry

The suites run in real time, because real servers (etcd, NATS, Redis) keep
their own clocks; they wait on conditions with a deadline, never on sleeps.
They need pytest and pytest-asyncio.
"""

from __future__ import annotations

import asyncio
import secrets

import pytest

from meshkit._clock import SystemClock
from meshkit.errors import ConfigError, LeaseError
from meshkit.policy import RateLimit
from meshkit.ratelimit import LimitStore
from meshkit.registry import Instance, Registration, Registry, Snapshot
from meshkit.testing._bus import BusConformance
from meshkit.testing._outbox import Event, OutboxConformance, OutboxDatabase, RecordingBus
from meshkit.testing._saga import SagaDatabase, SagaStoreConformance

__all__ = [
    "BusConformance",
    "Event",
    "LimitStoreConformance",
    "OutboxConformance",
    "OutboxDatabase",
    "RecordingBus",
    "RegistryConformance",
    "SagaDatabase",
    "SagaStoreConformance",
]

# Short enough for a quick suite, long enough for etcd (whose minimum is
# about 1.5 s) and for a loaded CI machine to renew in time.
TTL = 2.0


class RegistryConformance:
    """What every ``Registry`` backend must do. Provide a ``registry`` fixture."""

    @pytest.fixture
    def service(self) -> str:
        """A service name no other test (or earlier run) uses."""
        return f"conf-{secrets.token_hex(5)}"

    @staticmethod
    def instance(service: str, number: int = 1, **changes: object) -> Instance:
        fields: dict[str, object] = {
            "service": service,
            "id": f"{service}-{number}",
            "host": "127.0.0.1",
            "port": 9000 + number,
            "version": "1.0.0",
            "metadata": {"zone": "a"},
        }
        fields.update(changes)
        return Instance(**fields)  # type: ignore[arg-type]

    @staticmethod
    async def wait_for_ids(
        registry: Registry, service: str, ids: set[str], *, within: float
    ) -> float:
        """Watch until the service lists exactly ``ids``; returns the seconds it took."""
        clock = SystemClock()
        start = clock.monotonic()
        snapshot = await registry.lookup(service)
        async with asyncio.timeout(within):
            while {i.id for i in snapshot.instances} != ids:
                snapshot = await registry.watch(snapshot, wait=within)
        return clock.monotonic() - start

    # -- registration and lookup ---------------------------------------------

    async def test_a_registered_instance_is_listed(self, registry: Registry, service: str) -> None:
        """lookup() returns the registered instance with every field intact."""
        instance = self.instance(service)
        registration = await registry.register(instance, ttl=TTL)
        assert isinstance(registration, Registration)
        assert registration.instance == instance
        assert registration.ttl == TTL
        snapshot = await registry.lookup(service)
        assert snapshot.service == service
        assert snapshot.instances == (instance,)
        await registry.deregister(registration)

    async def test_an_unknown_service_has_no_instances(
        self, registry: Registry, service: str
    ) -> None:
        """Looking up a service nobody registered is an empty snapshot, not an error."""
        snapshot = await registry.lookup(service)
        assert snapshot.instances == ()

    async def test_registering_a_key_again_replaces_it(
        self, registry: Registry, service: str
    ) -> None:
        """Registering the same service/id again replaces it; the old lease is gone."""
        first = await registry.register(self.instance(service, port=9001), ttl=TTL)
        second = await registry.register(self.instance(service, port=9002), ttl=TTL)
        snapshot = await registry.lookup(service)
        assert [i.port for i in snapshot.instances] == [9002]
        with pytest.raises(LeaseError):
            await registry.renew(first)
        await registry.deregister(second)

    async def test_deregistering_removes_it_at_once(self, registry: Registry, service: str) -> None:
        """After deregister() the instance is no longer listed, and its lease is gone."""
        keep = await registry.register(self.instance(service, 1), ttl=TTL)
        gone = await registry.register(self.instance(service, 2), ttl=TTL)
        await registry.deregister(gone)
        assert {i.id for i in (await registry.lookup(service)).instances} == {f"{service}-1"}
        with pytest.raises(LeaseError):
            await registry.renew(gone)
        await registry.deregister(keep)

    async def test_services_lists_each_with_its_count(
        self, registry: Registry, service: str
    ) -> None:
        """services() includes every service with live instances and how many."""
        registrations = [
            await registry.register(self.instance(service, n), ttl=TTL) for n in (1, 2)
        ]
        listing = await registry.services()
        counts = {entry.name: entry.instances for entry in listing.services}
        assert counts[service] == 2
        for registration in registrations:
            await registry.deregister(registration)
        listing = await registry.services()
        assert service not in {entry.name for entry in listing.services}

    # -- leases --------------------------------------------------------------

    async def test_renewing_keeps_an_instance_past_its_ttl(
        self, registry: Registry, service: str
    ) -> None:
        """Renewed every TTL/3, an instance stays listed for three TTLs."""
        registration = await registry.register(self.instance(service), ttl=TTL)
        for _ in range(9):
            await asyncio.sleep(TTL / 3)  # noqa: TID251 (the renewal schedule being tested)
            await registry.renew(registration)
            assert len((await registry.lookup(service)).instances) == 1
        await registry.deregister(registration)

    async def test_an_instance_that_stops_renewing_leaves_within_ttl_plus_one_second(
        self, registry: Registry, service: str
    ) -> None:
        """Without renewals the instance disappears, and a watcher sees it go within TTL + 1 s."""
        keep = await registry.register(self.instance(service, 1), ttl=TTL * 10)
        await registry.register(self.instance(service, 2), ttl=TTL)
        # Wait well past the bound, so a late removal fails with how late it was.
        took = await self.wait_for_ids(registry, service, {f"{service}-1"}, within=TTL + 5.0)
        assert TTL - 0.5 <= took <= TTL + 1.0, f"left after {took:.2f}s with a {TTL:g}s TTL"
        await registry.deregister(keep)

    async def test_a_lapsed_lease_cannot_be_renewed(self, registry: Registry, service: str) -> None:
        """Renewing after expiry raises a LeaseError: the holder must register again."""
        registration = await registry.register(self.instance(service), ttl=TTL)
        await self.wait_for_ids(registry, service, set(), within=TTL + 1.5)
        with pytest.raises(LeaseError):
            await registry.renew(registration)
        again = await registry.register(self.instance(service), ttl=TTL)
        assert len((await registry.lookup(service)).instances) == 1
        await registry.deregister(again)

    # -- watching ------------------------------------------------------------

    async def test_watch_wakes_on_each_change(self, registry: Registry, service: str) -> None:
        """A watcher is woken by a registration and by a deregistration, with the new listing."""
        before = await registry.lookup(service)
        # Whether the watch reaches the backend before or after the change,
        # it answers with the change: from `before` it is behind either way.
        watcher = asyncio.create_task(registry.watch(before, wait=10))
        registration = await registry.register(self.instance(service), ttl=TTL)
        after = await asyncio.wait_for(watcher, 5)
        assert [i.id for i in after.instances] == [f"{service}-1"]
        watcher = asyncio.create_task(registry.watch(after, wait=10))
        await registry.deregister(registration)
        assert (await asyncio.wait_for(watcher, 5)).instances == ()

    async def test_watch_answers_at_once_when_already_behind(
        self, registry: Registry, service: str
    ) -> None:
        """Watching from an old snapshot returns the current one without waiting."""
        stale = await registry.lookup(service)
        registration = await registry.register(self.instance(service), ttl=TTL)
        current = await asyncio.wait_for(registry.watch(stale, wait=30), 5)
        assert len(current.instances) == 1
        await registry.deregister(registration)

    async def test_watch_without_changes_returns_after_its_wait(
        self, registry: Registry, service: str
    ) -> None:
        """With nothing changing, watch() returns the same membership once its wait is over."""
        registration = await registry.register(self.instance(service), ttl=TTL * 5)
        snapshot = await registry.lookup(service)
        again = await asyncio.wait_for(registry.watch(snapshot, wait=1.0), 5)
        assert again.instances == snapshot.instances
        await registry.deregister(registration)

    async def test_watch_is_not_woken_by_other_services(
        self, registry: Registry, service: str
    ) -> None:
        """A change to another service does not end a watch early."""
        snapshot = await registry.lookup(service)
        watcher = asyncio.create_task(registry.watch(snapshot, wait=1.5))
        other = await registry.register(self.instance(f"{service}-x"), ttl=TTL)
        await asyncio.sleep(0.5)  # noqa: TID251 (time for a wrong wake-up to happen)
        assert not watcher.done()
        assert (await asyncio.wait_for(watcher, 5)).instances == ()
        await registry.deregister(other)

    # -- bad input ---------------------------------------------------------------

    async def test_bad_input_names_the_problem(self, registry: Registry, service: str) -> None:
        """An invalid TTL or service name is a ConfigError naming the field."""
        with pytest.raises(ConfigError) as caught:
            await registry.register(self.instance(service), ttl=0)
        assert caught.value.key == "ttl"
        with pytest.raises(ConfigError) as caught:
            await registry.lookup("Not A Name")
        assert caught.value.key == "service"

    async def test_snapshots_carry_a_position(self, registry: Registry, service: str) -> None:
        """Every snapshot has an epoch and index, and a change moves the index."""
        before = await registry.lookup(service)
        registration = await registry.register(self.instance(service), ttl=TTL)
        after = await registry.lookup(service)
        assert isinstance(after, Snapshot)
        assert (after.epoch, after.index) != (before.epoch, before.index)
        await registry.deregister(registration)

    # -- traffic weights -----------------------------------------------------------

    async def test_weights_are_kept_with_the_instances_and_counted_as_none(
        self, registry: Registry, service: str
    ) -> None:
        """A service's weights come with its snapshot, with or without instances; they are
        not an instance (the service list does not count them) and None removes them."""
        assert (await registry.lookup(service)).weights is None
        await registry.set_weights(service, {"1.1.0": 5, "1.0.0": 95})
        alone = await registry.lookup(service)
        assert (alone.instances, alone.weights) == ((), {"1.1.0": 5, "1.0.0": 95})
        assert service not in {count.name for count in (await registry.services()).services}
        registration = await registry.register(self.instance(service), ttl=TTL)
        both = await registry.lookup(service)
        assert [i.id for i in both.instances] == [f"{service}-1"]
        assert both.weights == {"1.1.0": 5, "1.0.0": 95}
        counts = {count.name: count.instances for count in (await registry.services()).services}
        assert counts[service] == 1
        await registry.set_weights(service, None)
        assert (await registry.lookup(service)).weights is None
        await registry.deregister(registration)

    async def test_a_weight_change_wakes_a_watcher(self, registry: Registry, service: str) -> None:
        """Setting and removing weights each wake a watcher of the service, with the change."""
        before = await registry.lookup(service)
        watcher = asyncio.create_task(registry.watch(before, wait=10))
        await registry.set_weights(service, {"2.0.0": 100, "1.0.0": 0})
        after = await asyncio.wait_for(watcher, 5)
        assert after.weights == {"2.0.0": 100, "1.0.0": 0}
        watcher = asyncio.create_task(registry.watch(after, wait=10))
        await registry.set_weights(service, None)
        assert (await asyncio.wait_for(watcher, 5)).weights is None

    async def test_bad_weights_are_refused_naming_them(
        self, registry: Registry, service: str
    ) -> None:
        """No version, a weight out of range, or nothing to choose: a ConfigError on weights."""
        for bad in ({}, {"1.0.0": -1}, {"1.0.0": 0, "1.1.0": 0}, {"1.0.0": 1.5}):
            with pytest.raises(ConfigError) as caught:
                await registry.set_weights(service, bad)  # type: ignore[arg-type]
            assert caught.value.key.startswith(f"weights.{service}")
        assert (await registry.lookup(service)).weights is None


# A limit that refills too slowly (one token per 100 s) to matter in a test.
_SLOW = 0.01


class LimitStoreConformance:
    """What every ``LimitStore`` must do. Provide a ``store`` fixture.

    Keys come from the ``key`` fixture, unique per test, so a store shared
    with other runs (a Redis) sees nothing of theirs.
    """

    @pytest.fixture
    def key(self) -> str:
        return f"conf-{secrets.token_hex(5)}"

    async def test_the_burst_is_admitted_then_refused(self, store: LimitStore, key: str) -> None:
        limit = RateLimit(capacity=5, per_second=_SLOW)
        decisions = [(await store.acquire([(key, limit)]))[0] for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
        refused = decisions[-1]
        assert 0 < refused.retry_after <= 100.0
        assert 400 < refused.reset_after <= 500.0

    async def test_a_cost_takes_that_many_tokens(self, store: LimitStore, key: str) -> None:
        limit = RateLimit(capacity=5, per_second=_SLOW)
        first = (await store.acquire([(key, limit)], cost=3))[0]
        second = (await store.acquire([(key, limit)], cost=3))[0]
        assert (first.allowed, first.remaining) == (True, 2)
        assert (second.allowed, second.remaining) == (False, 2)

    async def test_a_refusal_by_one_key_charges_none(self, store: LimitStore, key: str) -> None:
        wide, narrow = (
            RateLimit(capacity=3, per_second=_SLOW),
            RateLimit(capacity=1, per_second=_SLOW),
        )
        both = [(f"{key}-wide", wide), (f"{key}-narrow", narrow)]
        assert [d.allowed for d in await store.acquire(both)] == [True, True]
        assert [d.allowed for d in await store.acquire(both)] == [True, False]
        # The second request took nothing from the wide key: two tokens are left.
        alone = [(await store.acquire([(f"{key}-wide", wide)]))[0].allowed for _ in range(3)]
        assert alone == [True, True, False]

    async def test_keys_are_independent(self, store: LimitStore, key: str) -> None:
        limit = RateLimit(capacity=1, per_second=_SLOW)
        assert (await store.acquire([(f"{key}-a", limit)]))[0].allowed
        assert (await store.acquire([(f"{key}-b", limit)]))[0].allowed
        assert not (await store.acquire([(f"{key}-a", limit)]))[0].allowed

    async def test_tokens_come_back_at_the_rate(self, store: LimitStore, key: str) -> None:
        limit = RateLimit(capacity=1, per_second=20)  # one token every 50 ms
        assert (await store.acquire([(key, limit)]))[0].allowed
        refused = (await store.acquire([(key, limit)]))[0]
        assert not refused.allowed
        assert 0 < refused.retry_after <= 0.05
        # Waiting is the behaviour under test here: the refill comes with time.
        await SystemClock().sleep(refused.retry_after + 0.01)
        assert (await store.acquire([(key, limit)]))[0].allowed

    async def test_concurrent_requests_get_exactly_the_capacity(
        self, store: LimitStore, key: str
    ) -> None:
        limit = RateLimit(capacity=50, per_second=_SLOW)
        results = await asyncio.gather(*(store.acquire([(key, limit)]) for _ in range(200)))
        assert sum(result[0].allowed for result in results) == 50
