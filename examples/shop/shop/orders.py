"""orders: places orders by calling users, products, inventory and payments.

Placing an order checks the user and the products, records the order as
pending, reserves the stock, charges the payment, and confirms. Confirming
records the event ``order.created`` in the same transaction, in the
service's outbox: the relay publishes it once the order is confirmed for
good, and never for an order that is not (inventory counts the sale,
notifications tells the user). If the stock is short the order is rejected
(409); if the payment is declined the reservation is released and the
order ends declined (402); if a service cannot be reached, what was done is
undone as far as possible and the order ends failed (503). Every error is
a problem (RFC 9457, ``application/problem+json``, from meshkit's
handlers): a 402 or 409 names the order it recorded in its ``order``
member, and a 409 lists the products short of stock in ``short``.

A charge whose answer is lost may or may not have been captured, so it is
voided: refunded if it was, refused if it comes late; if even the void
fails, the order ends 'uncertain', for a person to settle. Undoing runs
whatever stopped the order, a cancelled request included, but not a crash
of this service in the middle: that order stays 'pending', with whatever it
had reserved or charged.

Reservations and payments are sent as idempotent: both services answer a
repeated request for the same order with what they did the first time, so
a retry after a lost answer cannot reserve or charge twice.

The handlers reach other services through ``service.client``, given by the
``mesh`` dependency, so a test can put a fake in its place with
``app.dependency_overrides[mesh]``. The database is blocking: the async
handler runs its queries in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field

import meshkit
from meshkit.bus import SqliteOutbox
from meshkit.errors import MeshkitError
from meshkit.http import Problem, Response
from meshkit.service import without_deadline
from shop import details
from shop.db import Database

log = logging.getLogger("shop.orders")

# Charging has a deadline of its own, shorter than a call's default (10 s):
# payments answers in milliseconds on loopback, and an order whose charge is
# lost should still have time to void it and answer.
_CHARGE_TIMEOUT = 2.0
_UNDO_TIMEOUT = 5.0  # someone waits for the order's answer

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    payment_id INTEGER,
    reason TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS order_items (
    order_id INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    price_cents INTEGER NOT NULL
);
"""

db = Database("orders", SCHEMA + SqliteOutbox.SCHEMA)
app = FastAPI(title="orders", lifespan=db.lifespan)
service = meshkit.Service(app, name="orders", version="1.0.0")

# The relay starts once the app is live: its lifespan has made the tables.
service.add_outbox(SqliteOutbox(db.path))


def mesh() -> meshkit.ServiceClient:
    """The client that calls other services by name (a dependency, so tests can replace it)."""
    return service.client


Mesh = Annotated[meshkit.ServiceClient, Depends(mesh)]
app.include_router(details.routes(db, mesh))


class Item(BaseModel):
    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=1000)


class NewOrder(BaseModel):
    user_id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=50)


class Placed(BaseModel):
    """A confirmed order (201)."""

    id: int
    status: Literal["confirmed"]
    total_cents: int


class Short(BaseModel):
    product_id: int
    requested: int
    available: int


class Refused(BaseModel):
    """The order that placing ended in, when it did not end confirmed."""

    id: int
    status: Literal["declined", "rejected"]


