"""The sidecar in one process: an embedded registry, an app and services on loopback."""

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tests.unit.test_gateway_tracing import Sink, attributes

from meshkit.bus import Bus
from meshkit.errors import ConfigError
from meshkit.http import HTTPClient, HTTPServer, Request, Response, json_response
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.sidecar import METRICS_PATH, READY_PATH, HealthGate, Sidecar, SidecarConfig
from meshkit.sidecar._health import Registrar
from meshkit.testing import FakeClock

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def test_the_first_pass_registers_then_fall_and_rise_apply() -> None:
    """Failures while starting do not count; up at the first pass; down after 3 failures."""
    gate = HealthGate(fall=3, rise=2)
    assert [gate.observe(passed=False) for _ in range(5)] == [False] * 5
    assert gate.healthy is None
    assert gate.observe(passed=True)
    assert [gate.observe(passed=p) for p in (False, False, True, False, False, False)] == [
        True,
        True,
        True,
        True,
        True,
        False,
    ]
    assert [gate.observe(passed=p) for p in (True, False, True, True)] == [
        False,
        False,
        False,
        True,
    ]


@given(st.lists(st.booleans(), min_size=1, max_size=60))
def test_the_gate_flips_only_after_a_streak(results: list[bool]) -> None:
    """After the first pass, a change of state needs fall (or rise) results in a row."""
    gate = HealthGate(fall=3, rise=2)
    states = [gate.observe(passed=r) for r in results]
    first = results.index(True) if True in results else len(results)
    assert not any(states[:first])  # starting: not healthy, whatever the failures
    for index in range(first + 1, len(states)):
        if states[index] != states[index - 1]:
            needed = 2 if states[index] else 3
            assert index + 1 >= needed
            assert all(r == states[index] for r in results[index + 1 - needed : index + 1])


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"health": "ready"}, "health"),
        ({"service": "Bad_Name"}, "service"),
        ({"fall": 0}, "fall"),
        ({"rise": 0}, "rise"),
        ({"ttl": 0.5}, "ttl"),
        ({"interval": 0}, "interval"),
        ({"app_port": 0}, "app"),
    ],
)
def test_a_bad_sidecar_configuration_names_its_option(changes: dict[str, object], key: str) -> None:
    """Every option is checked before anything listens."""
    values: dict[str, object] = {
        "service": "a",
        "app_host": "127.0.0.1",
        "app_port": 1,
        "health": "/",
    }
    with pytest.raises(ConfigError) as caught:
        SidecarConfig(**{**values, **changes})  # type: ignore[arg-type]
    assert caught.value.key == key


def test_the_outbound_port_stays_on_loopback_by_default() -> None:
    """Opening the inbound port to the network does not open the outbound one."""
    config = SidecarConfig(
        service="a",
        app_host="127.0.0.1",
        app_port=1,
        health="/",
        host="0.0.0.0",  # noqa: S104
    )
    assert config.outbound_host == "127.0.0.1"
    assert config.trust_forwarded is False


class App:
    """The app beside the sidecar: answers, or fails its health check when told."""

    def __init__(self) -> None:
        self.healthy = True
        self.status = 200  # what it answers to anything but its health check
        self.seen: list[Request] = []
        self.server = HTTPServer(self.handle)

    async def handle(self, request: Request) -> Response:
        if request.path == "/health":
            return json_response(200 if self.healthy else 503, {})
        self.seen.append(request)
        return json_response(self.status, {"app": request.path})


@asynccontextmanager
async def sidecar_beside(
    app: App, *, bus: Bus | None = None, **options: object
) -> AsyncIterator[tuple[Sidecar, EmbeddedRegistry, Sink]]:
    registry = EmbeddedRegistry()
    registry.start()
    _, app_port = await app.server.start()
    spans = Sink()
    config = SidecarConfig(
        service="notifications",
        app_host="127.0.0.1",
        app_port=app_port,
        health="/health",
        interval=0.05,
        fall=2,
        rise=1,
        **options,  # type: ignore[arg-type]
    )
    sidecar = Sidecar(config, registry, bus=bus, telemetry=spans)
    await sidecar.start()
    try:
        yield sidecar, registry, spans
    finally:
        await sidecar.aclose(grace=1)
        await app.server.aclose(grace=0)
        await registry.aclose()


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 5.0) -> None:
    deadline = time.monotonic() + within  # noqa: TID251 (real servers, real time)
    while not await condition():
        assert time.monotonic() < deadline, "not within the deadline"  # noqa: TID251
        await asyncio.sleep(0.01)  # noqa: TID251 (polling real servers, bounded)


