"""The embedded registry's own promises: restarts, the HTTP API's refusals, the client's errors."""

import asyncio
from pathlib import Path

import pytest

from meshkit.control import ControlPlane
from meshkit.errors import ConfigError, EnvironmentFaultError, LeaseError
from meshkit.http import HTTPClient
from meshkit.registry import EmbeddedRegistry, Instance, RemoteRegistry
from meshkit.registry._store import RegistryStore
from meshkit.testing import FakeClock

TOKEN = "unit-test-token-0123456789"


def instance(number: int, service: str = "orders") -> Instance:
    return Instance(service=service, id=f"{service}-{number}", host="127.0.0.1", port=9000 + number)


def test_a_restarted_registry_keeps_its_instances_for_one_ttl(tmp_path: Path) -> None:
    """After a restart, saved instances are listed and renewable for one TTL, then expire."""
    clock = FakeClock(start=1000.0)
    path = tmp_path / "registry.sqlite3"

    async def main() -> None:
        async with EmbeddedRegistry.open(path, clock=clock) as first:
            kept = await first.register(instance(1), ttl=5)
            lapsing = await first.register(instance(2), ttl=5)
            gone = await first.register(instance(3), ttl=5)
            await first.deregister(gone)
            before = await first.lookup("orders")

        clock.advance(60)  # the control plane was down for a minute
        async with EmbeddedRegistry.open(path, clock=clock) as second:
            after = await second.lookup("orders")
            assert (after.epoch, after.index) == (before.epoch, before.index)
            assert {i.id for i in after.instances} == {"orders-1", "orders-2"}
            await asyncio.sleep(4)  # noqa: TID251 (fake time: within one TTL of the restart)
            await second.renew(kept)
            await asyncio.sleep(2)  # noqa: TID251 (fake time: past the TTL for the other)
            assert [i.id for i in (await second.lookup("orders")).instances] == ["orders-1"]
            with pytest.raises(LeaseError):
                await second.renew(lapsing)

    clock.run(main())


def test_expiry_is_persisted(tmp_path: Path) -> None:
    """An instance that expired before a restart does not come back after it."""
    clock = FakeClock()
    path = tmp_path / "registry.sqlite3"

    async def main() -> None:
        async with EmbeddedRegistry.open(path, clock=clock) as first:
            await first.register(instance(1), ttl=2)
            await asyncio.sleep(3)  # noqa: TID251 (fake time: the lease expires)
            assert (await first.lookup("orders")).instances == ()
        async with EmbeddedRegistry.open(path, clock=clock) as second:
            assert (await second.lookup("orders")).instances == ()

    clock.run(main())


def test_weights_survive_a_restart_and_their_change_moves_the_index(tmp_path: Path) -> None:
    """Weights are saved with the index of their change: a restarted registry has them, and a
    watcher from before the change sees it, instances or not."""
    path = tmp_path / "registry.sqlite3"

    async def main() -> None:
        async with EmbeddedRegistry.open(path) as first:
            await first.register(instance(1), ttl=60)
            before = await first.lookup("orders")
            await first.set_weights("orders", {"2.0.0": 10, "1.0.0": 90})
            await first.set_weights("payments", {"2.0.0": 100})
            changed = await first.lookup("orders")
            assert changed.index > before.index
        async with EmbeddedRegistry.open(path) as second:
            assert (await second.lookup("payments")).weights == {"2.0.0": 100}
            after = await asyncio.wait_for(second.watch(before, wait=5), 1)
            assert after.weights == {"2.0.0": 10, "1.0.0": 90}
            assert after.epoch == changed.epoch
            assert after.index >= changed.index  # a restart starts every service at the last
            assert [i.id for i in after.instances] == ["orders-1"]
            await second.set_weights("payments", None)
        async with EmbeddedRegistry.open(path) as third:
            assert (await third.lookup("payments")).weights is None

    asyncio.run(main())


