"""The shop's apps in-process, through httpx's ASGITransport: no mesh, no other service."""

import importlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from meshkit.bus import Message
from meshkit.http import PROBLEM_JSON, Problem, Response
from meshkit.saga import SagaRunner, SqliteSagaStore

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
APPS = ["users", "products", "inventory", "payments", "orders", "notifications"]


def load(name: str, monkeypatch: pytest.MonkeyPatch, data: Path | None = None) -> ModuleType:
    """``shop.<name>``, its database moved to ``data`` (nothing is opened until its lifespan)."""
    monkeypatch.syspath_prepend(str(SHOP))
    module = importlib.import_module(f"shop.{name}")
    if data is not None:
        monkeypatch.setattr(module.db, "path", data / f"{name}.sqlite3")
        monkeypatch.setattr(module.db, "opened", False)
    return module


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, inside its lifespan (which ASGITransport does not run)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client


@pytest.mark.parametrize("name", APPS)
def test_every_route_documents_its_answer(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each route of each app has a 2xx response in OpenAPI, with a schema unless it is a 204."""
    schema = load(name, monkeypatch).app.openapi()
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]
    assert operations
    for route, operation in operations:
        success = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert success, f"{route} documents no 2xx answer"
        for code, answer in success.items():
            if code == "204":
                assert "content" not in answer, route
                continue
            body = answer["content"]["application/json"]["schema"]
            assert body, f"{route} {code} has an empty schema"


def test_importing_the_apps_touches_no_file(tmp_path: Path) -> None:
    """In a fresh process, importing every app leaves the data directory as it was."""
    data = tmp_path / "data"
    code = "; ".join(f"import shop.{name}" for name in APPS)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=SHOP,
        env={**environ, "MESHKIT_DATA_DIR": str(data)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not data.exists()


async def test_the_lifespan_opens_the_database_with_its_demo_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving an app creates its file and seeds it."""
    users = load("users", monkeypatch, tmp_path)
    assert not users.db.path.exists()
    async with serving(users.app) as client:
        assert users.db.path.exists()
        assert (await client.get("/users/1")).json()["name"] == "Ada Lovelace"


class FakeMesh:
    """Stands in for ``service.client``: answers by (service, method, path), records each call.

    An answer may be a list: each call takes the next, the last one for good.
    """

    def __init__(self, answers: dict[tuple[str, str, str], Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str]] = []

    async def _call(self, service: str, method: str, path: str) -> Response:
        self.calls.append((service, method, path))
        answer = self.answers[(service, method, path)]
        if isinstance(answer, list):
            answer = answer.pop(0) if len(answer) > 1 else answer[0]
        status, body = answer
        return Response(status, [(b"content-type", b"application/json")], json.dumps(body).encode())

    async def get(self, service: str, path: str, **_: object) -> Response:
        return await self._call(service, "GET", path)

    async def post(self, service: str, path: str, **_: object) -> Response:
        return await self._call(service, "POST", path)

    async def delete(self, service: str, path: str, **_: object) -> Response:
        return await self._call(service, "DELETE", path)


# What orders' fake mesh answers unless a test says otherwise.
MESH: dict[tuple[str, str, str], tuple[int, object]] = {
    ("users", "GET", "/users/1"): (200, {"id": 1}),
    ("users", "GET", "/users/404"): (404, {"detail": "no user 404"}),
    ("products", "GET", "/products/3"): (200, {"id": 3, "price_cents": 3400}),
    ("inventory", "POST", "/reservations"): (201, {}),
    ("inventory", "DELETE", "/reservations/1"): (204, None),
    ("payments", "POST", "/payments"): (201, {"id": 70, "status": "captured"}),
    ("payments", "POST", "/payments/by-order/1/void"): (200, {"id": 70, "status": "refunded"}),
}
SHORT = [{"product_id": 3, "requested": 500, "available": 40}]
OUT_OF_STOCK = Problem(
    409, "not enough stock of product 3 (500 requested, 40 available)", extensions={"short": SHORT}
).to_dict()
DECLINED = Problem(402, "the card was declined").to_dict()


@asynccontextmanager
async def orders_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answers: dict[tuple[str, str, str], Any],
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeMesh]]:
    """Orders in-process, its ``mesh`` dependency answering ``answers`` over ``MESH``."""
    module = load("orders", monkeypatch, tmp_path)
    mesh = FakeMesh(MESH | answers)
    module.app.dependency_overrides[module.mesh] = lambda: mesh
    # The saga's steps call mesh() themselves, outside any request; and each
    # test gets a runner of its own, on its own database.
    monkeypatch.setattr(module, "mesh", lambda: mesh)
    store = SqliteSagaStore(tmp_path / "orders.sqlite3")
    monkeypatch.setattr(module, "sagas", SagaRunner(store, [module.placing]))
    try:
        async with serving(module.app) as client, module.sagas:
            yield client, mesh
    finally:
        module.app.dependency_overrides.clear()


