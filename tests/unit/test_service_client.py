"""Calling services by name, against real servers on loopback and an in-process registry."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from meshkit.errors import (
    ConfigError,
    ConnectTimeoutError,
    DeadlineExceededError,
    InvalidArgumentError,
    ServiceUnavailableError,
)
from meshkit.http import (
    HTTPClient,
    HTTPServer,
    Request,
    Response,
    idempotency_key_field,
    json_response,
    read_idempotency_key,
)
from meshkit.policy import DeadlineBudget
from meshkit.registry import EmbeddedRegistry, Instance, Registration
from meshkit.service import CallPolicy, Directory, ServiceClient, without_deadline
from meshkit.service._client import _retry_after
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

    async def add(self, handler: Handler | None = None, *, version: str = "") -> Instance:
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
        return await self.register(port, version)

    async def register(self, port: int, version: str = "") -> Instance:
        instance = Instance(
            service=self.service,
            id=f"{self.service}-{port}",
            host="127.0.0.1",
            port=port,
            version=version,
        )
        self.registrations[port] = await self.registry.register(instance, ttl=30)
        return instance

    async def deregister(self, instance: Instance) -> None:
        await self.registry.deregister(self.registrations.pop(instance.port))

    async def aclose(self) -> None:
        for server in self.servers:
            await server.aclose(grace=0)


def run(
    main: Callable[[EmbeddedRegistry, ServiceClient], Awaitable[None]],
    policy: CallPolicy | None = None,
) -> None:
    clock = FakeClock(autojump_threshold=1.0)  # real loopback I/O must land first

    async def wrapper() -> None:
        registry = EmbeddedRegistry(clock=clock)
        registry.start()
        directory = Directory(registry, clock=clock)
        client = ServiceClient(directory, clock=clock, policy=policy)
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


def test_an_idempotency_key_makes_a_post_retried_elsewhere_with_the_same_key() -> None:
    """A keyed POST's 503 is resent to another instance with the same key; an unkeyed one is not."""
    keys: list[str | None] = []
    failed: list[bool] = []

    async def first_fails(request: Request) -> Response:
        keys.append(request.header("idempotency-key"))
        if not failed:
            failed.append(True)
            return json_response(503, {"error": "overloaded"})
        return json_response(200, {})

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add(first_fails)
        await fleet.add(first_fails)
        answer = await client.post("products", "/p", json={}, idempotency_key="order-7/charge")
        assert answer.status == 200
        assert keys == ['"order-7/charge"'] * 2
        assert sorted(fleet.hits.values()) == [1, 1]  # two instances, one attempt each
        failed.clear()
        assert (await client.post("products", "/p", json={})).status == 503
        assert sum(fleet.hits.values()) == 3  # not resent
        await fleet.aclose()

    run(main)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_every_writing_method_sends_the_idempotency_key(method: str) -> None:
    """post, put, delete and request send the key as an sf-string."""
    seen: list[str | None] = []

    async def record(request: Request) -> Response:
        seen.append(request.header("idempotency-key"))
        return json_response(200, {})

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add(record)
        call = {"POST": client.post, "PUT": client.put, "DELETE": client.delete}[method]
        await call("products", "/p", idempotency_key='say "hi"')
        await client.request("products", method, "/p", idempotency_key="k")
        assert seen == ['"say \\"hi\\""', '"k"']
        await fleet.aclose()

    run(main)


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("", "must not be empty"),
        ("k" * 256, "at most 255 characters"),
        ("café", "printable ASCII"),
        ("new\nline", "printable ASCII"),
    ],
)
def test_an_invalid_idempotency_key_is_refused_before_sending(key: str, problem: str) -> None:
    """InvalidArgumentError names idempotency_key, and nothing reaches the service."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add()
        with pytest.raises(InvalidArgumentError, match=problem) as caught:
            await client.post("products", "/p", json={}, idempotency_key=key)
        assert caught.value.key == "idempotency_key"
        assert not fleet.hits
        await client.post("products", "/p", idempotency_key="k" * 255)
        await fleet.aclose()

    run(main)


def test_an_idempotency_key_given_twice_is_refused() -> None:
    """The option and an Idempotency-Key among the headers: InvalidArgumentError."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        headers = [(b"Idempotency-Key", b'"a"')]
        with pytest.raises(InvalidArgumentError, match="given twice") as caught:
            await client.post("products", "/p", headers=headers, idempotency_key="b")
        assert caught.value.key == "idempotency_key"

    run(main)