class Declined(BaseModel):
    """A 402: a problem (RFC 9457) whose ``order`` is the order, recorded as declined."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    order: Refused


class Rejected(Declined):
    """A 409: the order, recorded as rejected, and what is short of stock."""

    short: list[Short]


class Refusal(HTTPException):
    """A 402 or 409 for an order recorded as declined or rejected: nothing is left to undo.

    Its detail is a mapping, which meshkit's handlers answer as a problem
    whose other keys (``order``, ``short``) are extension members.
    """

    def __init__(self, status: int, order: Refused, reason: str, **members: object) -> None:
        detail = f"order {order.id} {order.status}: {reason}"
        super().__init__(status, {"detail": detail, "order": order.model_dump(), **members})


class OrderLine(BaseModel):
    product_id: int
    quantity: int
    price_cents: int


class Order(BaseModel):
    id: int
    user_id: int
    status: Literal["pending", "confirmed", "declined", "rejected", "failed", "uncertain"]
    total_cents: int
    payment_id: int | None
    reason: str | None
    created_at: str
    items: list[OrderLine]


def _unavailable(what: str, response: Response) -> HTTPException:
    return HTTPException(503, f"{what} answered {response.status_code}")


@app.post(
    "/orders",
    status_code=201,
    response_model=Placed,
    responses={
        402: {"model": Declined, "description": "Payment declined (application/problem+json)"},
        409: {"model": Rejected, "description": "Not enough stock (application/problem+json)"},
    },
)
async def place_order(order: NewOrder, client: Mesh) -> Placed:
    try:
        user = await client.get("users", f"/users/{order.user_id}")
        if user.status_code == 404:
            raise HTTPException(422, f"user_id: no user {order.user_id}")
        if not user.is_success:
            raise _unavailable("users", user)
        product_ids = sorted({item.product_id for item in order.items})
        answers = await asyncio.gather(
            *(client.get("products", f"/products/{pid}") for pid in product_ids)
        )
    except MeshkitError as error:
        raise HTTPException(503, f"cannot check the order: {error}") from error
    prices = {}
    for product_id, answer in zip(product_ids, answers, strict=True):
        if answer.status_code == 404:
            raise HTTPException(422, f"items.product_id: no product {product_id}")
        if not answer.is_success:
            raise _unavailable("products", answer)
        prices[product_id] = int(answer.json()["price_cents"])
    total = sum(prices[item.product_id] * item.quantity for item in order.items)
    order_id = await asyncio.to_thread(_record, order, prices, total)
    return await _fulfil(client, order_id, order, total)


async def _fulfil(
    client: meshkit.ServiceClient, order_id: int, order: NewOrder, total: int
) -> Placed:
    items = [item.model_dump() for item in order.items]
    reserved = charging = False
    try:
        reservation = await client.post(
            "inventory",
            "/reservations",
            json={"order_id": order_id, "items": items},
            idempotent=True,
        )
        if reservation.status_code == 409:
            shortage = Problem.read(409, reservation.body)
            await asyncio.to_thread(_finish, order_id, "rejected", reason=shortage.detail)
            short = shortage.extensions.get("short", [])
            rejected = Refused(id=order_id, status="rejected")
            raise Refusal(409, rejected, shortage.detail, short=short)
        if not reservation.is_success:
            raise _unavailable("inventory", reservation)
        reserved = charging = True
        payment = await client.post(
            "payments",
            "/payments",
            json={"order_id": order_id, "user_id": order.user_id, "amount_cents": total},
            idempotent=True,
            timeout=_CHARGE_TIMEOUT,
        )
        if payment.status_code == 402:
            refusal = Problem.read(402, payment.body)
            await _release(client, order_id)
            await asyncio.to_thread(_finish, order_id, "declined", reason=refusal.detail)
            raise Refusal(402, Refused(id=order_id, status="declined"), refusal.detail)
        if not payment.is_success:
            raise _unavailable("payments", payment)
        if payment.json()["status"] != "captured":  # voided before it arrived
            raise HTTPException(503, f"the payment of order {order_id} was voided")
    except Refusal:
        raise  # what it reserved is released already
    except BaseException as error:
        # Anything else, a cancelled request included, undoes what was done;
        # shielded, so a cancellation cannot stop the undoing half-way.
        undo = _undo(client, order_id, error, charging=charging, reserved=reserved)
        status = await asyncio.shield(undo)
        if isinstance(error, MeshkitError | HTTPException):
            reason = error.detail if isinstance(error, HTTPException) else error
            raise HTTPException(503, f"order {order_id} {status}: {reason}") from error
        raise
    payment_id = int(payment.json()["id"])
    await asyncio.to_thread(_confirm, order_id, order, total, payment_id=payment_id)
    return Placed(id=order_id, status="confirmed", total_cents=total)


@app.get("/orders/{order_id}")
def get_order(order_id: int) -> Order:
    rows = db.read("SELECT * FROM orders WHERE id = ?", (order_id,))
    if not rows:
        raise HTTPException(404, f"no order {order_id}")
    items = db.read(
        "SELECT product_id, quantity, price_cents FROM order_items WHERE order_id = ?", (order_id,)
    )
    return Order(**rows[0], items=[OrderLine(**item) for item in items])


def _record(order: NewOrder, prices: dict[int, int], total: int) -> int:
    with db.transaction() as tx:
        cursor = tx.execute(
            "INSERT INTO orders (user_id, status, total_cents) VALUES (?, 'pending', ?)",
            (order.user_id, total),
        )
        order_id = int(cursor.lastrowid or 0)
        tx.executemany(
            "INSERT INTO order_items VALUES (?, ?, ?, ?)",
            [(order_id, i.product_id, i.quantity, prices[i.product_id]) for i in order.items],
        )
    return order_id


def _finish(
    order_id: int, status: str, *, reason: str | None = None, payment_id: int | None = None
) -> None:
    with db.transaction() as tx:
        tx.execute(
            "UPDATE orders SET status = ?, reason = ?, payment_id = ? WHERE id = ?",
            (status, reason, payment_id, order_id),
        )


def _confirm(order_id: int, order: NewOrder, total: int, *, payment_id: int) -> None:
    """Confirm the order and record ``order.created`` in one transaction: both or neither."""
    with db.transaction() as tx:
        tx.execute(
            "UPDATE orders SET status = 'confirmed', payment_id = ? WHERE id = ?",
            (payment_id, order_id),
        )
        event = {
            "order_id": order_id,
            "user_id": order.user_id,
            "total_cents": total,
            "items": [item.model_dump() for item in order.items],
        }
        SqliteOutbox.record(tx, "order.created", event, key=str(order.user_id))
    service.notify_outbox()


async def _undo(
    client: meshkit.ServiceClient,
    order_id: int,
    error: BaseException,
    *,
    charging: bool,
    reserved: bool,
) -> str:
    """Void the charge and release the stock; record the order's end, and return it.

    The order that called us may have had its deadline spent by the step that
    failed: undoing runs on a deadline of its own.
    """
    status, reason = "failed", str(error) or type(error).__name__
    with without_deadline():
        if charging and not await _void(client, order_id, error):
            # Left for a person to settle.
            status, reason = "uncertain", f"{reason}; the charge could not be voided"
        if reserved:
            await _release(client, order_id)
    await asyncio.to_thread(_finish, order_id, status, reason=reason)
    return status


async def _void(client: meshkit.ServiceClient, order_id: int, error: BaseException) -> bool:
    log.warning("the charge for order %d is uncertain (%r); voiding it", order_id, error)
    try:
        voided = await client.post(
            "payments",
            f"/payments/by-order/{order_id}/void",
            idempotent=True,
            timeout=_UNDO_TIMEOUT,
        )
    except MeshkitError as failure:
        log.error("could not void the payment of order %d: %s", order_id, failure)
        return False
    if not voided.is_success:
        log.error("could not void the payment of order %d: %d", order_id, voided.status_code)
        return False
    log.warning("order %d: payment %s", order_id, voided.json()["status"])
    return True


async def _release(client: meshkit.ServiceClient, order_id: int) -> None:
    try:
        await client.delete("inventory", f"/reservations/{order_id}", timeout=_UNDO_TIMEOUT)
    except MeshkitError as error:
        log.warning("could not release the reservation of order %d: %s", order_id, error)
