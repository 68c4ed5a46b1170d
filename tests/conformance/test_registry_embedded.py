"""The registry conformance suite against the embedded registry, in-process and over HTTP."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshkit.control import ControlPlane
from meshkit.registry import EmbeddedRegistry, Registry, RemoteRegistry
from meshkit.testing.conformance import RegistryConformance

TOKEN = "conformance-token-0123456789"


class TestEmbeddedRegistry(RegistryConformance):
    @pytest.fixture
    async def registry(self, tmp_path: Path) -> AsyncIterator[Registry]:
        async with EmbeddedRegistry.open(tmp_path / "registry.sqlite3") as registry:
            yield registry


class TestControlPlaneOverHTTP(RegistryConformance):
    @pytest.fixture
    async def registry(self, tmp_path: Path) -> AsyncIterator[Registry]:
        plane = ControlPlane(data_dir=tmp_path, token=TOKEN, port=0)
        host, port = await plane.start()
        try:
            async with RemoteRegistry(f"http://{host}:{port}", token=TOKEN) as registry:
                yield registry
        finally:
            await plane.aclose()