@pytest.mark.parametrize("key", ["k", 'quote " and \\ backslash', " spaced ", "~" * 255])
def test_an_idempotency_key_reads_back_as_sent(key: str) -> None:
    """What the client sends, the server's reader returns unchanged."""
    _, value = idempotency_key_field(key)
    assert read_idempotency_key(value.decode("ascii")) == key


def test_a_bare_idempotency_key_is_read_as_it_is() -> None:
    """A value without quotes, as Stripe's clients send, is the key itself."""
    assert read_idempotency_key("8e03978e-40d5") == "8e03978e-40d5"


@pytest.mark.parametrize("value", ['"open', '"bad \\x escape"', '"a" trailing', '""', "é"])
def test_a_malformed_idempotency_key_field_is_refused(value: str) -> None:
    """InvalidArgumentError names the Idempotency-Key header."""
    with pytest.raises(InvalidArgumentError) as caught:
        read_idempotency_key(value)
    assert caught.value.key == "Idempotency-Key"


async def _broken(request: Request) -> Response:
    return json_response(502, {"error": "bad gateway"})


def test_an_instance_that_keeps_failing_is_ejected() -> None:
    """A failing instance beside a healthy one gets at most three calls, then none."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add()
        sick = await fleet.add(_broken)
        for _ in range(30):  # a 502 is retried on the healthy instance
            assert (await client.get("products", "/p")).status == 200
        assert 1 <= fleet.hits[sick.port] <= 3
        assert client._upstreams["products"].ejected == (fleet.hits[sick.port] == 3)
        await fleet.aclose()

    run(main)


def test_the_last_instance_is_never_ejected() -> None:
    """By default a lone instance that keeps failing still gets every call: ejection keeps one."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        sick = await fleet.add(_broken)
        for _ in range(10):
            assert (await client.post("products", "/p", json={})).status == 502
        assert fleet.hits[sick.port] == 10
        await fleet.aclose()

    run(main)


def test_ejection_takes_out_at_most_half_of_the_instances() -> None:
    """Of two instances that both keep failing, one is ejected; the other still gets calls."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        first, second = await fleet.add(_broken), await fleet.add(_broken)
        for _ in range(12):
            assert (await client.post("products", "/p", json={})).status == 502
        hits = sorted([fleet.hits[first.port], fleet.hits[second.port]])
        assert hits[0] == 3  # ejected after its third failure in a row
        assert hits[1] == 9  # kept: the cap allows one ejection of two
        await fleet.aclose()

    run(main)


def test_below_the_panic_threshold_every_instance_takes_calls() -> None:
    """With every instance ejectable, the last ones out put the service in panic: all get calls."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        first, second = await fleet.add(_broken), await fleet.add(_broken)
        for _ in range(6):  # three each, in some order: both ejected
            await client.post("products", "/p", json={})
        for _ in range(4):
            assert (await client.post("products", "/p", json={})).status == 502
        assert fleet.hits[first.port] + fleet.hits[second.port] == 10
        await fleet.aclose()

    run(main, CallPolicy(max_ejection_percent=100, panic_threshold=50))


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


