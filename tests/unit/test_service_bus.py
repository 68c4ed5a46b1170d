"""What a service is told about its bus, checked before anything listens."""

from __future__ import annotations

import pytest

from meshkit import Service
from meshkit.bus import Message, RemoteBus, open_bus
from meshkit.bus._open import bus_url
from meshkit.bus.redis import RedisBus
from meshkit.errors import ConfigError, EnvironmentFaultError, UsageError


async def app(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never served here")


async def handler(message: Message) -> None:
    raise AssertionError("never called here")


def test_the_bus_is_the_one_named_else_a_control_plane_registry() -> None:
    assert bus_url("nats://127.0.0.1:4222", "http://127.0.0.1:7700") == "nats://127.0.0.1:4222"
    assert bus_url(None, "http://127.0.0.1:7700") == "http://127.0.0.1:7700"
    assert bus_url(None, "etcd://127.0.0.1:2379") is None
    assert bus_url(None, None) is None


async def test_open_bus_chooses_the_backend_by_scheme() -> None:
    """HTTP and Redis connect at their first call; NATS is connected (here: tried) at once."""
    for url, kind in (("http://127.0.0.1:7700", RemoteBus), ("redis://127.0.0.1:6379/0", RedisBus)):
        bus = await open_bus(url, token="t")
        assert isinstance(bus, kind)
        await bus.aclose()
    with pytest.raises(EnvironmentFaultError, match=r"127\.0\.0\.1:1\b"):
        await open_bus("nats://127.0.0.1:1")  # nothing listens on port 1


async def test_open_bus_refuses_what_it_cannot_use_without_showing_a_password() -> None:
    with pytest.raises(ConfigError) as caught:
        await open_bus("http://127.0.0.1:7700")
    assert caught.value.key == "token"
    with pytest.raises(ConfigError) as caught:
        await open_bus("amqp://guest:secret@127.0.0.1:5672")
    assert caught.value.key == "bus"
    assert "secret" not in str(caught.value)


def test_a_bad_subscription_is_refused_where_it_is_declared() -> None:
    service = Service(app, name="inventory", registry="http://127.0.0.1:7700", token="t")
    for options, key in (
        ({"topic": "Order.Created"}, "topic"),
        ({"topic": "order.created", "group": "Bad Group"}, "group"),
        ({"topic": "order.created", "concurrency": 0}, "concurrency"),
        ({"topic": "order.created", "redelivery": 5}, "redelivery"),
    ):
        with pytest.raises(ConfigError) as caught:
            service.subscribe(**options)(handler)  # type: ignore[arg-type]
        assert caught.value.key == key


async def test_subscribing_with_no_bus_to_take_from_fails_at_start() -> None:
    """A registry on etcd is no bus: serve() names the missing setting before listening."""
    service = Service(app, name="inventory", registry="etcd://127.0.0.1:1")
    service.subscribe("order.created")(handler)
    with pytest.raises(ConfigError) as caught:
        await service.serve()
    assert caught.value.key == "bus"
    with pytest.raises(UsageError, match="only while the service runs"):
        service.bus  # noqa: B018
