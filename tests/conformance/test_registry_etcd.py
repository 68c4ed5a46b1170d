"""The registry conformance suite against a real etcd started for this module."""

import secrets
from collections.abc import AsyncIterator, Iterator

import pytest

from meshkit.registry import Registry
from meshkit.registry.etcd import EtcdRegistry
from meshkit.testing.conformance import RegistryConformance
from meshkit.testing.servers import EtcdServer


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdServer]:
    with EtcdServer() as server:
        yield server


class TestEtcdRegistry(RegistryConformance):
    @pytest.fixture
    async def registry(self, etcd: EtcdServer) -> AsyncIterator[Registry]:
        # A prefix of its own per test, as a shared etcd would need.
        prefix = f"/meshkit-test/{secrets.token_hex(4)}"
        async with EtcdRegistry(etcd.url, prefix=prefix) as registry:
            yield registry
