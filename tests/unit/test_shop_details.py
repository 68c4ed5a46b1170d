"""GET /orders/{id}/details in-process: orders' own database, the other services faked."""

import asyncio
import importlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from meshkit.errors import DeadlineExceededError, ServiceUnavailableError
from meshkit.http import PROBLEM_JSON, Problem, Response

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"

USER = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com"}
KEYBOARD = {"id": 1, "name": "Mechanical keyboard", "price_cents": 8900}
HUB = {"id": 3, "name": "USB-C hub", "price_cents": 3400}
PAYMENT = {"id": 70, "order_id": 7, "user_id": 1, "amount_cents": 15700, "status": "captured"}
SENT = [{"id": 4, "user_id": 1, "order_id": 7, "message": "Order 7 is confirmed", "sent_at": "t"}]

Answer = tuple[int, object] | Exception
ANSWERS: dict[tuple[str, str], Answer] = {
    ("users", "/users/1"): (200, USER),
    ("products", "/products/1"): (200, KEYBOARD),
    ("products", "/products/3"): (200, HUB),
    ("payments", "/payments/by-order/7"): (200, PAYMENT),
    ("notifications", "/notifications?user_id=1&order_id=7"): (200, SENT),
}


class FakeMesh:
    """Stands in for ``service.client``: GETs answered by (service, path), or raising."""

    def __init__(self, answers: dict[tuple[str, str], Answer], together: int = 1) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str]] = []
        # Every call waits here until ``together`` calls are in flight at once.
        self.barrier = asyncio.Barrier(together)

    async def get(self, service: str, path: str, **_: object) -> Response:
        self.calls.append((service, path))
        await self.barrier.wait()
        answer = self.answers[(service, path)]
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return Response(status, [(b"content-type", b"application/json")], json.dumps(body).encode())


def load(name: str, monkeypatch: pytest.MonkeyPatch, data: Path) -> ModuleType:
    """``shop.<name>``, its database moved to ``data`` (nothing is opened until its lifespan)."""
    monkeypatch.syspath_prepend(str(SHOP))
    module = importlib.import_module(f"shop.{name}")
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


@asynccontextmanager
async def orders_with(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answers: dict[tuple[str, str], Answer],
    together: int = 1,
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeMesh]]:
    """Orders in-process holding order 7 (two hubs, a keyboard), its ``mesh`` faked."""
    orders = load("orders", monkeypatch, tmp_path)
    mesh = FakeMesh(ANSWERS | answers, together)
    orders.app.dependency_overrides[orders.mesh] = lambda: mesh
    try:
        async with serving(orders.app) as client:
            with orders.db.transaction() as tx:
                tx.execute(
                    "INSERT INTO orders (id, user_id, status, total_cents)"
                    " VALUES (7, 1, 'confirmed', 15700)"
                )
                tx.executemany(
                    "INSERT INTO order_items (order_id, product_id, quantity, price_cents)"
                    " VALUES (7, ?, ?, ?)",
                    [(3, 2, 3400), (1, 1, 8900)],
                )
            yield client, mesh
    finally:
        orders.app.dependency_overrides.clear()


async def test_the_details_gather_five_services_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All five calls are in flight together; the answer holds each part, none missing."""
    async with orders_with(tmp_path, monkeypatch, {}, together=5) as (client, mesh):
        answer = await client.get("/orders/7/details")
    assert answer.status_code == 200, answer.text
    details = answer.json()
    assert sorted(mesh.calls) == sorted(ANSWERS)
    order = details.pop("order")
    assert (order["id"], order["user_id"], order["status"], order["total_cents"]) == (
        7,
        1,
        "confirmed",
        15700,
    )
    assert sorted(order["items"], key=lambda item: item["product_id"]) == [
        {"product_id": 1, "quantity": 1, "price_cents": 8900},
        {"product_id": 3, "quantity": 2, "price_cents": 3400},
    ]
    assert details == {
        "user": USER,
        "products": [KEYBOARD, HUB],
        "payment": PAYMENT,
        "notifications": SENT,
        "missing": {},
        "partial": False,
    }


async def test_an_order_never_charged_has_no_payment_and_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payments' 404 is an answer: the payment is null, and not missing."""
    absent = Problem(404, "no payment for order 7").to_dict()
    answers: dict[tuple[str, str], Answer] = {("payments", "/payments/by-order/7"): (404, absent)}
    async with orders_with(tmp_path, monkeypatch, answers) as (client, _):
        details = (await client.get("/orders/7/details")).json()
    assert (details["payment"], details["missing"], details["partial"]) == (None, {}, False)