def test_without_deadline_lets_a_call_outlive_the_served_request_s() -> None:
    """Inside without_deadline(), a call gets its own timeout, not the 0.5 s left."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add()
        loop_now = asyncio.get_running_loop().time()
        with use_deadline(DeadlineBudget(loop_now + 0.5)), without_deadline():
            assert (await client.get("products", "/p", timeout=7)).status == 200
        assert fleet.seen_timeouts == [7000]
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
        client.directory.listen(lambda snapshot: leaving in snapshot.instances or gone.set())
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


def test_a_long_retry_after_is_not_waited_past_the_deadline() -> None:
    """A 503 asking for 30 s, on a call with 1 s, comes back at once instead of sleeping."""

    async def busy(request: Request) -> Response:
        return Response(503, [(b"retry-after", b"30")], b"{}")

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add(busy)
        await fleet.add(busy)
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await client.get("products", "/p", timeout=1.0)).status == 503
        assert loop.time() - start < 1.0
        await fleet.aclose()

    run(main)


def test_a_connect_timeout_moves_on_to_another_instance() -> None:
    """Nothing was sent when connecting timed out, so another instance is tried."""

    class Unreachable(HTTPClient):
        black_hole = 0

        async def send(
            self, method: str, host: str, port: int, target: str, **kw: object
        ) -> Response:  # type: ignore[override]
            if port == self.black_hole:
                raise ConnectTimeoutError(f"could not connect to {host}:{port} within 2s")
            return await super().send(method, host, port, target, **kw)  # type: ignore[arg-type]

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        http = Unreachable()
        caller = ServiceClient(client.directory, http=http)
        fleet = Fleet(registry)
        http.black_hole = (await fleet.register(free_port())).port
        await fleet.add()
        for _ in range(5):
            assert (await caller.post("products", "/p", json={})).status == 200
        await http.aclose()
        await fleet.aclose()

    run(main)


def test_impatient_callers_do_not_eject_a_healthy_instance() -> None:
    """Calls that give up before a 20 ms answer do not count against the instance."""

    async def steady(request: Request) -> Response:
        await asyncio.sleep(0.02)  # noqa: TID251 (fake time: a 20 ms answer)
        return json_response(200, {})

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        await fleet.add(steady)
        for _ in range(5):
            with pytest.raises(DeadlineExceededError):
                await client.get("products", "/p", timeout=0.005)
        assert (await client.get("products", "/p")).status == 200
        await fleet.aclose()

    run(main)


def test_a_registry_that_refuses_us_fails_the_call_promptly() -> None:
    """A lookup the registry refuses is a ServiceUnavailableError, not a hang."""

    class Refusing(EmbeddedRegistry):
        async def lookup(self, service: str):  # type: ignore[no-untyped-def]
            raise ConfigError("token", "the control plane refused it")

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        caller = ServiceClient(Directory(Refusing()))
        with pytest.raises(ServiceUnavailableError, match="refused"):
            await caller.get("products", "/p", timeout=1)
        await caller.aclose()

    run(main)


def test_a_registry_that_never_answers_costs_only_the_deadline() -> None:
    """The first lookup of a service is bounded by the call's deadline."""

    class Silent(EmbeddedRegistry):
        async def lookup(self, service: str):  # type: ignore[no-untyped-def]
            await asyncio.Event().wait()

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        caller = ServiceClient(Directory(Silent()))
        with pytest.raises(DeadlineExceededError, match="outlasted"):
            await caller.get("products", "/p", timeout=2)
        await caller.aclose()

    run(main)


def test_a_strange_retry_after_is_ignored() -> None:
    """A Retry-After that is not plain digits is treated as absent, never as a crash."""
    for value in (b"\xb2", b"soon", b"-5", b"1e9", b"99999999999"):
        assert _retry_after(Response(503, [(b"retry-after", value)], b"")) is None
    assert _retry_after(Response(503, [(b"retry-after", b" 7 ")], b"")) == 7.0


def test_calls_follow_the_registry_s_weights_by_version() -> None:
    """A canary at 10% with one instance beside three: about a tenth of the calls reach it;
    weights removed, every instance counts alike again."""

    async def main(registry: EmbeddedRegistry, client: ServiceClient) -> None:
        fleet = Fleet(registry)
        canary = await fleet.add(version="1.1")
        for _ in range(3):
            await fleet.add(version="1.0")
        await registry.set_weights("products", {"1.1": 10, "1.0": 90})
        for _ in range(400):
            assert (await client.get("products", "/p")).status == 200
        assert 20 <= fleet.hits[canary.port] <= 65
        await registry.set_weights("products", None)
        await asyncio.sleep(0.1)  # noqa: TID251 (fake time: the watch brings the change)
        fleet.hits.clear()
        for _ in range(400):
            assert (await client.get("products", "/p")).status == 200
        assert 65 <= fleet.hits[canary.port] <= 140
        await fleet.aclose()

    run(main)