async def listed(registry: EmbeddedRegistry, service: str = "notifications") -> list[Instance]:
    return list((await registry.lookup(service)).instances)


async def test_the_app_is_registered_at_the_inbound_port_and_reached_through_it() -> None:
    """The registry lists the sidecar's inbound port; a request there reaches the app."""
    app = App()
    async with sidecar_beside(app, version="2.0") as (sidecar, registry, spans):
        await wait_for(lambda: _nonempty(listed(registry)))
        [instance] = await listed(registry)
        assert instance.version == "2.0"
        assert instance.metadata == {"sidecar": "meshkit", "metrics_path": "/.meshkit/metrics"}
        async with HTTPClient() as client:
            headers = [(b"traceparent", f"00-{TRACE}-{PARENT}-01".encode())]
            answer = await client.request(
                "GET", instance.host, instance.port, "/notifications", headers=headers
            )
        assert answer.json() == {"app": "/notifications"}
        async with HTTPClient() as client:
            ready = await client.request("GET", instance.host, instance.port, READY_PATH)
        assert ready.status == 200  # registered: what `meshkit up` waits on
        sent = app.seen[-1].header("traceparent")
        assert sent is not None
        assert sent.startswith(f"00-{TRACE}-")
        assert PARENT not in sent
        assert sidecar.exporter is not None
        await sidecar.exporter.flush()
        span = spans.spans[-1]
        assert (span["kind"], span["traceId"], span["parentSpanId"]) == (2, TRACE, PARENT)
        assert attributes(span)["http.response.status_code"] == "200"
        assert sent == f"00-{TRACE}-{span['spanId']}-01"  # the app's parent is this span
        # The sidecar does not know the app's routes: the span is named by the method.
        assert span["name"] == "GET"
        assert "http.route" not in attributes(span)


async def test_an_app_failing_its_health_check_leaves_and_comes_back() -> None:
    """Two failed checks deregister at once; a pass registers again."""
    app = App()
    async with sidecar_beside(app) as (_, registry, _spans):
        await wait_for(lambda: _nonempty(listed(registry)))
        app.healthy = False
        await wait_for(lambda: _empty(listed(registry)), within=2)
        app.healthy = True
        await wait_for(lambda: _nonempty(listed(registry)), within=2)


async def test_a_lost_lease_is_survived_and_the_app_registered_again() -> None:
    """The registry forgets the lease; the app fails, recovers, and is listed again."""
    app = App()
    async with sidecar_beside(app) as (sidecar, registry, _spans):
        await wait_for(lambda: _nonempty(listed(registry)))
        assert sidecar.registrar is not None
        registration = sidecar.registrar.registration
        assert registration is not None
        await registry.deregister(registration)  # lost, as in a registry restart
        app.healthy = False
        await wait_for(lambda: _true(sidecar.registrar.registration is None), within=2)
        app.healthy = True
        await wait_for(lambda: _nonempty(listed(registry)), within=2)
        assert sidecar._task is not None
        assert not sidecar._task.done()


async def test_a_lease_lost_while_healthy_is_replaced_at_the_next_renewal() -> None:
    """Renewing a lease the registry forgot registers the app again, with no failed check."""
    app, clock, registry = App(), FakeClock(), EmbeddedRegistry()
    registry.start()
    _, port = await app.server.start()
    registrar = Registrar(
        registry,
        Instance(service="notifications", id="n-1", host="127.0.0.1", port=port),
        app=("127.0.0.1", port),
        health="/health",
        ttl=30,
        interval=1,
        clock=clock,
    )
    try:
        await registrar.step()
        first = registrar.registration
        assert first is not None
        await registry.deregister(first)  # lost, as in a registry restart
        clock.advance(11)  # past a third of the TTL: the next step renews
        await registrar.step()
        assert registrar.registration is not None
        assert registrar.registration.lease_id != first.lease_id
        assert [instance.id for instance in await listed(registry)] == ["n-1"]
    finally:
        await registrar._http.aclose()
        await app.server.aclose(grace=0)
        await registry.aclose()


