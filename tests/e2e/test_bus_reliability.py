"""The embedded bus under kill -9: of the broker mid-stream, and of a consumer in its handler."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from meshkit._clock import SystemClock
from meshkit.bus import Message, RemoteBus, subscribe
from meshkit.control import ControlPlane
from meshkit.errors import EnvironmentFaultError
from meshkit.policy import Backoff, Redelivery
from meshkit.testing.servers import free_port

from .conftest import meshkit_env, start_control_plane

TOKEN = "bus-reliability-token-0123456789"
POLICY = Redelivery(max_deliveries=10, backoff=Backoff(initial=0.1, maximum=1.0), ack_wait=2.0)
CLOCK = SystemClock()


class _Received:
    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.changed = asyncio.Event()

    async def handle(self, message: Message) -> None:
        self.ids.add(message.id)
        self.changed.set()

    async def until(self, ids: set[str], within: float) -> None:
        async with asyncio.timeout(within):
            while not ids <= self.ids:
                self.changed.clear()
                await self.changed.wait()


async def test_a_broker_killed_mid_stream_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """kill -9 of the control plane while four publishers and two groups run: every
    acknowledged publish reaches both groups after the restart."""
    port = free_port()
    plane = start_control_plane(tmp_path, port, token=TOKEN)
    acknowledged: set[str] = set()
    first, second = _Received(), _Received()
    published = 0
    killed = asyncio.Event()

    async def publisher(bus: RemoteBus, worker: int) -> None:
        nonlocal published
        for n in range(150):
            message_id = f"w{worker}-{n}"
            while True:  # a publish that failed was not acknowledged: send it again, same id
                try:
                    await bus.publish("order.created", {"n": n}, message_id=message_id)
                    break
                except EnvironmentFaultError:
                    await CLOCK.sleep(0.05)
            acknowledged.add(message_id)
            published += 1
            if published == 200:
                killed.set()

    try:
        async with (
            RemoteBus(f"http://127.0.0.1:{port}", token=TOKEN) as bus,
            subscribe(bus, "order.created", "inventory", first.handle, redelivery=POLICY),
            subscribe(bus, "order.created", "billing", second.handle, redelivery=POLICY),
        ):
            publishing = [asyncio.create_task(publisher(bus, w)) for w in range(4)]
            await killed.wait()
            plane.send_signal(signal.SIGKILL)
            plane.wait()
            plane = await asyncio.to_thread(start_control_plane, tmp_path, port, token=TOKEN)
            await asyncio.gather(*publishing)
            assert len(acknowledged) == 600
            await first.until(acknowledged, within=60)
            await second.until(acknowledged, within=60)
    finally:
        plane.kill()
        plane.wait()


CONSUMER = """
import asyncio, sys
from meshkit.bus import RemoteBus, subscribe
from meshkit.policy import Backoff, Redelivery

async def main() -> None:
    policy = Redelivery(max_deliveries=3, backoff=Backoff(initial=0.1, maximum=1.0), ack_wait=2.0)
    async def handle(message):
        print("handling", message.id, flush=True)
        await asyncio.Event().wait()  # never finishes: the test kills this process here
    async with RemoteBus(sys.argv[1], token=sys.argv[2]) as bus:
        async with subscribe(bus, "order.created", "workers", handle, redelivery=policy):
            await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_consumer_killed_in_its_handler_has_its_message_redelivered_to_another(
    tmp_path: Path,
) -> None:
    """kill -9 of a member inside its handler: another member gets the message, as delivery 2,
    once the ack deadline has passed."""
    port = free_port()
    plane = start_control_plane(tmp_path, port, token=TOKEN)
    url = f"http://127.0.0.1:{port}"
    script = tmp_path / "consumer.py"
    script.write_text(CONSUMER)
    consumer = subprocess.Popen(  # noqa: ASYNC220 (started once, before the loop's work)
        [sys.executable, str(script), url, TOKEN],
        env=meshkit_env(port, TOKEN),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with RemoteBus(url, token=TOKEN) as bus:
            await bus.publish("order.created", {"order": 1}, message_id="order-1")
            assert consumer.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(consumer.stdout.readline), 30)
            assert line.split() == [b"handling", b"order-1"]
            consumer.send_signal(signal.SIGKILL)
            consumer.wait()
            killed = CLOCK.monotonic()
            seen: list[Message] = []
            got = asyncio.Event()

            async def handle(message: Message) -> None:
                seen.append(message)
                got.set()

            async with subscribe(bus, "order.created", "workers", handle, redelivery=POLICY):
                await asyncio.wait_for(got.wait(), 30)
            assert [(m.id, m.deliveries) for m in seen] == [("order-1", 2)]
            # The lease ran from the first delivery, a little before the kill.
            assert CLOCK.monotonic() - killed >= 1.0
    finally:
        consumer.kill()
        consumer.wait()
        if consumer.stdout is not None:
            consumer.stdout.close()
        plane.kill()
        plane.wait()


async def test_a_subscription_joins_again_when_the_broker_lost_its_group(tmp_path: Path) -> None:
    """A broker restarted without its data does not know the group: the member joins again."""
    port = free_port()
    plane = ControlPlane(data_dir=tmp_path / "first", token=TOKEN, port=port)
    await plane.start()
    received = _Received()
    try:
        async with (
            RemoteBus(f"http://127.0.0.1:{port}", token=TOKEN) as bus,
            subscribe(bus, "order.created", "inventory", received.handle, redelivery=POLICY),
        ):
            await plane.aclose()
            plane = ControlPlane(data_dir=tmp_path / "second", token=TOKEN, port=port)
            await plane.start()
            published = await bus.publish("order.created", {"n": 1})
            await received.until({published.id}, within=30)
    finally:
        await plane.aclose()
