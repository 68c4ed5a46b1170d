"""An order's details, composed from five services' answers at once (API composition).

``GET /orders/{id}/details`` reads the order from orders' own database,
then asks, in parallel and within one budget (``meshkit.compose``):

- users for the order's user, and products for each of its products.
  These are required: details without them say nothing useful, so if one
  fails (an error, an answer other than 200, no answer in time) the answer
  is a 503 problem whose ``part`` member names it;
- payments for its payment, and notifications for what its user was told
  about it. These are optional: one that fails or is late is ``null`` in
  the answer, named with its reason in ``missing``, and ``partial`` is true.
  An order that was never charged has no payment: payments says so with a
  404, and ``payment`` is ``null`` without being missing.

The routes are built by ``routes(db, mesh)`` from orders' database and its
``mesh`` dependency: this module imports nothing of orders (which includes
the routes), and a test's ``app.dependency_overrides[mesh]`` reaches these
calls too.
"""

# No ``from __future__ import annotations``: FastAPI reads the handler's
# annotations, and ``Mesh`` below is local to ``routes``, where a string
# annotation could not be resolved.

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel

import meshkit
from meshkit.errors import CompositionError
from meshkit.http import Problem, Response
from shop.db import Database

# The whole composition's budget, or less when the request's deadline is
# sooner. The services answer in milliseconds on loopback: this is the time
# a user waits at most when one of them hangs.
_BUDGET = 2.0
# An optional part is not worth waiting for longer than this.
_OPTIONAL_TIMEOUT = 0.5


class OrderLine(BaseModel):
    product_id: int
    quantity: int
    price_cents: int


class OrderSummary(BaseModel):
    """The order as orders' database has it."""

    id: int
    user_id: int
    status: str
    total_cents: int
    created_at: str
    items: list[OrderLine]


class Details(BaseModel):
    """The order and what other services know of it; ``missing`` says what is not there, and why."""

    order: OrderSummary
    user: dict[str, Any]
    products: list[dict[str, Any]]
    payment: dict[str, Any] | None
    notifications: list[dict[str, Any]] | None
    missing: dict[str, str]
    partial: bool


def routes(db: Database, mesh: Callable[[], meshkit.ServiceClient]) -> APIRouter:
    """``GET /orders/{order_id}/details``, reading ``db`` and calling through ``mesh``."""
    router = APIRouter()
    Mesh = Annotated[meshkit.ServiceClient, Depends(mesh)]  # noqa: N806 (a type alias)

    @router.get(
        "/orders/{order_id}/details",
        responses={
            404: {"description": "No such order (application/problem+json)"},
            503: {
                "description": "A required part failed; its ``part`` member names it"
                " (application/problem+json)"
            },
        },
    )
    async def order_details(order_id: int, client: Mesh) -> Details:
        order = await asyncio.to_thread(_read_order, db, order_id)
        if order is None:
            raise HTTPException(404, f"no order {order_id}")
        try:
            composed = await meshkit.compose(*_parts(client, order), budget=_BUDGET)
        except CompositionError as error:
            detail = f"the details of order {order_id} are incomplete: {error}"
            raise HTTPException(503, {"detail": detail, "part": error.part}) from error
        return _details(order, composed)

    return router


def _read_order(db: Database, order_id: int) -> OrderSummary | None:
    rows = db.read(
        "SELECT id, user_id, status, total_cents, created_at FROM orders WHERE id = ?",
        (order_id,),
    )
    if not rows:
        return None
    items = db.read(
        "SELECT product_id, quantity, price_cents FROM order_items WHERE order_id = ?",
        (order_id,),
    )
    return OrderSummary(**rows[0], items=[OrderLine(**item) for item in items])


def _product_ids(order: OrderSummary) -> list[int]:
    return sorted({item.product_id for item in order.items})


def _parts(client: meshkit.ServiceClient, order: OrderSummary) -> list[meshkit.Part[Response]]:
    def get(service: str, path: str) -> Callable[[], Awaitable[Response]]:
        return lambda: client.get(service, path)

    notifications = f"/notifications?user_id={order.user_id}&order_id={order.id}"
    return [
        meshkit.Part("user", get("users", f"/users/{order.user_id}"), check=_ok("users")),
        *(
            meshkit.Part(
                f"product {pid}", get("products", f"/products/{pid}"), check=_ok("products")
            )
            for pid in _product_ids(order)
        ),
        meshkit.Part(
            "payment",
            get("payments", f"/payments/by-order/{order.id}"),
            timeout=_OPTIONAL_TIMEOUT,
            required=False,
            check=_ok("payments", also=404),  # 404: never charged
        ),
        meshkit.Part(
            "notifications",
            get("notifications", notifications),
            timeout=_OPTIONAL_TIMEOUT,
            required=False,
            check=_ok("notifications"),
        ),
    ]


def _ok(service: str, *, also: int | None = None) -> Callable[[Response], str | None]:
    """A check that takes a 200 (or ``also``) and says what any other answer said."""

    def check(response: Response) -> str | None:
        status = response.status_code
        if status in (200, also):
            return None
        return f"{service} answered {status}: {Problem.read(status, response.body).summary()}"

    return check


def _details(order: OrderSummary, composed: meshkit.Composition) -> Details:
    parts = composed.parts
    payment = parts.get("payment")
    notifications = parts.get("notifications")
    return Details(
        order=order,
        user=parts["user"].json(),
        products=[parts[f"product {pid}"].json() for pid in _product_ids(order)],
        payment=payment.json() if payment is not None and payment.status_code == 200 else None,
        notifications=None if notifications is None else notifications.json(),
        missing=dict(composed.missing),
        partial=composed.partial,
    )