def test_a_failing_disk_stops_neither_expiry_nor_watchers(tmp_path: Path) -> None:
    """With every write failing, leases still expire and watchers still hear; errors are counted."""

    class BrokenStore(RegistryStore):
        def save(self, *args: object) -> None:
            raise EnvironmentFaultError("disk full")

        def delete(self, *args: object) -> None:
            raise EnvironmentFaultError("disk full")

    clock = FakeClock()

    async def main() -> None:
        async with EmbeddedRegistry(BrokenStore(tmp_path / "r.sqlite3"), clock=clock) as registry:
            before = await registry.lookup("orders")
            await registry.register(instance(1), ttl=2)
            after = await registry.watch(before, wait=10)
            assert [i.id for i in after.instances] == ["orders-1"]
            gone = await registry.watch(after, wait=10)  # the expiry wakes the watcher
            assert gone.instances == ()
            assert registry.store_errors == 2

    clock.run(main())


def test_a_stalled_registry_does_not_expire_leases_for_the_time_it_could_not_hear() -> None:
    """A 7 s stall with a 5 s TTL: the lease keeps its id, the renewal queued during the stall
    is heard late and accepted, and nobody's view changes; without renewals it expires a TTL on."""
    clock = FakeClock(start=100.0)

    async def main() -> None:
        async with EmbeddedRegistry(clock=clock) as registry:
            registration = await registry.register(instance(1), ttl=5)
            await asyncio.sleep(3)  # noqa: TID251 (fake time)
            await registry.renew(registration)  # due at 108
            before = await registry.lookup("orders")
            clock.advance(7)  # the process is stopped: nothing runs, the loop included
            await asyncio.sleep(0.01)  # noqa: TID251 (fake time: the overdue expiry task runs first)
            after = await registry.lookup("orders")
            assert [i.id for i in after.instances] == ["orders-1"]
            assert after.index == before.index  # no expiry, no registration
            await registry.renew(registration)  # the same lease
            assert registry.stalls == 1
            await asyncio.sleep(5.1)  # noqa: TID251 (fake time: a TTL with no renewal)
            assert (await registry.lookup("orders")).instances == ()

    clock.run(main())


def test_a_stall_does_not_bring_back_a_lease_that_had_run_out_before_it() -> None:
    """A lease already expired when the stall began stays expired after it."""
    clock = FakeClock()

    async def main() -> None:
        async with EmbeddedRegistry(clock=clock) as registry:
            lapsed = await registry.register(instance(1), ttl=1)
            await asyncio.sleep(2)  # noqa: TID251 (fake time: it expires, heard)
            clock.advance(7)
            with pytest.raises(LeaseError):
                await registry.renew(lapsed)
            assert (await registry.lookup("orders")).instances == ()

    clock.run(main())


def test_a_gap_under_half_the_shortest_ttl_is_no_stall() -> None:
    """Such a gap cannot make a holder renewing every TTL/3 late: nothing is renewed for it,
    and an instance that stopped renewing still expires on time."""
    clock = FakeClock()

    async def main() -> None:
        async with EmbeddedRegistry(clock=clock) as registry:
            await registry.register(instance(1), ttl=5)
            await asyncio.sleep(0.01)  # noqa: TID251 (fake time)
            clock.advance(2.4)  # the loop blocked for less than half the TTL
            await asyncio.sleep(2.7)  # noqa: TID251 (fake time: past the TTL)
            assert (await registry.lookup("orders")).instances == ()
            assert registry.stalls == 0

    clock.run(main())


def test_without_start_liveness_is_the_clocks_alone() -> None:
    """A registry used without start() has no watch on its loop: time past the TTL expires."""
    clock = FakeClock(autojump_threshold=None)
    registry = EmbeddedRegistry(clock=clock)
    registration = registry.register_now(instance(1), ttl=5)
    clock.advance(7)
    with pytest.raises(LeaseError):
        registry.renew_now(registration.lease_id)
    assert registry.stalls == 0


