"""inventory: stock on hand, reservations for orders (all or nothing), and units sold.

Units sold are counted from the ``order.created`` events orders publishes,
in the group ``inventory``: every replica joins it, and each event is
counted by one of them, once (the inbox drops a repeat by its message id).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import meshkit
from meshkit.bus import Message, SqliteInbox, SqliteOutbox
from shop.db import Database

app = FastAPI(title="inventory")
service = meshkit.Service(app, name="inventory", version="1.0.0")

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
"""


def seed(db: sqlite3.Connection) -> None:
    db.executemany("INSERT OR IGNORE INTO stock VALUES (?, ?)", [(1, 25), (2, 10), (3, 40)])


db = Database("inventory", SCHEMA + SqliteOutbox.SCHEMA, seed)  # the outbox's for its inbox
inbox = SqliteInbox("inventory")


class Stock(BaseModel):
    quantity: int = Field(ge=0, le=10_000_000)


class Item(BaseModel):
    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=10_000)


class Reservation(BaseModel):
    order_id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=100)


@app.put("/stock/{product_id}")
def set_stock(product_id: int, stock: Stock) -> dict[str, int]:
    with db.transaction() as tx:
        tx.execute("INSERT OR REPLACE INTO stock VALUES (?, ?)", (product_id, stock.quantity))
    return {"product_id": product_id, "quantity": stock.quantity}


@app.get("/stock/{product_id}")
def get_stock(product_id: int) -> dict[str, int]:
    rows = db.read(
        "SELECT stock.quantity, coalesce(sold.quantity, 0) AS sold FROM stock"
        " LEFT JOIN sold USING (product_id) WHERE product_id = ?",
        (product_id,),
    )
    if not rows:
        raise HTTPException(404, f"no stock record for product {product_id}")
    return {"product_id": product_id, "quantity": rows[0]["quantity"], "sold": rows[0]["sold"]}


@app.post("/reservations", status_code=201, response_model=None)
def reserve(reservation: Reservation) -> dict[str, object] | JSONResponse:
    """Reserve every item or none. Reserving an order again returns its reservation."""
    wanted = Counter[int]()
    for item in reservation.items:
        wanted[item.product_id] += item.quantity
    with db.transaction() as tx:
        existing = _reserved(tx, reservation.order_id)
        if existing:
            return JSONResponse({"order_id": reservation.order_id, "items": existing}, 200)
        short = []
        for product_id, quantity in sorted(wanted.items()):
            row = tx.execute(
                "SELECT quantity FROM stock WHERE product_id = ?", (product_id,)
            ).fetchone()
            available = row["quantity"] if row else 0
            if available < quantity:
                short.append(
                    {"product_id": product_id, "requested": quantity, "available": available}
                )
        if short:
            return JSONResponse({"error": "insufficient stock", "short": short}, 409)
        for product_id, quantity in wanted.items():
            tx.execute(
                "UPDATE stock SET quantity = quantity - ? WHERE product_id = ?",
                (quantity, product_id),
            )
            tx.execute(
                "INSERT INTO reservations VALUES (?, ?, ?)",
                (reservation.order_id, product_id, quantity),
            )
        items = _reserved(tx, reservation.order_id)
    return {"order_id": reservation.order_id, "items": items}


@app.delete("/reservations/{order_id}", status_code=204)
def release(order_id: int) -> Response:
    """Put a reservation's items back in stock."""
    with db.transaction() as tx:
        items = _reserved(tx, order_id)
        if not items:
            raise HTTPException(404, f"no reservation for order {order_id}")
        for item in items:
            tx.execute(
                "UPDATE stock SET quantity = quantity + ? WHERE product_id = ?",
                (item["quantity"], item["product_id"]),
            )
        tx.execute("DELETE FROM reservations WHERE order_id = ?", (order_id,))
    return Response(status_code=204)


def _reserved(tx: sqlite3.Connection, order_id: int) -> list[dict[str, int]]:
    rows = tx.execute(
        "SELECT product_id, quantity FROM reservations WHERE order_id = ? ORDER BY product_id",
        (order_id,),
    ).fetchall()
    return [dict(row) for row in rows]


class Sale(BaseModel):
    """What inventory reads of an ``order.created`` event."""

    order_id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=100)


@service.subscribe("order.created", group="inventory")
async def count_sale(message: Message) -> None:
    """Add an order's items to the units sold; a malformed event raises (and is dead-lettered)."""
    sale = Sale.model_validate_json(message.payload)
    await asyncio.to_thread(_count, message.id, sale)


def _count(message_id: str, sale: Sale) -> None:
    with db.transaction() as tx:
        if not inbox.record(tx, message_id):
            return  # counted already
        for item in sale.items:
            tx.execute(
                "INSERT INTO sold VALUES (?, ?)"
                " ON CONFLICT (product_id) DO UPDATE SET quantity = quantity + excluded.quantity",
                (item.product_id, item.quantity),
            )
