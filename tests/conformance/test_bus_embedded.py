"""The bus conformance suite against the embedded broker in this process."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.bus import Bus, EmbeddedBus
from meshkit.testing.conformance import BusConformance


class TestEmbeddedBus(BusConformance):
    @pytest.fixture
    async def bus(self, tmp_path: Path) -> AsyncIterator[Bus]:
        bus = await EmbeddedBus.open(tmp_path / "bus.sqlite3")
        yield bus
        await bus.aclose()