def test_saved_leases_live_a_full_ttl_from_the_start_not_from_the_load(tmp_path: Path) -> None:
    """A control plane that takes long to start after loading its registry (a large bus log to
    open, say) does not expire the saved leases meanwhile."""
    clock = FakeClock(start=1000.0)
    path = tmp_path / "registry.sqlite3"

    async def main() -> None:
        async with EmbeddedRegistry.open(path, clock=clock) as first:
            kept = await first.register(instance(1), ttl=5)
        second = EmbeddedRegistry.open(path, clock=clock)
        clock.advance(30)  # loaded, not yet started
        async with second:
            await asyncio.sleep(4)  # noqa: TID251 (fake time: within a TTL of the start)
            assert [i.id for i in (await second.lookup("orders")).instances] == ["orders-1"]
            await second.renew(kept)

    clock.run(main())


def test_ttl_outside_the_allowed_range_is_refused(tmp_path: Path) -> None:
    """A TTL under 1 s or over an hour is a ConfigError naming ttl."""

    async def main() -> None:
        async with EmbeddedRegistry.open(tmp_path / "r.sqlite3") as registry:
            for ttl in (0.5, 7200):
                with pytest.raises(ConfigError, match="between 1 and 3600") as caught:
                    await registry.register(instance(1), ttl=ttl)
                assert caught.value.key == "ttl"

    asyncio.run(main())


@pytest.fixture
async def plane(tmp_path: Path):  # type: ignore[no-untyped-def]
    control = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
    await control.start()
    yield control
    await control.aclose()


async def call(
    plane: ControlPlane, method: str, target: str, body: bytes = b"", token: str | None = TOKEN
) -> tuple[int, dict[str, object]]:
    assert plane.address is not None
    host, port = plane.address
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    async with HTTPClient() as client:
        response = await client.request(method, host, port, target, headers=headers, body=body)
    return response.status, response.json() if response.body else {}


async def test_everything_but_health_needs_the_token(plane: ControlPlane) -> None:
    """Without the token, or with a wrong one, the API answers 401; /healthz answers anyway."""
    assert (await call(plane, "GET", "/healthz", token=None))[0] == 200
    body = b'{"service":"a","id":"a-1","host":"127.0.0.1","port":1,"ttl":5}'
    for token in (None, "wrong-token-0123456789"):
        status, answer = await call(plane, "POST", "/v1/registry/instances", body, token=token)
        assert status == 401
        assert "Authorization" in str(answer["detail"])
        assert (await call(plane, "GET", "/v1/registry/services", token=token))[0] == 401
    assert (await plane.registry.services()).services == ()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"service":"a","id":"a-1","host":"127.0.0.1","port":"x","ttl":5}', "port"),
        (b'{"service":"a","id":"a-1","port":1,"ttl":5}', "host"),
        (b'{"service":"a","id":"a-1","host":"h","port":1,"ttl":5,"colour":"red"}', "colour"),
        (b'{"service":"Bad Name","id":"a-1","host":"h","port":1,"ttl":5}', "service"),
        (b'{"service":"a","id":"a 1","host":"h","port":1,"ttl":5}', "id"),
        (b'{"service":"a","id":"a-1","host":"h","port":70000,"ttl":5}', "port"),
        (b'{"service":"a","id":"a-1","host":"h","port":1,"ttl":0}', "ttl"),
        (b'{"service":"a","id":"a-1","host":"h","port":1,"ttl":5,"metadata":{"k":1}}', "metadata"),
        (b'{"service":"a","id":"a-1","host":"127.0.0.1\\r\\nx-evil: 1","port":1,"ttl":5}', "host"),
        (b'{"service":"a","id":"a-1","host":"[::1]","port":1,"ttl":5}', "host"),
        (b'{"service":"a","id":"a-1","host":"a/b","port":1,"ttl":5}', "host"),
    ],
)
async def test_a_bad_registration_is_a_400_naming_the_field(
    plane: ControlPlane, body: bytes, field: str
) -> None:
    """Each invalid field gets a 400 whose body names it, and nothing is registered."""
    status, answer = await call(plane, "POST", "/v1/registry/instances", body)
    assert status == 400
    assert [e["field"] for e in answer["errors"]] == [field], answer  # type: ignore[attr-defined]
    assert (await plane.registry.services()).services == ()


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        ("POST", "/v1/registry/instances", 400),  # empty body: not JSON
        ("GET", "/v1/registry/instances", 405),
        ("PUT", "/v1/registry/leases/not-a-number", 400),
        ("PUT", "/v1/registry/leases/12345", 404),
        ("PATCH", "/v1/registry/leases/12345", 405),
        ("GET", "/v1/registry/services/orders?wait=5", 400),  # no index to wait from
        ("GET", "/v1/registry/services/orders?index=1&wait=forever", 400),
        ("GET", "/v1/registry/services/orders?index=1&colour=red", 400),
        ("GET", "/v1/registry/services/orders?index=1&epoch=new", 400),
        ("GET", "/v1/registry/services/Orders", 400),
        ("GET", "/v1/nothing/here", 404),
    ],
)
async def test_other_bad_requests_get_a_clear_4xx(
    plane: ControlPlane, method: str, target: str, status: int
) -> None:
    """Wrong methods, bad ids, bad long-poll parameters and unknown paths are refused plainly."""
    got, answer = await call(plane, method, target)
    assert got == status
    assert answer["detail"]