@pytest.fixture
async def orders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeMesh]]:
    async with orders_with(tmp_path, monkeypatch, {}) as served:
        yield served


async def test_orders_calls_other_services_through_its_dependency(
    orders: tuple[httpx.AsyncClient, FakeMesh],
) -> None:
    """With ``mesh`` overridden, an order is checked, reserved, charged and confirmed in-process."""
    client, mesh = orders
    order = {"user_id": 1, "items": [{"product_id": 3, "quantity": 2}]}
    placed = await client.post("/orders", json=order)
    assert placed.status_code == 201, placed.text
    assert placed.json() == {"id": 1, "status": "confirmed", "total_cents": 6800}
    assert [call[0] for call in mesh.calls] == ["users", "products", "inventory", "payments"]
    stored = (await client.get("/orders/1")).json()
    assert (stored["status"], stored["payment_id"]) == ("confirmed", 70)
    assert stored["items"] == [{"product_id": 3, "quantity": 2, "price_cents": 3400}]


async def test_an_order_for_an_unknown_user_is_a_422_naming_the_field(
    orders: tuple[httpx.AsyncClient, FakeMesh],
) -> None:
    """The answer's detail is a plain string naming the field and the user."""
    client, mesh = orders
    order = {"user_id": 404, "items": [{"product_id": 3, "quantity": 1}]}
    refused = await client.post("/orders", json=order)
    assert refused.status_code == 422
    assert refused.json()["detail"] == "user_id: no user 404"
    assert mesh.calls == [("users", "GET", "/users/404")]


async def test_an_order_published_twice_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """order.created for one order under two message ids adds its items to 'sold' once."""
    inventory = load("inventory", monkeypatch, tmp_path)
    event = json.dumps({"order_id": 7, "items": [{"product_id": 3, "quantity": 2}]}).encode()
    async with serving(inventory.app) as client:
        for message_id in ("first-publish", "published-again", "first-publish"):
            message = Message(id=message_id, topic="order.created", payload=event)
            await inventory.count_sale(message)
        stock = (await client.get("/stock/3")).json()
        assert stock == {"product_id": 3, "quantity": 40, "sold": 2}


async def test_a_declined_order_releases_its_stock_and_is_recorded_declined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payments' 402 problem: orders releases the reservation and answers a problem of its own."""
    declined = {("payments", "POST", "/payments"): (402, DECLINED)}
    async with orders_with(tmp_path, monkeypatch, declined) as (client, mesh):
        order = {"user_id": 1, "items": [{"product_id": 3, "quantity": 2}]}
        refused = await client.post("/orders", json=order)
        assert refused.status_code == 402
        assert refused.json()["detail"] == "order 1 declined: the card was declined"
        assert mesh.calls[-1] == ("inventory", "DELETE", "/reservations/1")
        stored = (await client.get("/orders/1")).json()
        assert (stored["status"], stored["reason"]) == ("declined", "the card was declined")


