"""The sidecar's subscriptions: bus messages POSTed to the app beside it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tests.unit.test_gateway_tracing import attributes
from tests.unit.test_sidecar import App, sidecar_beside, wait_for

from meshkit.bus import EmbeddedBus
from meshkit.errors import ConfigError
from meshkit.http import FieldError, Problem, Request, Response, problem_response
from meshkit.registry import EmbeddedRegistry
from meshkit.sidecar import EventRoute, Sidecar, SidecarConfig
from meshkit.sidecar._events import parse_route
from meshkit.sidecar._health import cancel_and_wait

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ROUTE = EventRoute(topic="order.created", group="notifications", path="/events/order-created")


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[EmbeddedBus]:
    opened = await EmbeddedBus.open(tmp_path / "bus.sqlite3")
    yield opened
    await opened.aclose()


async def test_a_message_is_posted_to_the_app_and_a_2xx_acks_it(bus: EmbeddedBus) -> None:
    """The payload is the body; id, topic, deliveries and the message's headers come along,
    the trace context naming the sidecar's process span as the app's parent."""
    app = App()
    async with sidecar_beside(app, bus=bus, events=(ROUTE,)) as (sidecar, _, sink):
        published = await bus.publish(
            "order.created", b'{"order_id": 7}', headers={"traceparent": TRACEPARENT}
        )
        await wait_for(lambda: _true(bool(app.seen)))
        [request] = app.seen
        assert (request.method, request.path) == ("POST", "/events/order-created")
        assert request.body == b'{"order_id": 7}'
        assert request.header("content-type") == "application/json"
        assert request.header("meshkit-message-id") == published.id
        assert request.header("meshkit-topic") == "order.created"
        assert request.header("meshkit-deliveries") == "1"
        # Acked: a second message arrives, the first never again.
        await bus.publish("order.created", b'{"order_id": 8}')
        await wait_for(lambda: _true(len(app.seen) == 2))
        assert app.seen[1].body == b'{"order_id": 8}'
        assert sidecar.exporter is not None
        await sidecar.exporter.flush()
    assert await bus.dead_letters() == []
    [process] = [span for span in sink.spans if span["name"] == "process order.created"]
    version, trace_id, parent, flags = TRACEPARENT.split("-")
    assert (process["traceId"], process["parentSpanId"], process["kind"]) == (trace_id, parent, 5)
    assert attributes(process)["messaging.consumer.group.name"] == "notifications"
    sent = request.header("traceparent")
    assert sent == f"{version}-{trace_id}-{process['spanId']}-{flags}"


async def test_connection_headers_of_a_message_stay_out_of_the_request(bus: EmbeddedBus) -> None:
    """Hop-by-hop fields and Expect describe a connection, not the message: not passed on."""
    app = App()
    async with sidecar_beside(app, bus=bus, events=(ROUTE,)):
        headers = {"te": "trailers", "upgrade": "h2c", "expect": "100-continue", "x-tenant": "t1"}
        await bus.publish("order.created", b"{}", headers=headers)
        await wait_for(lambda: _true(bool(app.seen)))
    [request] = app.seen
    assert request.header("x-tenant") == "t1"
    assert [request.header(name) for name in ("te", "upgrade", "expect")] == [None] * 3


async def test_stopping_the_registrar_raises_the_callers_own_cancellation() -> None:
    """A cancel aimed at the caller while the task cleans up is not swallowed."""
    started, cleaning, finish = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def slow_cleanup() -> None:
        try:
            started.set()
            await asyncio.Event().wait()  # until cancelled
        finally:
            cleaning.set()
            await asyncio.shield(finish.wait())

    task = asyncio.create_task(slow_cleanup())
    await started.wait()
    caller = asyncio.create_task(cancel_and_wait(task))
    await cleaning.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    finish.set()
    await asyncio.wait({task})


async def test_a_refused_message_is_redelivered_then_dead_lettered_with_the_answer(
    bus: EmbeddedBus,
) -> None:
    """A 422 fails the delivery; after max_deliveries the letter's error is the app's answer."""
    app = App()
    app.status = 422
    async with sidecar_beside(app, bus=bus, events=(ROUTE,), max_deliveries=2):
        published = await bus.publish("order.created", b"{}")
        await wait_for(lambda: _nonempty_letters(bus), within=10)
    assert [r.header("meshkit-deliveries") for r in app.seen] == ["1", "2"]
    [letter] = await bus.dead_letters()
    assert (letter.group, letter.deliveries, letter.message.id) == (
        "notifications",
        2,
        published.id,
    )
    # The app's answer is no problem (RFC 9457): its status's title stands for it.
    assert (
        letter.error
        == "PeerError: the app answered 422 at /events/order-created: Unprocessable Content"
    )


class RefusingApp(App):
    """Refuses every message with ``answer``: (content type, body)."""

    def __init__(self, answer: tuple[str, bytes]) -> None:
        super().__init__()
        self.answer = answer

    async def handle(self, request: Request) -> Response:
        if request.path == "/health":
            return await super().handle(request)
        content_type, body = self.answer
        return Response(422, [(b"content-type", content_type.encode())], body)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (
            problem_response(
                Problem(
                    422, "no user 2 to confirm order 9", errors=(FieldError("user_id", "unknown"),)
                )
            ),
            "no user 2 to confirm order 9 (user_id: unknown)",
        ),
        (("text/plain", b"no user 2\n  at all"), "no user 2 at all"),
        (("text/html", b"<h1>" + b"x" * 1000), "<h1>" + "x" * 196),
    ],
    ids=["problem", "text", "long page"],
)
async def test_a_dead_letter_says_in_one_line_why_the_app_refused_it(
    bus: EmbeddedBus, answer: Response | tuple[str, bytes], said: str
) -> None:
    """A problem's detail and fields; a body that is not one, its text on one line, clipped."""
    if isinstance(answer, Response):
        answer = (answer.header("content-type") or "", answer.body)
    app = RefusingApp(answer)
    async with sidecar_beside(app, bus=bus, events=(ROUTE,), max_deliveries=1):
        await bus.publish("order.created", b"{}")
        await wait_for(lambda: _nonempty_letters(bus), within=10)
    [letter] = await bus.dead_letters()
    assert letter.error == f"PeerError: the app answered 422 at /events/order-created: {said}"