async def test_the_auth_scheme_is_case_insensitive(plane: ControlPlane) -> None:
    """'bearer', 'BEARER' and 'Bearer' all work (RFC 9110, 11.1); the token itself must match."""
    assert plane.address is not None
    host, port = plane.address
    async with HTTPClient() as client:
        for scheme in ("bearer", "BEARER", "Bearer"):
            response = await client.request(
                "GET",
                host,
                port,
                "/v1/registry/services",
                headers=[(b"authorization", f"{scheme} {TOKEN}".encode())],
            )
            assert response.status == 200
        response = await client.request(
            "GET",
            host,
            port,
            "/v1/registry/services",
            headers=[(b"authorization", f"Bearer {TOKEN.upper()}".encode())],
        )
        assert response.status == 401


async def test_the_client_names_what_went_wrong(plane: ControlPlane) -> None:
    """A refused token is a ConfigError on token; no control plane, an EnvironmentFaultError."""
    assert plane.address is not None
    host, port = plane.address
    async with RemoteRegistry(f"http://{host}:{port}", token="wrong-token-0123456789") as remote:
        with pytest.raises(ConfigError) as caught:
            await remote.register(instance(1), ttl=5)
        assert caught.value.key == "token"
    await plane.aclose()
    async with RemoteRegistry(f"http://{host}:{port}", token=TOKEN) as remote:
        with pytest.raises(EnvironmentFaultError, match="did not answer"):
            await remote.lookup("orders")
    with pytest.raises(ConfigError, match=r"http://127\.0\.0\.1:7700"):
        RemoteRegistry("https://example.org", token=TOKEN)


async def test_the_weights_api_answers_with_the_snapshot_and_refuses_bad_bodies(
    plane: ControlPlane,
) -> None:
    """PUT .../weights answers with the service's snapshot; a bad body is a 400 naming the
    field and changes nothing; DELETE is 204; other methods 405."""
    target = "/v1/registry/services/orders/weights"
    status, answer = await call(plane, "PUT", target, b'{"weights": {"1.1.0": 5, "1.0.0": 95}}')
    assert status == 200
    assert answer["weights"] == {"1.1.0": 5, "1.0.0": 95}
    for body, field in (
        (b'{"weights": {"1.1.0": -5}}', "weights.orders.1.1.0"),
        (b'{"weights": {}}', "weights.orders"),
        (b'{"wieghts": {"1.1.0": 5}}', "wieghts"),
        (b"[", "body"),
    ):
        status, answer = await call(plane, "PUT", target, body)
        assert status == 400, body
        assert [e["field"] for e in answer["errors"]] == [field], answer  # type: ignore[attr-defined]
    assert (await plane.registry.lookup("orders")).weights == {"1.1.0": 5, "1.0.0": 95}
    assert (await call(plane, "POST", target))[0] == 405
    assert (await call(plane, "DELETE", target))[0] == 204
    assert (await plane.registry.lookup("orders")).weights is None