async def test_an_order_shows_the_steps_of_its_saga(
    orders: tuple[httpx.AsyncClient, FakeMesh],
) -> None:
    """GET /orders/{id} carries the saga's status and each step's phase and attempts."""
    client, _ = orders
    placed = await client.post(
        "/orders", json={"user_id": 1, "items": [{"product_id": 3, "quantity": 1}]}
    )
    assert placed.status_code == 201, placed.text
    saga = (await client.get("/orders/1")).json()["saga"]
    assert saga["status"] == "completed"
    assert [(s["name"], s["phase"], s["attempts"]) for s in saga["steps"]] == [
        ("reserve", "done", 1),
        ("charge", "done", 1),
        ("confirm", "done", 1),
    ]


async def test_a_charge_answered_503_is_tried_again_until_it_is_known(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unknown outcome is retried under the step's key: the order still ends confirmed."""
    flaky = {
        ("payments", "POST", "/payments"): [
            (503, Problem(503, "busy").to_dict()),
            (201, {"id": 70, "status": "captured"}),
        ]
    }
    async with orders_with(tmp_path, monkeypatch, flaky) as (client, mesh):
        order = {"user_id": 1, "items": [{"product_id": 3, "quantity": 1}]}
        placed = await client.post("/orders", json=order)
        assert placed.status_code == 201, placed.text
        assert mesh.calls.count(("payments", "POST", "/payments")) == 2
        saga = (await client.get("/orders/1")).json()["saga"]
        assert saga["steps"][1]["attempts"] == 2


async def test_a_client_s_idempotency_key_places_one_order(
    orders: tuple[httpx.AsyncClient, FakeMesh],
) -> None:
    """The same key returns the same order; with another order's body, a 422."""
    client, mesh = orders
    order = {"user_id": 1, "items": [{"product_id": 3, "quantity": 2}]}
    headers = {"Idempotency-Key": '"checkout-41"'}
    first = await client.post("/orders", json=order, headers=headers)
    again = await client.post("/orders", json=order, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert first.json() == again.json()
    assert mesh.calls.count(("payments", "POST", "/payments")) == 1
    other = {"user_id": 1, "items": [{"product_id": 3, "quantity": 1}]}
    reused = await client.post("/orders", json=other, headers=headers)
    assert reused.status_code == 422
    assert "different order" in reused.json()["detail"]


async def test_an_order_still_going_when_the_wait_ends_is_a_202_with_its_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The saga goes on after the answer; the client polls the Location."""
    module = load("orders", monkeypatch, tmp_path)
    monkeypatch.setattr(module, "_ANSWER_WITHIN", 0.0)
    async with orders_with(tmp_path, monkeypatch, {}) as (client, _):
        order = {"user_id": 1, "items": [{"product_id": 3, "quantity": 1}]}
        placed = await client.post("/orders", json=order)
        assert placed.status_code == 202, placed.text
        assert placed.headers["location"] == "orders/1"
        assert placed.json()["status"] == "pending"
        saga_id = (await client.get("/orders/1")).json()["saga"]["id"]
        await module.sagas.wait(saga_id, 5)
        assert (await client.get("/orders/1")).json()["status"] == "confirmed"


# -- every error the shop answers is a problem (RFC 9457) --------------------------------


@dataclass(frozen=True)
class Refusal:
    """A request an app refuses, and what its problem must say beyond the five members."""

    app: str
    method: str
    path: str
    body: object = None
    status: int = 400
    members: dict[str, Any] = field(default_factory=dict)
    fields: tuple[str, ...] = ()  # the paths its `errors` name, in order
    mesh: dict[tuple[str, str, str], tuple[int, object]] = field(default_factory=dict)


REFUSALS = {
    "users: unknown user": Refusal(
        "users", "GET", "/users/999", status=404, members={"detail": "no user 999"}
    ),
    "orders: invalid order": Refusal(
        "orders",
        "POST",
        "/orders",
        {"user_id": 0, "items": [{"product_id": 3, "quantity": 0}, {"quantity": 1}]},
        422,
        fields=("body.user_id", "body.items.0.quantity", "body.items.1.product_id"),
    ),
    "orders: out of stock": Refusal(
        "orders",
        "POST",
        "/orders",
        {"user_id": 1, "items": [{"product_id": 3, "quantity": 500}]},
        409,
        {
            "detail": "order 1 rejected: not enough stock of product 3"
            " (500 requested, 40 available)",
            "order": {"id": 1, "status": "rejected"},
            "short": SHORT,
        },
        mesh={("inventory", "POST", "/reservations"): (409, OUT_OF_STOCK)},
    ),
    "orders: payment declined": Refusal(
        "orders",
        "POST",
        "/orders",
        {"user_id": 1, "items": [{"product_id": 3, "quantity": 1}]},
        402,
        {"order": {"id": 1, "status": "declined"}},
        mesh={("payments", "POST", "/payments"): (402, DECLINED)},
    ),
    "orders: unknown order": Refusal("orders", "GET", "/orders/5", status=404),
    "payments: card declined": Refusal(
        "payments",
        "POST",
        "/payments",
        {"order_id": 1, "user_id": 1, "amount_cents": 100},
        402,
        {"detail": "the card was declined"},
    ),
    "inventory: out of stock": Refusal(
        "inventory",
        "POST",
        "/reservations",
        {
            "order_id": 1,
            "items": [{"product_id": 2, "quantity": 500}, {"product_id": 3, "quantity": 1}],
        },
        409,
        {
            "detail": "not enough stock of product 2 (500 requested, 10 available)",
            "short": [{"product_id": 2, "requested": 500, "available": 10}],
        },
    ),
    "notifications: no route": Refusal("notifications", "GET", "/nowhere", status=404),
    "notifications: no user_id": Refusal(
        "notifications", "GET", "/notifications", status=422, fields=("query.user_id",)
    ),
    "notifications: invalid event": Refusal(
        "notifications",
        "POST",
        "/events/order-created",
        {"order_id": 0, "user_id": 1},
        422,
        fields=("body.order_id", "body.total_cents"),
    ),
    "notifications: wrong method": Refusal("notifications", "DELETE", "/health", status=405),
}


@asynccontextmanager
async def refusing(
    case: Refusal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the case's app: orders with its fake mesh, payments declining every charge."""
    if case.app == "orders":
        async with orders_with(tmp_path, monkeypatch, case.mesh) as (client, _):
            yield client
        return
    module = load(case.app, monkeypatch, tmp_path)
    if case.app == "payments":
        monkeypatch.setattr(module, "FAILURE_RATE", 1.0)
    async with serving(module.app) as client:
        yield client


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
async def test_every_error_the_shop_answers_is_a_problem(
    case: Refusal, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content type, the five members, the request id as instance, extensions where due."""
    async with refusing(case, tmp_path, monkeypatch) as client:
        answer = await client.request(
            case.method, case.path, json=case.body, headers={"x-request-id": "req-7"}
        )
    assert answer.status_code == case.status, answer.text
    assert answer.headers["content-type"] == PROBLEM_JSON
    body = answer.json()
    expected = Problem(case.status)  # its title: RFC 9110's reason phrase
    assert (body["type"], body["title"], body["status"]) == (
        "about:blank",
        expected.title,
        case.status,
    )
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == "req-7"
    for name, value in case.members.items():
        assert body[name] == value, body
    assert [e["field"] for e in body.get("errors", [])] == list(case.fields), body
    for name in case.fields:  # the detail names the invalid inputs too
        assert name in body["detail"], body


# -- Idempotency-Key: a repeat gets the first answer and changes nothing -------------------

RESERVE = {"order_id": 5, "items": [{"product_id": 3, "quantity": 4}]}
CHARGE = {"order_id": 5, "user_id": 1, "amount_cents": 1200}
REUSED = "Idempotency-Key reused with a different request"


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{key}"'}


@asynccontextmanager
async def app_of(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(load(name, monkeypatch, tmp_path).app) as client:
        yield client


async def stock_of(client: httpx.AsyncClient, product_id: int) -> int:
    return int((await client.get(f"/stock/{product_id}")).json()["quantity"])


async def test_a_reservation_repeated_with_its_key_gets_the_first_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repeat is answered 201 with the same body, marked replayed, and takes no more stock."""
    async with app_of("inventory", tmp_path, monkeypatch) as client:
        first = await client.post("/reservations", json=RESERVE, headers=keyed("r-5"))
        again = await client.post("/reservations", json=RESERVE, headers=keyed("r-5"))
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        assert "idempotent-replayed" not in first.headers
        assert again.headers["idempotent-replayed"] == "true"
        assert await stock_of(client, 3) == 36


async def test_a_key_reused_with_another_body_is_a_422_that_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same key, another order: a 422 problem, and the stock is as the first request left it."""
    other = {"order_id": 6, "items": [{"product_id": 3, "quantity": 1}]}
    async with app_of("inventory", tmp_path, monkeypatch) as client:
        await client.post("/reservations", json=RESERVE, headers=keyed("r-5"))
        reused = await client.post(
            "/reservations", json=other, headers={**keyed("r-5"), "x-request-id": "req-9"}
        )
        assert reused.status_code == 422
        assert reused.headers["content-type"] == PROBLEM_JSON
        assert (reused.json()["detail"], reused.json()["instance"]) == (REUSED, "req-9")
        assert await stock_of(client, 3) == 36


async def test_a_refusal_is_the_key_s_answer_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of stock under a key stays out of stock for that key once stock comes in."""
    big = {"order_id": 5, "items": [{"product_id": 3, "quantity": 50}]}
    async with app_of("inventory", tmp_path, monkeypatch) as client:
        refused = await client.post("/reservations", json=big, headers=keyed("r-5"))
        assert refused.status_code == 409
        assert (await client.put("/stock/3", json={"quantity": 100})).status_code == 200
        again = await client.post("/reservations", json=big, headers=keyed("r-5"))
        assert again.status_code == 409
        assert again.json()["short"] == refused.json()["short"]
        assert await stock_of(client, 3) == 100
        fresh = await client.post("/reservations", json=big, headers=keyed("r-5b"))
        assert fresh.status_code == 201


async def test_releasing_nothing_is_done_and_a_late_reservation_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """204 with no reservation; the order's reservation arriving afterwards reserves nothing."""
    async with app_of("inventory", tmp_path, monkeypatch) as client:
        assert (await client.delete("/reservations/5")).status_code == 204
        late = await client.post("/reservations", json=RESERVE, headers=keyed("r-5"))
        assert late.status_code == 409
        assert late.headers["content-type"] == PROBLEM_JSON
        assert late.json()["detail"] == "order 5 was released"
        assert "short" not in late.json()
        assert await stock_of(client, 3) == 40


async def test_a_release_puts_the_stock_back_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Released twice, with and without keys: the stock is back where it started, once."""
    async with app_of("inventory", tmp_path, monkeypatch) as client:
        assert (await client.post("/reservations", json=RESERVE)).status_code == 201
        # One key for a step and its compensation: each operation has its own.
        released = await client.delete("/reservations/5", headers=keyed("r-5"))
        again = await client.delete("/reservations/5", headers=keyed("r-5"))
        assert (released.status_code, again.status_code) == (204, 204)
        assert again.headers["idempotent-replayed"] == "true"
        assert (await client.delete("/reservations/5")).status_code == 204
        assert await stock_of(client, 3) == 40
        other = await client.delete("/reservations/6", headers=keyed("r-5"))
        assert (other.status_code, other.json()["detail"]) == (422, REUSED)


async def test_a_malformed_key_is_a_400(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An Idempotency-Key that is no valid key is refused before anything is done."""
    async with app_of("inventory", tmp_path, monkeypatch) as client:
        bad = await client.post(
            "/reservations", json=RESERVE, headers={"Idempotency-Key": '"unterminated'}
        )
        assert bad.status_code == 400
        assert bad.json()["detail"].startswith("Idempotency-Key:")
        assert await stock_of(client, 3) == 40


async def test_a_charge_repeated_with_its_key_charges_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repeat gets the first 201 and its payment; another body under the key is a 422."""
    async with app_of("payments", tmp_path, monkeypatch) as client:
        first = await client.post("/payments", json=CHARGE, headers=keyed("p-5"))
        again = await client.post("/payments", json=CHARGE, headers=keyed("p-5"))
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        more = await client.post(
            "/payments", json={**CHARGE, "amount_cents": 9900}, headers=keyed("p-5")
        )
        assert (more.status_code, more.json()["detail"]) == (422, REUSED)
        payment = (await client.get("/payments/by-order/5")).json()
        assert (payment["id"], payment["amount_cents"]) == (first.json()["id"], 1200)
        assert (await client.get("/payments/2")).status_code == 404


async def test_a_declined_charge_repeated_with_its_key_stays_declined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decline is the key's answer: no new roll of the dice, however the odds change."""
    payments = load("payments", monkeypatch, tmp_path)
    monkeypatch.setattr(payments, "FAILURE_RATE", 1.0)
    async with serving(payments.app) as client:
        declined = await client.post("/payments", json=CHARGE, headers=keyed("p-5"))
        assert declined.status_code == 402
        monkeypatch.setattr(payments, "FAILURE_RATE", 0.0)
        again = await client.post("/payments", json=CHARGE, headers=keyed("p-5"))
        assert (again.status_code, again.json()["detail"]) == (402, "the card was declined")
        assert again.headers["content-type"] == PROBLEM_JSON
        assert (await client.get("/payments/by-order/5")).status_code == 404
        assert (await client.post("/payments", json=CHARGE)).status_code == 201  # no key


async def test_a_charge_above_the_card_limit_is_declined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PAYMENT_CARD_LIMIT_CENTS declines a charge above it, every time; one at the limit passes."""
    payments = load("payments", monkeypatch, tmp_path)
    monkeypatch.setattr(payments, "CARD_LIMIT", 1199)
    async with serving(payments.app) as client:
        over = await client.post("/payments", json=CHARGE)
        assert (over.status_code, over.json()["detail"]) == (
            402,
            "the card was declined: 1200 cents is over its limit",
        )
        assert (await client.get("/payments/by-order/5")).status_code == 404
        monkeypatch.setattr(payments, "CARD_LIMIT", 1200)
        assert (await client.post("/payments", json=CHARGE)).status_code == 201


async def test_voiding_twice_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A capture voided twice is refunded once; a keyed repeat gets the first answer."""
    async with app_of("payments", tmp_path, monkeypatch) as client:
        charged = (await client.post("/payments", json=CHARGE)).json()
        first = await client.post("/payments/by-order/5/void", headers=keyed("v-5"))
        again = await client.post("/payments/by-order/5/void", headers=keyed("v-5"))
        unkeyed = await client.post("/payments/by-order/5/void")
        assert [a.status_code for a in (first, again, unkeyed)] == [200, 200, 200]
        assert first.json() == again.json() == unkeyed.json() == {**charged, "status": "refunded"}
        assert again.headers["idempotent-replayed"] == "true"


async def test_a_charge_after_its_void_captures_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Voiding an order never charged leaves a 'voided' row that a late keyed charge gets."""
    async with app_of("payments", tmp_path, monkeypatch) as client:
        voided = await client.post("/payments/by-order/5/void", headers=keyed("v-5"))
        assert (voided.status_code, voided.json()["status"]) == (200, "voided")
        late = await client.post("/payments", json=CHARGE, headers=keyed("p-5"))
        assert (late.status_code, late.json()) == (200, voided.json())
