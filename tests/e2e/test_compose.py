"""An order's details composed from five services under `meshkit up`, one of them frozen.

The tests share one running shop and run in this order.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from tests.e2e.conftest import Shop, http, wait_until

DEMO_KEY = {"x-api-key": "shop-demo"}
BUDGET = 2.0  # the details' budget (shop/details.py)


def payments_pid(shop: Shop) -> int:
    status, body = http(
        "GET",
        shop.registry("/services/payments"),
        headers={"authorization": f"Bearer {shop.token}"},
    )
    assert status == 200, body
    (instance,) = body["instances"]  # type: ignore[index]
    return int(instance["metadata"]["pid"])


def details(shop: Shop, order_id: int) -> tuple[int, dict[str, Any], float]:
    """GET /api/orders/{id}/details through the gateway: status, body, seconds it took."""
    start = time.monotonic()  # noqa: TID251 (timing a real process)
    status, body = http("GET", shop.gateway(f"/api/orders/{order_id}/details"), headers=DEMO_KEY)
    took = time.monotonic() - start  # noqa: TID251
    assert isinstance(body, dict), body
    return status, body, took


def whole(shop: Shop, order_id: int) -> bool:
    status, body, _ = details(shop, order_id)
    assert status == 200, body
    return not body["partial"] and body["notifications"] != []


ORDER: dict[str, Any] = {"user_id": 1, "items": [{"product_id": 1, "quantity": 1}]}


def test_the_details_of_an_order_come_from_every_service(shop: Shop) -> None:
    """Once confirmed and notified, the details hold the user, products, payment and notes."""
    status, order = http("POST", shop.orders(), ORDER)
    assert status in {201, 202}, order
    order_id = int(order["id"])  # type: ignore[index]
    wait_until(lambda: whole(shop, order_id), 20, "the details whole, the confirmation sent")
    _, body, _ = details(shop, order_id)
    assert body["order"]["id"] == order_id
    assert body["user"]["id"] == 1
    assert [product["id"] for product in body["products"]] == [1]
    assert body["payment"]["order_id"] == order_id
    assert [note["order_id"] for note in body["notifications"]] == [order_id]
    assert body["missing"] == {}


def test_a_frozen_service_leaves_its_part_out_within_the_budget(shop: Shop) -> None:
    """payments stopped by SIGSTOP: the answer comes within the budget, partial, naming it."""
    status, order = http("POST", shop.orders(), ORDER)
    assert status in {201, 202}, order
    order_id = int(order["id"])  # type: ignore[index]
    wait_until(lambda: whole(shop, order_id), 20, "the details whole before the freeze")
    payments = payments_pid(shop)
    os.kill(payments, signal.SIGSTOP)
    try:
        status, body, took = details(shop, order_id)
    finally:
        os.kill(payments, signal.SIGCONT)
    assert status == 200, body
    assert took < BUDGET, f"answered in {took:.2f}s"
    assert body["partial"] is True
    assert body["missing"] == {"payment": "no answer within 0.5s"}
    assert body["payment"] is None
    assert body["user"]["id"] == 1
    assert [note["order_id"] for note in body["notifications"]] == [order_id]
    # Resumed, payments answers again (within its lease, it never left discovery).
    wait_until(lambda: whole(shop, order_id), 10, "the details whole again after SIGCONT")
