"""A control plane that was stopped or restarted keeps the leases it could not hear renewed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import start_control_plane

from meshkit.errors import EnvironmentFaultError, LeaseError
from meshkit.http import Timeouts
from meshkit.registry import Instance, Registration, RemoteRegistry
from meshkit.testing.servers import free_port

TOKEN = "e2e-stall-token-0123456789"
TTL = 5.0


@dataclass
class Renewer:
    """What a service's heartbeat does: renew every TTL/3, each try bounded by TTL/3, again
    after 1 s when the registry does not answer, and register anew when the lease is lost."""

    registry: RemoteRegistry
    registration: Registration
    renewals: int = 0
    lost: list[str] = field(default_factory=list)  # every LeaseError: a re-registration
    renewed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(TTL / 3):
                    await self.registry.renew(self.registration)
                self.renewals += 1
                self.renewed.set()
                pause = TTL / 3
            except LeaseError as error:
                self.lost.append(str(error))
                self.registration = await self.registry.register(
                    self.registration.instance, ttl=TTL
                )
                pause = TTL / 3
            except (EnvironmentFaultError, TimeoutError):
                pause = 1.0  # the control plane is stopped or down
            await asyncio.sleep(pause)  # noqa: TID251 (a real process on the other side)


@contextlib.asynccontextmanager
async def renewing(port: int) -> AsyncIterator[Renewer]:
    async with RemoteRegistry(
        f"http://127.0.0.1:{port}", token=TOKEN, timeouts=Timeouts(connect=1.0, read=TTL / 3)
    ) as registry:
        orders = Instance(service="orders", id="orders-1", host="127.0.0.1", port=9001)
        renewer = Renewer(registry, await registry.register(orders, ttl=TTL))
        task = asyncio.create_task(renewer.run())
        try:
            yield renewer
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def renewed_again(renewer: Renewer, within: float) -> None:
    """Wait until the renewer has renewed twice more (the plane hears it again)."""
    async with asyncio.timeout(within):
        for _ in range(2):
            renewer.renewed.clear()
            await renewer.renewed.wait()


def end(plane: subprocess.Popen[bytes]) -> None:
    """Kill the plane, stopped (SIGSTOP) or not."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(plane.pid, signal.SIGCONT)
    plane.kill()
    plane.wait(10)


async def test_a_lease_outlives_a_control_plane_stopped_for_longer_than_its_ttl(
    tmp_path: Path,
) -> None:
    """SIGSTOP for 7 s with a TTL of 5 s: after SIGCONT the same lease is renewed, nobody
    registers again, and a lookup lists the instance with its membership index unchanged."""
    port = free_port()
    plane = start_control_plane(tmp_path, port, token=TOKEN)
    try:
        async with renewing(port) as renewer:
            await renewed_again(renewer, within=10)
            before = await renewer.registry.lookup("orders")
            lease = renewer.registration.lease_id
            plane.send_signal(signal.SIGSTOP)
            await asyncio.sleep(7)  # noqa: TID251 (the stop being tested, in real time)
            plane.send_signal(signal.SIGCONT)
            await renewed_again(renewer, within=10)
            after = await renewer.registry.lookup("orders")
            assert renewer.lost == []
            assert renewer.registration.lease_id == lease
            assert [i.id for i in after.instances] == ["orders-1"]
            assert (after.epoch, after.index) == (before.epoch, before.index)
    finally:
        end(plane)


async def test_a_lease_outlives_a_control_plane_killed_and_restarted(tmp_path: Path) -> None:
    """Killed (-9) and started again 7 s later with a TTL of 5 s: the saved lease gets a fresh
    TTL from the restart, and the same lease is renewed without registering again."""
    port = free_port()
    plane = start_control_plane(tmp_path, port, token=TOKEN)
    try:
        async with renewing(port) as renewer:
            await renewed_again(renewer, within=10)
            before = await renewer.registry.lookup("orders")
            lease = renewer.registration.lease_id
            plane.kill()
            plane.wait(10)
            await asyncio.sleep(7)  # noqa: TID251 (the outage being tested, in real time)
            plane = start_control_plane(tmp_path, port, token=TOKEN)
            await renewed_again(renewer, within=10)
            after = await renewer.registry.lookup("orders")
            assert renewer.lost == []
            assert renewer.registration.lease_id == lease
            assert [i.id for i in after.instances] == ["orders-1"]
            assert (after.epoch, after.index) == (before.epoch, before.index)
    finally:
        end(plane)
