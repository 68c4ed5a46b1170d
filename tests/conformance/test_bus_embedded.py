"""The bus conformance suite against the embedded broker, in this process and over HTTP."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.bus import Bus, EmbeddedBus, Outgoing, RemoteBus, outgoing
from meshkit.control import ControlPlane
from meshkit.errors import MessageRefusedError
from meshkit.testing.conformance import BusConformance

TOKEN = "conformance-token-0123456789"


class TestEmbeddedBus(BusConformance):
    @pytest.fixture
    async def bus(self, tmp_path: Path) -> AsyncIterator[Bus]:
        bus = await EmbeddedBus.open(tmp_path / "bus.sqlite3")
        yield bus
        await bus.aclose()


class TestControlPlaneBusOverHTTP(BusConformance):
    @pytest.fixture
    async def bus(self, tmp_path: Path) -> AsyncIterator[Bus]:
        plane = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
        host, port = await plane.start()
        try:
            async with RemoteBus(f"http://{host}:{port}", token=TOKEN) as bus:
                yield bus
        finally:
            await plane.aclose()


async def test_a_message_the_plane_refuses_is_refused_not_a_config_error(tmp_path: Path) -> None:
    """The plane checks what it is sent again: a message it refuses (here one built without
    outgoing()'s checks) is MessageRefusedError naming the field, so an outbox parks it."""
    plane = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
    host, port = await plane.start()
    try:
        async with RemoteBus(f"http://{host}:{port}", token=TOKEN) as bus:
            unchecked = Outgoing(topic="Bad Topic", id="m-1", payload=b"1")
            with pytest.raises(MessageRefusedError) as caught:
                await bus.publish_batch([unchecked])
            assert caught.value.key == "topic"
            assert await bus.publish_batch([outgoing("good", 1)])
    finally:
        await plane.aclose()
