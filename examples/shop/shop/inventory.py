"""inventory: stock on hand, reservations for orders (all or nothing), and units sold.

Units sold are counted from the ``order.created`` events orders publishes,
in the group ``inventory``: every replica joins it, and each event is
counted by one of them. The bus delivers at least once, and an event can be
published again under a new message id (a replay, or a fix-up by hand), so
a sale is counted once per order id, the business key, in the same
transaction as the count; a message id inbox would let the second copy in.

Changing stock (``PUT /stock/{id}``) is for the shop's staff: the gateway
lets only the admin API key reach it (``keys`` in meshkit.toml).

Reserving and releasing honour an ``Idempotency-Key`` (see
``shop.idempotency``). Releasing is the compensation of reserving, so it
cannot fail for want of something to undo: releasing an order that holds
no reservation is done (204), and leaves the order marked released, so a
reservation for it that arrives late (a retry overtaken by the release)
reserves nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import Counter

from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

import meshkit
from meshkit.bus import Message
from shop import idempotency
from shop.db import Database
from shop.idempotency import Answer, IdempotencyKey, once

SCHEMA = """
CREATE TABLE IF NOT EXISTS stock (
    product_id INTEGER PRIMARY KEY,
    quantity INTEGER NOT NULL CHECK (quantity >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
CREATE TABLE IF NOT EXISTS sold (
    product_id INTEGER PRIMARY KEY,
    quantity INTEGER NOT NULL
);
-- The orders whose sale is in 'sold' already.
CREATE TABLE IF NOT EXISTS counted_orders (
    order_id INTEGER PRIMARY KEY
);
-- The orders released: a reservation for one of them is refused.
CREATE TABLE IF NOT EXISTS released_orders (
    order_id INTEGER PRIMARY KEY
);
"""


def seed(db: sqlite3.Connection) -> None:
    db.executemany("INSERT OR IGNORE INTO stock VALUES (?, ?)", [(1, 25), (2, 10), (3, 40)])


db = Database("inventory", SCHEMA + idempotency.SCHEMA, seed)
log = logging.getLogger("shop.inventory")
app = FastAPI(title="inventory", lifespan=db.lifespan)
service = meshkit.Service(app, name="inventory")


class Stock(BaseModel):
    quantity: int = Field(ge=0, le=10_000_000)


class StockLevel(BaseModel):
    product_id: int
    quantity: int


class StockRecord(StockLevel):
    sold: int


class Item(BaseModel):
    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=10_000)


class Reservation(BaseModel):
    order_id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=100)


class Short(BaseModel):
    product_id: int
    requested: int
    available: int


class Shortage(BaseModel):
    """The 409 of a reservation, a problem (RFC 9457) naming what is short.

    Answered as ``application/problem+json``: ``short`` is an extension
    member, for orders to tell its caller. A reservation for an order
    released already is a 409 too, without ``short``.
    """

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    short: list[Short] = []


@app.put("/stock/{product_id}")
def set_stock(product_id: int, stock: Stock) -> StockLevel:
    with db.transaction() as tx:
        tx.execute("INSERT OR REPLACE INTO stock VALUES (?, ?)", (product_id, stock.quantity))
    return StockLevel(product_id=product_id, quantity=stock.quantity)


@app.get("/stock/{product_id}")
def get_stock(product_id: int) -> StockRecord:
    rows = db.read(
        "SELECT stock.quantity, coalesce(sold.quantity, 0) AS sold FROM stock"
        " LEFT JOIN sold USING (product_id) WHERE product_id = ?",
        (product_id,),
    )
    if not rows:
        raise HTTPException(404, f"no stock record for product {product_id}")
    return StockRecord(product_id=product_id, quantity=rows[0]["quantity"], sold=rows[0]["sold"])


@app.post(
    "/reservations",
    status_code=201,
    response_model=Reservation,
    responses={
        200: {"model": Reservation, "description": "The order was reserved before"},
        409: {
            "model": Shortage,
            "description": "Not enough stock, or the order was released (application/problem+json)",
        },
        **idempotency.RESPONSES,
    },
)
def reserve(reservation: Reservation, request: Request, key: IdempotencyKey) -> Response:
    """Reserve every item or none: 201. Reserving an order again returns its reservation: 200.

    Short of stock, nothing is reserved: 409, a problem whose ``short`` lists
    each product short with the quantity requested and available. An order
    released already is refused: 409, "order N was released". With an
    ``Idempotency-Key``, a repeat gets the first answer, refusals included.
    """
    payload = reservation.model_dump()
    return once(db, request, key, payload, lambda tx: _reserve(tx, reservation))


def _reserve(tx: sqlite3.Connection, reservation: Reservation) -> Answer:
    order_id = reservation.order_id
    if _released(tx, order_id):
        return Answer.problem(409, f"order {order_id} was released")
    existing = _reserved(tx, order_id)
    if existing:
        return Answer(200, existing.model_dump())
    wanted = Counter[int]()
    for item in reservation.items:
        wanted[item.product_id] += item.quantity
    short = [
        Short(product_id=product_id, requested=quantity, available=available)
        for product_id, quantity in sorted(wanted.items())
        if (available := _available(tx, product_id)) < quantity
    ]
    if short:
        detail = "not enough stock of " + ", ".join(
            f"product {s.product_id} ({s.requested} requested, {s.available} available)"
            for s in short
        )
        return Answer.problem(409, detail, short=[s.model_dump() for s in short])
    for product_id, quantity in wanted.items():
        tx.execute(
            "UPDATE stock SET quantity = quantity - ? WHERE product_id = ?",
            (quantity, product_id),
        )
        tx.execute("INSERT INTO reservations VALUES (?, ?, ?)", (order_id, product_id, quantity))
    items = [Item(product_id=p, quantity=q) for p, q in sorted(wanted.items())]
    log.info(
        "order %d: reserved %s",
        order_id,
        ", ".join(f"{q} of product {p}" for p, q in wanted.items()),
    )
    return Answer(201, Reservation(order_id=order_id, items=items).model_dump())


@app.delete(
    "/reservations/{order_id}",
    status_code=204,
    responses=idempotency.RESPONSES,
)
def release(order_id: int, request: Request, key: IdempotencyKey) -> Response:
    """Put a reservation's items back in stock, and refuse the order's reservations from now on.

    Done (204) whether or not the order held a reservation: there is then
    nothing to undo. With an ``Idempotency-Key``, a repeat gets the first answer.
    """
    return once(db, request, key, None, lambda tx: _release(tx, order_id))


def _release(tx: sqlite3.Connection, order_id: int) -> Answer:
    reservation = _reserved(tx, order_id)
    if reservation is not None:
        for item in reservation.items:
            tx.execute(
                "UPDATE stock SET quantity = quantity + ? WHERE product_id = ?",
                (item.quantity, item.product_id),
            )
        tx.execute("DELETE FROM reservations WHERE order_id = ?", (order_id,))
    tx.execute("INSERT INTO released_orders VALUES (?) ON CONFLICT DO NOTHING", (order_id,))
    return Answer(204)


def _released(tx: sqlite3.Connection, order_id: int) -> bool:
    row = tx.execute("SELECT 1 FROM released_orders WHERE order_id = ?", (order_id,)).fetchone()
    return row is not None


def _available(tx: sqlite3.Connection, product_id: int) -> int:
    row = tx.execute("SELECT quantity FROM stock WHERE product_id = ?", (product_id,)).fetchone()
    return int(row["quantity"]) if row else 0


def _reserved(tx: sqlite3.Connection, order_id: int) -> Reservation | None:
    rows = tx.execute(
        "SELECT product_id, quantity FROM reservations WHERE order_id = ? ORDER BY product_id",
        (order_id,),
    ).fetchall()
    if not rows:
        return None
    return Reservation(order_id=order_id, items=[Item(**row) for row in rows])


class Sale(BaseModel):
    """What inventory reads of an ``order.created`` event."""

    order_id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=100)


@service.subscribe("order.created", group="inventory")
async def count_sale(message: Message) -> None:
    """Add an order's items to the units sold; a malformed event raises (and is dead-lettered)."""
    sale = Sale.model_validate_json(message.payload)
    if await asyncio.to_thread(count, sale):
        log.info("order %d counted as sold", sale.order_id)


def count(sale: Sale) -> bool:
    """Add ``sale`` to the units sold unless its order was counted: whether it was added."""
    with db.transaction() as tx:
        added = tx.execute(
            "INSERT INTO counted_orders VALUES (?) ON CONFLICT DO NOTHING", (sale.order_id,)
        )
        if added.rowcount == 0:
            return False
        for item in sale.items:
            tx.execute(
                "INSERT INTO sold VALUES (?, ?)"
                " ON CONFLICT (product_id) DO UPDATE SET quantity = quantity + excluded.quantity",
                (item.product_id, item.quantity),
            )
    return True
