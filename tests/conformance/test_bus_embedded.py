"""The bus conformance suite against the embedded broker, in this process and over HTTP."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.bus import Bus, EmbeddedBus, RemoteBus
from meshkit.control import ControlPlane
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