async def test_messages_stay_in_the_bus_while_the_app_is_out_of_the_registry(
    bus: EmbeddedBus,
) -> None:
    """Nothing is taken (no ack deadline runs) while the app fails; then delivery 1."""
    app = App()
    app.healthy = False
    async with sidecar_beside(app, bus=bus, events=(ROUTE,)) as (sidecar, _, _spans):
        await bus.publish("order.created", b"{}")
        registrar = sidecar.registrar
        assert registrar is not None
        await wait_for(
            lambda: _true(registrar.gate.healthy is None and bool(registrar.last_problem))
        )
        await bus.publish("order.created", b"{}")  # a fetch under way would answer now
        [subscription] = sidecar._subscriptions
        assert subscription.statistics.running == 0
        assert _group(bus)["leased"] == 0
        assert app.seen == []
        app.healthy = True
        await wait_for(lambda: _true(len(app.seen) == 2))
        assert [r.header("meshkit-deliveries") for r in app.seen] == ["1", "1"]


def _group(bus: EmbeddedBus) -> dict[str, int]:
    groups = bus.broker.statistics()["groups"]
    assert isinstance(groups, dict)
    return groups["order.created/notifications"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ("order.created:notifications", "subscribe"),
        ("order.created::/x", "subscribe"),
        ("Order:notifications:/x", "topic"),
        ("order.created:Bad Group:/x", "group"),
        ("order.created:notifications:x", "path"),
    ],
)
def test_a_malformed_subscription_names_its_part(spec: str, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_route(spec)
    assert caught.value.key == key


def test_the_command_line_form_keeps_colons_in_the_path() -> None:
    assert parse_route("a.b:g:/x:y") == EventRoute(topic="a.b", group="g", path="/x:y")


async def test_subscriptions_without_a_bus_are_refused() -> None:
    """A sidecar told to deliver events needs a bus, and says so before listening."""
    config = SidecarConfig(
        service="a", app_host="127.0.0.1", app_port=1, health="/", events=(ROUTE,)
    )
    registry = EmbeddedRegistry()
    with pytest.raises(ConfigError) as caught:
        Sidecar(config, registry)
    assert caught.value.key == "bus"
    with pytest.raises(ConfigError) as caught:
        SidecarConfig(service="a", app_host="127.0.0.1", app_port=1, health="/", max_deliveries=0)
    assert caught.value.key == "max_deliveries"


async def _true(value: bool) -> bool:
    return value


async def _nonempty_letters(bus: EmbeddedBus) -> bool:
    return bool(await bus.dead_letters())
