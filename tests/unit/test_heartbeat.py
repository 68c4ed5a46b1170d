"""The heartbeat thread keeps an instance registered, whatever the registry does."""

from __future__ import annotations

import asyncio
import time

from meshkit.errors import LeaseNotFoundError
from meshkit.registry import Instance, Registration, ServiceList, Snapshot
from meshkit.service._heartbeat import Heartbeat
from meshkit.service._registration import heartbeat_for

INSTANCE = Instance(service="beat", id="beat-1", host="127.0.0.1", port=9001)


class ScriptedRegistry:
    """Counts calls; ``renew_script`` decides what each renewal does."""

    def __init__(self, renew_script: list[str] | None = None) -> None:
        self.script = list(renew_script or [])
        self.registers = 0
        self.renews = 0
        self.deregisters = 0
        self.cancelled = 0  # hung renewals that were cancelled
        self.loops: set[asyncio.AbstractEventLoop] = set()  # the loops that called

    async def register(self, instance: Instance, *, ttl: float) -> Registration:
        self.loops.add(asyncio.get_running_loop())
        self.registers += 1
        return Registration(instance=instance, lease_id=self.registers, ttl=ttl)

    async def renew(self, registration: Registration) -> None:
        self.loops.add(asyncio.get_running_loop())
        action = self.script.pop(0) if self.script else "ok"
        if action == "lost":
            raise LeaseNotFoundError(registration.lease_id, "gone")
        if action == "bug":
            raise RuntimeError("an unexpected bug in a registry client")
        if action == "hang":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        self.renews += 1

    async def deregister(self, registration: Registration) -> None:
        self.loops.add(asyncio.get_running_loop())
        self.deregisters += 1

    async def lookup(self, service: str) -> Snapshot:
        raise NotImplementedError

    async def services(self) -> ServiceList:
        raise NotImplementedError

    async def watch(self, previous: Snapshot, *, wait: float) -> Snapshot:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


def until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout  # noqa: TID251 (a real thread, real time)
    while time.monotonic() < deadline:  # noqa: TID251
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)  # noqa: TID251 (polling another thread, bounded)
    return False


def start(registry: ScriptedRegistry, ttl: float) -> Heartbeat:
    heartbeat = Heartbeat(lambda: registry, INSTANCE, ttl=ttl)
    heartbeat.start()
    assert heartbeat.wait_registered(5)
    return heartbeat


def test_renewals_go_on_while_the_main_thread_is_busy() -> None:
    """A CPU-bound main thread does not starve the renewals (every TTL/3)."""
    registry = ScriptedRegistry()
    heartbeat = start(registry, ttl=1.5)
    end = time.perf_counter() + 2.0  # noqa: TID251 (two seconds of busy work)
    while time.perf_counter() < end:  # noqa: TID251
        sum(range(1000))  # pure Python, never yielding
    heartbeat.stop(timeout=3)
    assert registry.renews >= 3  # one every 0.5 s: about four


def test_a_lost_lease_is_registered_again() -> None:
    """A renewal answered with 'lease not found' leads to a new registration at once."""
    registry = ScriptedRegistry(["lost"])
    heartbeat = start(registry, ttl=1.2)
    assert until(lambda: registry.registers == 2, 3)
    assert heartbeat.registered
    heartbeat.stop(timeout=3)


def test_an_unexpected_error_does_not_stop_it() -> None:
    """A bug in a renewal is logged; the thread lives on and renews again."""
    registry = ScriptedRegistry(["bug", "bug"])
    heartbeat = start(registry, ttl=1.2)
    assert until(lambda: registry.renews >= 2, 5)
    assert heartbeat.failures == 2
    assert heartbeat._thread.is_alive()
    heartbeat.stop(timeout=3)


def test_a_registry_that_never_answers_leaves_it_unregistered_after_a_ttl() -> None:
    """Each beat gives up after TTL/3; once a TTL passes unconfirmed, registered turns false."""
    registry = ScriptedRegistry(["hang"] * 100)
    heartbeat = start(registry, ttl=1.2)
    assert until(lambda: not heartbeat.registered, 4)
    heartbeat.stop(timeout=3)


def test_stopping_deregisters_and_ends_the_thread() -> None:
    """stop() deregisters the instance and the thread ends."""
    registry = ScriptedRegistry()
    heartbeat = start(registry, ttl=2)
    heartbeat.stop(timeout=3)
    assert registry.deregisters == 1
    assert not heartbeat._thread.is_alive()
    assert not heartbeat.registered


async def test_a_registry_object_is_called_on_its_own_loop() -> None:
    """Every call of a registry object runs on its loop; a beat given up is cancelled there."""
    registry = ScriptedRegistry(["hang"])
    heartbeat = heartbeat_for(registry, token=None, instance=INSTANCE, ttl=1.2)
    heartbeat.start()
    assert await asyncio.to_thread(heartbeat.wait_registered, 5)
    assert await asyncio.to_thread(until, lambda: registry.cancelled == 1, 3)
    assert await asyncio.to_thread(until, lambda: registry.renews >= 1, 3)
    await asyncio.to_thread(heartbeat.stop, timeout=3)
    assert registry.deregisters == 1
    assert registry.loops == {asyncio.get_running_loop()}