async def test_optional_parts_that_fail_are_left_out_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Payments answering 503 and notifications unreachable: a 200, partial, saying why."""
    unreachable = ServiceUnavailableError("notifications", "no instance registered")
    answers: dict[tuple[str, str], Answer] = {
        ("payments", "/payments/by-order/7"): (503, Problem(503, "draining").to_dict()),
        ("notifications", "/notifications?user_id=1&order_id=7"): unreachable,
    }
    async with orders_with(tmp_path, monkeypatch, answers) as (client, _):
        answer = await client.get("/orders/7/details")
    assert answer.status_code == 200, answer.text
    details = answer.json()
    assert (details["user"], details["products"]) == (USER, [KEYBOARD, HUB])
    assert (details["payment"], details["notifications"]) == (None, None)
    assert details["missing"] == {
        "payment": "payments answered 503: draining",
        "notifications": str(unreachable),
    }
    assert details["partial"] is True


@pytest.mark.parametrize(
    ("failing", "answer", "part", "said"),
    [
        (("products", "/products/3"), (503, {"detail": "busy"}), "product 3", "answered 503: busy"),
        (("users", "/users/1"), DeadlineExceededError("too slow"), "user", "too slow"),
    ],
)
async def test_a_required_part_that_fails_is_a_503_naming_it(
    failing: tuple[str, str],
    answer: Answer,
    part: str,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The problem's ``part`` member names the part, its detail says why."""
    async with orders_with(tmp_path, monkeypatch, {failing: answer}) as (client, _):
        refused = await client.get("/orders/7/details")
    assert refused.status_code == 503
    assert refused.headers["content-type"] == PROBLEM_JSON
    problem = refused.json()
    assert problem["part"] == part
    assert problem["detail"].startswith(
        f"the details of order 7 are incomplete: required part {part!r} failed"
    )
    assert problem["detail"].endswith(said)


async def test_the_details_of_an_unknown_order_are_a_404(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is asked of the other services about an order that does not exist."""
    async with orders_with(tmp_path, monkeypatch, {}) as (client, mesh):
        refused = await client.get("/orders/8/details")
    assert refused.status_code == 404
    assert refused.headers["content-type"] == PROBLEM_JSON
    assert refused.json()["detail"] == "no order 8"
    assert mesh.calls == []


async def test_notifications_filter_by_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /notifications?user_id=&order_id= lists only what was sent about that order."""
    notifications = load("notifications", monkeypatch, tmp_path)
    monkeypatch.setattr(notifications, "OUTBOUND", "")  # no users to ask
    async with serving(notifications.app) as client:
        for order_id in (7, 8, None):
            sent = {"user_id": 1, "order_id": order_id, "message": f"about {order_id}"}
            assert (await client.post("/notifications", json=sent)).status_code == 201
        about_7 = (await client.get("/notifications?user_id=1&order_id=7")).json()
        everything = (await client.get("/notifications?user_id=1")).json()
        to_another = (await client.get("/notifications?user_id=2&order_id=7")).json()
    assert [n["message"] for n in about_7] == ["about 7"]
    assert [n["order_id"] for n in everything] == [7, 8, None]
    assert to_another == []