def test_an_app_that_never_passes_is_reported_and_checked_less_often(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every 10 s without a pass the log says why; after the first 10 s, checks slow down."""
    clock = FakeClock()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # nothing listens there
    checks: list[float] = []

    async def main() -> None:
        registrar = Registrar(
            EmbeddedRegistry(),
            Instance(service="notifications", id="n-1", host="127.0.0.1", port=port),
            app=("127.0.0.1", port),
            health="/health",
            ttl=30,
            interval=2,
            clock=clock,
        )
        step = registrar.step

        async def counted() -> None:
            checks.append(clock.monotonic())
            await step()

        registrar.step = counted  # type: ignore[method-assign]
        task = asyncio.get_running_loop().create_task(registrar.run())
        await clock.sleep(25)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.WARNING, logger="meshkit.sidecar"):
        clock.run(main())
    notices = [record.getMessage() for record in caplog.records]
    assert len(notices) == 2
    assert notices[0].startswith("n-1 has not passed /health in 10s: ")
    assert notices[1].startswith("n-1 has not passed /health in 20s: ")
    assert 95 <= sum(1 for at in checks if at < 10) <= 101  # every 0.1 s at first
    assert sum(1 for at in checks if at >= 10) <= 8  # then every 2 s


async def test_a_new_trace_drops_the_tracestate_of_the_old_one() -> None:
    """Without a valid traceparent the span starts a trace, and tracestate does not follow."""
    app = App()
    async with sidecar_beside(app) as (_, registry, _spans):
        await wait_for(lambda: _nonempty(listed(registry)))
        [instance] = await listed(registry)
        async with HTTPClient() as client:
            headers = [(b"traceparent", b"garbage"), (b"tracestate", b"vendor=1")]
            await client.request("GET", instance.host, instance.port, "/x", headers=headers)
        assert app.seen[-1].header("tracestate") is None
        assert app.seen[-1].header("traceparent") is not None


async def test_outbound_reaches_services_by_name_with_retries() -> None:
    """/orders/x reaches /x on orders; a failing instance's GET is retried on the healthy one."""
    app = App()
    async with sidecar_beside(app) as (sidecar, registry, spans):
        calls: list[str] = []

        async def healthy(request: Request) -> Response:
            calls.append(request.path)
            return json_response(200, {"orders": request.path})

        async def broken(_: Request) -> Response:
            return json_response(503, {})

        servers = [HTTPServer(healthy), HTTPServer(broken)]
        for number, server in enumerate(servers):
            _, port = await server.start()
            instance = Instance(
                service="orders", id=f"orders-{number}", host="127.0.0.1", port=port
            )
            await registry.register(instance, ttl=30)
        outbound = sidecar.ports[1]
        try:
            async with HTTPClient() as client:
                for _ in range(20):
                    answer = await client.request("GET", "127.0.0.1", outbound, "/orders/7?x=1")
                    assert answer.status == 200
                    assert answer.json() == {"orders": "/7"}
                missing = await client.request("GET", "127.0.0.1", outbound, "/nothing/1")
                bad = await client.request("GET", "127.0.0.1", outbound, "/Bad_Name/1")
                metrics = await client.request("GET", "127.0.0.1", outbound, METRICS_PATH)
        finally:
            for server in servers:
                await server.aclose(grace=0)
        assert len(calls) == 20
        assert missing.status == 503
        assert "nothing" in missing.json()["detail"]
        assert bad.status == 400
        text = metrics.body.decode()
        assert (
            'meshkit_sidecar_outbound_requests_total{code="200",route="orders",service="orders"}'
            " 20.0" in text
        )
        assert sidecar.exporter is not None
        await sidecar.exporter.flush()
        assert {span["kind"] for span in spans.spans} == {3}  # CLIENT: the app's calls


async def _nonempty(pending: Awaitable[list[Instance]]) -> bool:
    return bool(await pending)


async def _empty(pending: Awaitable[list[Instance]]) -> bool:
    return not await pending


async def _true(value: bool) -> bool:
    return value
