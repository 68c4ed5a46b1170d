"""The control plane's /metrics and Prometheus service discovery, and the bus's and sagas'
metric sets, with real parts in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from meshkit._clock import SystemClock
from meshkit.bus import EmbeddedBus, Message, subscribe
from meshkit.bus._metrics import SubscriptionCollector
from meshkit.control import ControlPlane
from meshkit.control._metrics import endpoint
from meshkit.http import HTTPClient
from meshkit.policy import Backoff, Redelivery
from meshkit.saga import Saga, SagaRunner, SqliteSagaStore, StepContext, StepFailed
from meshkit.saga._metrics import SagaMetrics

TOKEN = "plane-metrics-token-0123456789"


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(data_dir=tmp_path, token=TOKEN, port=0) as control:
        yield control


async def call(
    plane: ControlPlane, method: str, target: str, body: object = None, token: str | None = TOKEN
) -> tuple[int, bytes, dict[bytes, bytes]]:
    assert plane.address is not None
    host, port = plane.address
    headers = [] if token is None else [(b"authorization", f"Bearer {token}".encode())]
    raw = b"" if body is None else msgspec.json.encode(body)
    async with HTTPClient() as client:
        response = await client.request(method, host, port, target, headers=headers, body=raw)
    return response.status, response.body, dict(response.headers)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def register_body(service: str, instance: str, port: int, **metadata: str) -> dict[str, object]:
    return {
        "service": service,
        "id": instance,
        "host": "127.0.0.1",
        "port": port,
        "ttl": 5,
        "version": "2.1",
        "metadata": metadata,
    }


async def test_service_discovery_lists_every_instance_and_the_plane(plane: ControlPlane) -> None:
    """One target group per instance, labelled service, instance, version, with its path."""
    await call(plane, "POST", "/v1/registry/instances", register_body("orders", "o-2", 9002))
    await call(
        plane,
        "POST",
        "/v1/registry/instances",
        register_body("orders", "o-1", 9001, metrics_path="/-/metrics"),
    )
    status, body, _ = await call(plane, "GET", "/v1/prometheus/targets")
    assert status == 200
    assert plane.address is not None
    assert msgspec.json.decode(body) == [
        {
            "targets": [f"127.0.0.1:{plane.address[1]}"],
            "labels": {
                "service": "meshkit-control-plane",
                "instance": "meshkit-control-plane",
                "version": msgspec.json.decode(body)[0]["labels"]["version"],
                "__metrics_path__": "/metrics",
            },
        },
        {
            "targets": ["127.0.0.1:9001"],
            "labels": {
                "service": "orders",
                "instance": "o-1",
                "version": "2.1",
                "__metrics_path__": "/-/metrics",
            },
        },
        {
            "targets": ["127.0.0.1:9002"],
            "labels": {
                "service": "orders",
                "instance": "o-2",
                "version": "2.1",
                "__metrics_path__": "/metrics",
            },
        },
    ]


async def test_service_discovery_needs_the_token(plane: ControlPlane) -> None:
    """Without the token the targets are refused (they reveal every address); /metrics is not."""
    assert (await call(plane, "GET", "/v1/prometheus/targets", token=None))[0] == 401
    assert (await call(plane, "POST", "/v1/prometheus/targets"))[0] == 405
    assert (await call(plane, "GET", "/metrics", token=None))[0] == 200


async def test_plane_metrics_count_instances_leases_and_requests(plane: ControlPlane) -> None:
    """Instances per service, lease events and API requests by endpoint template."""
    for number in (1, 2):
        _, body, _ = await call(
            plane, "POST", "/v1/registry/instances", register_body("users", f"u-{number}", number)
        )
    lease = msgspec.json.decode(body)["lease_id"]
    await call(plane, "PUT", f"/v1/registry/leases/{lease}")
    await call(plane, "DELETE", f"/v1/registry/leases/{lease}")
    await call(plane, "PUT", f"/v1/registry/leases/{lease}")  # gone: 404
    _, text, headers = await call(plane, "GET", "/metrics", token=None)
    assert headers[b"content-type"].startswith(b"text/plain; version=0.0.4")
    found = samples(text)
    assert found[("meshkit_registry_instances", (("service", "users"),))] == 1
    assert found[("meshkit_registry_leases", ())] == 1
    assert found[("meshkit_registry_lease_events_total", (("event", "registered"),))] == 2
    assert found[("meshkit_registry_lease_events_total", (("event", "renewed"),))] == 1
    assert found[("meshkit_registry_lease_events_total", (("event", "removed"),))] == 1
    leases = "/v1/registry/leases/{lease_id}"
    requests = "meshkit_control_requests_total"
    key = (("code", "200"), ("endpoint", leases), ("method", "PUT"))
    assert found[(requests, key)] == 1
    assert found[(requests, (("code", "404"), ("endpoint", leases), ("method", "PUT")))] == 1
    assert not [name for name, labels in found if str(lease) in str(labels)]


async def test_plane_metrics_show_the_broker(plane: ControlPlane) -> None:
    """Appends per topic, and each group's lag, from the embedded broker."""
    await call(plane, "POST", "/v1/bus/groups/orders.created/mailer", {"redelivery": {}})
    messages = [{"topic": "orders.created", "id": f"m{n}", "payload": {"n": n}} for n in range(3)]
    status, body, _ = await call(plane, "POST", "/v1/bus/publish", {"messages": messages})
    assert status == 200, body
    found = samples((await call(plane, "GET", "/metrics"))[1])
    topic = (("topic", "orders.created"),)
    assert found[("meshkit_broker_published_messages_total", topic)] == 3
    group = (("group", "mailer"), ("topic", "orders.created"))
    assert found[("meshkit_broker_consumer_lag_messages", group)] == 3
    assert found[("meshkit_broker_pending_messages", group)] == 0


