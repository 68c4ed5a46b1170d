"""A Service built from a registry and a bus passed as objects, served in this process."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from meshkit import Service
from meshkit.bus import EmbeddedBus, Message, OutboxEntry, SqliteOutbox
from meshkit.errors import ConfigError, UsageError
from meshkit.http import HTTPClient
from meshkit.registry import EmbeddedRegistry, Snapshot
from meshkit.service._backends import use_bus, use_registry


class NotedRegistry(EmbeddedRegistry):
    """An embedded registry that notes whether anyone closed it."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


class NotedBus(EmbeddedBus):
    """An embedded bus that notes whether anyone closed it."""

    closed = False

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


@pytest.fixture
async def registry() -> AsyncIterator[NotedRegistry]:
    registry = NotedRegistry()
    registry.start()
    yield registry
    await registry.aclose()


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[NotedBus]:
    opened = await EmbeddedBus.open(tmp_path / "bus.db")
    bus = NotedBus(opened.broker, owned=True)
    yield bus
    await bus.aclose()


def greeter(published: list[str]) -> Any:
    """An ASGI app whose every request publishes ``greeting.sent`` through ``service.bus``."""
    service: Service | None = None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert service is not None
        await service.bus.publish("greeting.sent", {"path": scope["path"]})
        published.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    def bind(built: Service) -> None:
        nonlocal service
        service = built

    app.bind = bind  # type: ignore[attr-defined]
    return app


async def until(condition: Callable[[], bool], seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 (another thread's flag: no event to await)
            await asyncio.sleep(0.01)  # noqa: TID251 (polling, bounded by the timeout)


async def until_membership_changes(registry: EmbeddedRegistry, seen: Snapshot) -> Snapshot:
    snapshot = await registry.watch(seen, wait=10)
    assert snapshot.index != seen.index, "the registry did not change within 10 s"
    return snapshot


async def test_a_service_serves_registers_and_drains_with_objects_it_leaves_open(
    registry: NotedRegistry, bus: NotedBus
) -> None:
    """Given objects, a service registers, subscribes and publishes, and leaves them open."""
    published: list[str] = []
    app = greeter(published)
    service = Service(app, name="greeter", registry=registry, bus=bus, ttl=2, drain_timeout=1)
    app.bind(service)
    received: asyncio.Queue[Message] = asyncio.Queue()

    @service.subscribe("greeting.sent")
    async def note(message: Message) -> None:
        await received.put(message)

    empty = await registry.lookup("greeter")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    serving = asyncio.get_running_loop().create_task(service.serve())
    try:
        listed = await until_membership_changes(registry, empty)
        assert [instance.port for instance in listed.instances] == [service.port]
        await until(lambda: service.ready, 5)  # the heartbeat's thread notes the registration
        async with HTTPClient() as http:
            response = await http.request("GET", service.host, service.port, "/hello")
        assert response.status == 200
        async with asyncio.timeout(10):
            message = await received.get()
        assert message.json() == {"path": "/hello"}
        assert published == ["/hello"]
    finally:
        service.stop()
        async with asyncio.timeout(10):
            await serving
    assert (await registry.lookup("greeter")).instances == ()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the service's handler is gone
    assert not registry.closed
    assert not bus.closed
    await bus.publish("greeting.sent", {"path": "after"})  # still usable by its owner
    with pytest.raises(UsageError, match="only while the service runs"):
        service.bus  # noqa: B018


class LateTables:
    """An ASGI app whose lifespan makes its outbox's tables and records an event in them.

    Its startup waits (at most 1 s) for a first claim, so that a relay started
    before the lifespan is caught claiming from a database with no tables.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claimed = asyncio.Event()
        self.started = False

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.claimed.wait(), 1.0)
            with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
                db.executescript(SqliteOutbox.SCHEMA)
                db.execute("BEGIN")
                SqliteOutbox.record(db, "tables.made", {"by": "lifespan"})
                db.execute("COMMIT")
            self.started = True
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


class WatchedOutbox(SqliteOutbox):
    """Notes, at each claim, whether the app's lifespan had started."""

    def __init__(self, app: LateTables) -> None:
        super().__init__(app.path)
        self.app = app
        self.claims: list[bool] = []

    async def claim(self, limit: int, *, hold: float) -> list[OutboxEntry]:
        self.claims.append(self.app.started)
        self.app.claimed.set()
        return await super().claim(limit, hold=hold)


async def test_outbox_relays_start_once_the_lifespan_has_made_their_tables(
    registry: NotedRegistry, bus: NotedBus, tmp_path: Path
) -> None:
    """The relay's first claim comes after the lifespan, and relays what the lifespan recorded."""
    app = LateTables(tmp_path / "app.sqlite3")
    service = Service(app, name="tables", registry=registry, bus=bus, ttl=2, drain_timeout=1)
    store = WatchedOutbox(app)
    service.add_outbox(store)
    received: asyncio.Queue[Message] = asyncio.Queue()

    @service.subscribe("tables.made")
    async def note(message: Message) -> None:
        await received.put(message)

    serving = asyncio.get_running_loop().create_task(service.serve())
    try:
        async with asyncio.timeout(10):
            message = await received.get()
        assert message.json() == {"by": "lifespan"}
    finally:
        service.stop()
        async with asyncio.timeout(10):
            await serving
    assert store.claims
    assert all(store.claims), store.claims


async def test_a_service_that_cannot_start_leaves_what_it_was_given_open(
    registry: NotedRegistry, bus: NotedBus
) -> None:
    """The port taken: serve() says so, keeps no client, and closes nothing it was given."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = Service(_never_served, name="a", registry=registry, bus=bus, port=port)
        with pytest.raises(ConfigError) as caught:
            await service.serve()
    assert caught.value.key == "port"
    assert not registry.closed
    assert not bus.closed
    with pytest.raises(UsageError):
        service.client  # noqa: B018


async def test_a_registry_and_bus_opened_from_urls_close_with_the_service() -> None:
    """What a service opens from a URL is closed with it; an object it was given is not."""
    async with contextlib.AsyncExitStack() as opened:
        registry = use_registry("http://127.0.0.1:1", token="t" * 16, opened=opened)
        bus = await use_bus("http://127.0.0.1:1", token="t" * 16, opened=opened, needed_by=None)
        assert bus is not None
    with pytest.raises(UsageError, match="closed"):
        await registry.lookup("a")
    with pytest.raises(UsageError, match="closed"):
        await bus.publish("a.b", {})
    given = NotedRegistry()
    async with contextlib.AsyncExitStack() as opened:
        assert use_registry(given, token=None, opened=opened) is given
    assert not given.closed


def test_an_object_that_is_neither_url_nor_backend_is_refused_when_the_service_is_built() -> None:
    for options, key in (
        ({"registry": 7700}, "registry"),
        ({"registry": "http://127.0.0.1:7700", "bus": object()}, "bus"),
    ):
        with pytest.raises(ConfigError) as caught:
            Service(_never_served, name="a", token="t", **options)
        assert caught.value.key == key


def test_a_registry_object_is_no_bus() -> None:
    """A control plane's URL is its bus too; a registry object is not, so there is no bus."""
    assert Service(_never_served, name="a", registry=EmbeddedRegistry()).bus_url is None
    by_url = Service(_never_served, name="a", registry="http://127.0.0.1:7700", token="t")
    assert by_url.bus_url == "http://127.0.0.1:7700"


async def _never_served(scope: object, receive: object, send: object) -> None:
    raise AssertionError("never served here")
