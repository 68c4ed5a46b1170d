"""Calling services by name, against real servers on loopback and an in-process registry."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from meshkit.errors import DeadlineExceededError, ServiceUnavailableError
from meshkit.http import HTTPServer, Request, Response, json_response
from meshkit.policy import DeadlineBudget
from meshkit.registry import EmbeddedRegistry, Instance, Registration
from meshkit.service import Directory, ServiceClient
from meshkit.service._deadline import use_deadline
from meshkit.testing import FakeClock
from meshkit.testing.servers import free_port

Handler = Callable[[Request], Awaitable[Response]]


class Fleet:
    """Instances of one service: real HTTP servers, registered in an in-process registry."""

    def __init__(self, registry: EmbeddedRegistry, service: str = "products") -> None:
        self.registry = registry
        self.service = service
        self.hits: Counter[int] = Counter()
        self.seen_timeouts: list[int] = []
        self.servers: list[HTTPServer] = []
        self.registrations: dict[int, Registration] = {}

    async def add(self, handler: Handler | None = None) -> Instance:
        port_box: list[int] = []

        async def counted(request: Request) -> Response:
            self.hits[port_box[0]] += 1
            timeout = request.header("x-meshkit-timeout-ms")
            if timeout is not None:
                self.seen_timeouts.append(int(timeout))
            if handler is not None:
                return await handler(request)
            return json_response(200, {"port": port_box[0], "method": request.method})

        server = HTTPServer(counted)
        _, port = await server.start()
        port_box.append(port)
        self.servers.append(server)
        return await self.register(port)

    async def register(self, port: int) -> Instance:
        instance = Instance(
            service=self.service, id=f"{self.service}-{port}", host="127.0.0.1", port=port
        )
        self.registrations[port] = await self.registry.register(instance, ttl=30)
        return instance

    async def deregister(self, instance: Instance) -> None:
        await self.registry.deregister(self.registrations.pop(instance.port))

    async def aclose(self) -> None:
        for server in self.servers:
            await server.aclose(grace=0)


def run(main: Callable[[EmbeddedRegistry, ServiceClient], Awaitable[None]]) -> None:
    clock = FakeClock(autojump_threshold=0.2)  # real loopback I/O must land first

    async def wrapper() -> None:
        registry = EmbeddedRegistry(clock=clock)
        registry.start()
        directory = Directory(registry, clock=clock)
        client = ServiceClient(directory, clock=clock)
        try:
            await main(registry, client)
        finally:
            await client.aclose()
            await directory.aclose()
            await registry.aclose()

    clock.run(wrapper())


def test_calls_by_name_spread_over_the_instances() -> None:
    """Concurrent calls reach every registered instance."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        for _ in range(3):
            await fleet.add()
        responses = await asyncio.gather(*(client.get("products", "/p") for _ in range(60)))
        assert all(r.status == 200 for r in responses)
        assert len(fleet.hits) == 3
        assert min(fleet.hits.values()) >= 5
        await fleet.aclose()

    run(main)


def test_no_instances_is_a_clear_error() -> None:
    """A service nobody registered raises ServiceUnavailableError saying so."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        with pytest.raises(ServiceUnavailableError, match="no instances are registered") as caught:
            await client.get("ghosts", "/")
        assert caught.value.service == "ghosts"

    run(main)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_dead_instance_is_skipped_for_any_method(method: str) -> None:
    """An instance refusing connections gets nothing sent, so even a POST moves on."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.register(free_port())  # listed, but nobody listens there
        await fleet.add()
        for _ in range(10):
            response = await client.request("products", method, "/p", json={"n": 1})
            assert response.status == 200
        await fleet.aclose()

    run(main)


def test_a_503_is_retried_elsewhere_only_when_idempotent() -> None:
    """GET moves on from a 503 to a healthy instance; a POST's 503 comes back unsent again."""

    async def unavailable(request: Request) -> Response:
        return json_response(503, {"error": "overloaded"})

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        sick = await fleet.add(unavailable)
        assert (await client.post("products", "/p", json={})).status == 503
        assert fleet.hits[sick.port] == 1  # not resent
        assert (await client.get("products", "/p")).status == 503  # nowhere else to go
        await fleet.add()
        for _ in range(6):
            assert (await client.get("products", "/p")).status == 200
        await fleet.aclose()

    run(main)


def test_an_instance_that_keeps_failing_is_ejected() -> None:
    """After three consecutive failures an instance gets no calls until its ejection ends."""

    async def broken(request: Request) -> Response:
        return json_response(502, {"error": "bad gateway"})

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        sick = await fleet.add(broken)
        for _ in range(3):
            assert (await client.get("products", "/p")).status == 502
        with pytest.raises(ServiceUnavailableError, match="ejected after repeated failures"):
            await client.get("products", "/p")
        assert fleet.hits[sick.port] == 3
        await asyncio.sleep(6)  # noqa: TID251 (fake time: the 5 s ejection ends)
        assert (await client.get("products", "/p")).status == 502  # one probe, which fails
        with pytest.raises(ServiceUnavailableError, match="ejected"):
            await client.get("products", "/p")
        assert fleet.hits[sick.port] == 4
        await fleet.aclose()

    run(main)


def test_a_slow_service_hits_the_deadline() -> None:
    """A call outliving its timeout raises DeadlineExceededError; the callee knew its time."""

    async def slow(request: Request) -> Response:
        await asyncio.sleep(30)  # noqa: TID251 (fake time: a very slow instance)
        return json_response(200, {})

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add(slow)
        with pytest.raises(DeadlineExceededError):
            await client.get("products", "/p", timeout=2.0)
        assert fleet.seen_timeouts
        assert all(t <= 2000 for t in fleet.seen_timeouts)
        await fleet.aclose()

    run(main)


def test_the_served_request_s_deadline_caps_the_call() -> None:
    """Inside a request with 0.5 s left, a call asking for 10 s gets at most 0.5 s."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add()
        loop_now = asyncio.get_running_loop().time()
        with use_deadline(DeadlineBudget(loop_now + 0.5)):
            assert (await client.get("products", "/p", timeout=10)).status == 200
        assert fleet.seen_timeouts == [500]
        await fleet.aclose()

    run(main)


def test_a_deregistered_instance_stops_getting_calls_at_once() -> None:
    """The watched cache drops a deregistered instance before the next call."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        leaving = await fleet.add()
        await fleet.add()
        await client.get("products", "/p")
        gone = asyncio.Event()
        client.directory.listen(lambda _, instances: leaving in instances or gone.set())
        await fleet.deregister(leaving)
        async with asyncio.timeout(1):
            await gone.wait()  # the directory's watcher has heard of it
        before = fleet.hits[leaving.port]
        for _ in range(20):
            await client.get("products", "/p")
        assert fleet.hits[leaving.port] == before
        await fleet.aclose()

    run(main)


def test_when_every_instance_fails_the_error_says_so() -> None:
    """Every instance refusing connections ends in ServiceUnavailableError with the last error."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.register(free_port())
        await fleet.register(free_port())
        with pytest.raises(ServiceUnavailableError, match="could not connect"):
            await client.get("products", "/p")

    run(main)