def test_endpoint_templates_bound_the_label_values() -> None:
    """Ids, topics and groups never reach a label; unknown paths are one value."""
    assert endpoint("/v1/registry/services/orders") == "/v1/registry/services/{service}"
    assert endpoint("/v1/bus/groups/t/g/fetch") == "/v1/bus/groups/{topic}/{group}/fetch"
    assert endpoint("/v1/bus/groups/t/g") == "/v1/bus/groups/{topic}/{group}"
    assert endpoint("/v1/bus/dead-letters/12/replay") == "/v1/bus/dead-letters/{id}/replay"
    assert endpoint("/wp-admin/1") == "other"


async def test_subscriptions_count_deliveries_acks_failures_and_dead_letters(
    tmp_path: Path,
) -> None:
    """A message that always fails is delivered twice, then dead-lettered; one is acked."""
    bus = await EmbeddedBus.open(tmp_path / "bus.sqlite3")
    handled = asyncio.Event()

    async def handler(message: Message) -> None:
        if message.json() == "poison":
            if message.deliveries == 2:
                handled.set()
            raise ValueError("refused")

    redelivery = Redelivery(max_deliveries=2, backoff=Backoff(initial=0.01, maximum=0.01))
    member = subscribe(bus, "jobs", "workers", handler, redelivery=redelivery)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SubscriptionCollector(lambda: [member]))
    async with member:
        await bus.publish("jobs", "fine")
        await bus.publish("jobs", "poison")
        await asyncio.wait_for(handled.wait(), 10)
        # The dead letter is counted as the failing handler returns, right after it
        # set the event; the ack of the first message went out before it.
        async with asyncio.timeout(10):
            while member.statistics.acked < 1 or member.statistics.dead_lettered < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)  # noqa: TID251 (the real broker, real time)
    await bus.aclose()
    labels = {"topic": "jobs", "group": "workers"}
    value = registry.get_sample_value
    assert value("meshkit_bus_delivered_messages_total", labels) == 3
    assert value("meshkit_bus_acknowledged_messages_total", labels) == 1
    assert value("meshkit_bus_failed_messages_total", labels) == 2
    assert value("meshkit_bus_dead_lettered_messages_total", labels) == 1
    assert value("meshkit_bus_published_messages_total", {}) == 0


order = Saga("order")


@order.step(attempts=1)
async def reserve(ctx: StepContext) -> None:
    if ctx.input.get("refuse"):
        raise StepFailed("out of stock")


async def test_saga_runs_are_counted_by_outcome(tmp_path: Path) -> None:
    """Runs begun, and ended by status, with their duration."""
    metrics = SagaMetrics()
    async with SagaRunner(SqliteSagaStore(tmp_path / "sagas.sqlite3"), [order]) as runner:
        runner.on_run.append(metrics.observe)
        for number, given in enumerate(({}, {}, {"refuse": True})):
            run = await runner.begin(order, given, run_id=f"r{number}")
            await runner.wait(run.id, timeout=10)
    value = metrics.registry.get_sample_value
    assert value("meshkit_saga_runs_started_total", {"saga": "order"}) == 3
    assert value("meshkit_saga_runs_ended_total", {"saga": "order", "status": "completed"}) == 2
    assert value("meshkit_saga_runs_ended_total", {"saga": "order", "status": "compensated"}) == 1
    count = "meshkit_saga_run_duration_seconds_count"
    assert value(count, {"saga": "order", "status": "completed"}) == 2


# Within the store's retention (by age, from now), whatever the clock says.
NOW_NS = int(SystemClock().time() * 1e9)


async def test_plane_metrics_count_the_telemetry_it_stores(plane: ControlPlane) -> None:
    """Spans received over OTLP show in /metrics once written."""
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "charge",
        "kind": 2,
        "startTimeUnixNano": str(NOW_NS),
        "endTimeUnixNano": str(NOW_NS + 1000),
    }
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "payments"}}]
                },
                "scopeSpans": [{"scope": {"name": "test"}, "spans": [span]}],
            }
        ]
    }
    assert plane.address is not None
    async with HTTPClient() as client:
        answer = await client.request(
            "POST",
            *plane.address,
            "/v1/traces",
            headers=[
                (b"authorization", f"Bearer {TOKEN}".encode()),
                (b"content-type", b"application/json"),
            ],
            body=msgspec.json.encode(body),
        )
    assert answer.status == 200, answer.body
    stored = ("meshkit_telemetry_stored_records_total", (("signal", "spans"),))
    async with asyncio.timeout(10):
        while samples((await call(plane, "GET", "/metrics", token=None))[1]).get(stored) != 1:  # noqa: ASYNC110 (the store's writer thread: no event to await)
            await asyncio.sleep(0.05)  # noqa: TID251 (polling, bounded)
    found = samples((await call(plane, "GET", "/metrics", token=None))[1])
    assert found[("meshkit_telemetry_refused_records_total", (("signal", "spans"),))] == 0
