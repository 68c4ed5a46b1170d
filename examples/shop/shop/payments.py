"""payments: charging for orders and refunding them.

``PAYMENT_FAILURE_RATE`` (0 to 1, default 0) declines that share of new
charges, to show what the shop does when a payment fails.
``PAYMENT_CARD_LIMIT_CENTS`` (a whole number of cents; unset, no limit)
declines every new charge above it: a decline that can be counted on, for
a test or a demo that needs one order declined and the next one charged.
``PAYMENT_ERROR_RATE`` (0 to 1, default 0) answers that share of charges
with a 500 before doing anything: a broken version, for a canary to catch.

Charging and voiding honour an ``Idempotency-Key`` (see
``shop.idempotency``): a repeat gets the first answer, a decline included,
so retrying a declined charge with its key is declined again rather than
given another roll of the dice. Without a key, an order is still charged
at most once: a second charge for it gets the first payment.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
from typing import Literal

from fastapi import FastAPI, HTTPException, Request, Response
from pydantic import BaseModel, Field

import meshkit
from shop import idempotency
from shop.db import Database
from shop.idempotency import Answer, IdempotencyKey, once

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    id INTEGER PRIMARY KEY,
    order_id INTEGER NOT NULL UNIQUE,
    user_id INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    status TEXT NOT NULL
);
"""

db = Database("payments", SCHEMA + idempotency.SCHEMA)
log = logging.getLogger("shop.payments")
app = FastAPI(title="payments", lifespan=db.lifespan)
service = meshkit.Service(app, name="payments")


def _rate(variable: str) -> float:
    raw = os.environ.get(variable, "0")
    try:
        rate = float(raw)
    except ValueError:
        raise SystemExit(f"{variable} must be a number from 0 to 1, got {raw!r}") from None
    if not 0 <= rate <= 1:
        raise SystemExit(f"{variable} must be from 0 to 1, got {rate}")
    return rate


def _card_limit() -> int | None:
    raw = os.environ.get("PAYMENT_CARD_LIMIT_CENTS") or None
    if raw is None:
        return None
    if not raw.isdigit():
        raise SystemExit(f"PAYMENT_CARD_LIMIT_CENTS must be a whole number of cents, got {raw!r}")
    return int(raw)


FAILURE_RATE = _rate("PAYMENT_FAILURE_RATE")
ERROR_RATE = _rate("PAYMENT_ERROR_RATE")
CARD_LIMIT = _card_limit()
_chance = random.Random()


class Charge(BaseModel):
    order_id: int = Field(ge=1)
    user_id: int = Field(ge=1)
    amount_cents: int = Field(gt=0, le=100_000_000)


class Payment(BaseModel):
    id: int
    order_id: int
    user_id: int  # 0 for a void that took a charge's place
    amount_cents: int
    status: Literal["captured", "refunded", "voided"]


def _payment(row: sqlite3.Row) -> Payment:
    return Payment(**row)


@app.post(
    "/payments",
    status_code=201,
    response_model=Payment,
    responses={
        200: {"model": Payment, "description": "The order was charged (or voided) before"},
        402: {"description": "The card was declined (application/problem+json)"},
        **idempotency.RESPONSES,
    },
)
def charge(charge: Charge, request: Request, key: IdempotencyKey) -> Response:
    """Charge for an order once: charging the same order again returns the first payment.

    (Or the void that took its place: see ``void``.) A decline is a 402
    problem; with an ``Idempotency-Key``, a repeat gets the first answer.
    """
    if _chance.random() < ERROR_RATE:
        # A broken version: it fails before doing anything, so a retry may succeed.
        raise HTTPException(500, "payments failed (PAYMENT_ERROR_RATE): nothing was charged")
    return once(db, request, key, charge.model_dump(), lambda tx: _charge(tx, charge))


def _charge(tx: sqlite3.Connection, charge: Charge) -> Answer:
    row = tx.execute("SELECT * FROM payments WHERE order_id = ?", (charge.order_id,)).fetchone()
    if row is not None:
        return Answer(200, _payment(row).model_dump())
    if CARD_LIMIT is not None and charge.amount_cents > CARD_LIMIT:
        return Answer.problem(
            402, f"the card was declined: {charge.amount_cents} cents is over its limit"
        )
    if _chance.random() < FAILURE_RATE:
        return Answer.problem(402, "the card was declined")
    cursor = tx.execute(
        "INSERT INTO payments (order_id, user_id, amount_cents, status)"
        " VALUES (?, ?, ?, 'captured')",
        (charge.order_id, charge.user_id, charge.amount_cents),
    )
    row = tx.execute("SELECT * FROM payments WHERE id = ?", (cursor.lastrowid,)).fetchone()
    log.info(
        "order %d: charged %d cents (payment %d)", charge.order_id, charge.amount_cents, row["id"]
    )
    return Answer(201, _payment(row).model_dump())


@app.post("/payments/{payment_id}/refund")
def refund(payment_id: int) -> Payment:
    """Refund a payment; refunding it again changes nothing."""
    with db.transaction() as tx:
        row = tx.execute("SELECT * FROM payments WHERE id = ?", (payment_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"no payment {payment_id}")
        tx.execute("UPDATE payments SET status = 'refunded' WHERE id = ?", (payment_id,))
        row = tx.execute("SELECT * FROM payments WHERE id = ?", (payment_id,)).fetchone()
    return _payment(row)


@app.get("/payments/by-order/{order_id}")
def payment_of_order(order_id: int) -> Payment:
    rows = db.read("SELECT * FROM payments WHERE order_id = ?", (order_id,))
    if not rows:
        raise HTTPException(404, f"no payment for order {order_id}")
    return _payment(rows[0])


@app.post(
    "/payments/by-order/{order_id}/void", response_model=Payment, responses=idempotency.RESPONSES
)
def void(order_id: int, request: Request, key: IdempotencyKey) -> Response:
    """Make sure an order is not charged: a capture is refunded, a late charge refused.

    The compensation of a charge, so it is done (200, the order's payment)
    whatever there is to undo: the charge may have been captured, may never
    have arrived, or may still be on its way. A captured payment is
    refunded; if there is none yet, a 'voided' row holding no money takes
    the order's place, so a charge arriving late finds it and captures
    nothing; a payment refunded or voided already stays as it is. With an
    ``Idempotency-Key``, a repeat gets the first answer.
    """
    return once(db, request, key, None, lambda tx: _void(tx, order_id))


def _void(tx: sqlite3.Connection, order_id: int) -> Answer:
    row = tx.execute("SELECT * FROM payments WHERE order_id = ?", (order_id,)).fetchone()
    if row is None:
        tx.execute(
            "INSERT INTO payments (order_id, user_id, amount_cents, status)"
            " VALUES (?, 0, 0, 'voided')",
            (order_id,),
        )
    elif row["status"] == "captured":
        tx.execute("UPDATE payments SET status = 'refunded' WHERE id = ?", (row["id"],))
    row = tx.execute("SELECT * FROM payments WHERE order_id = ?", (order_id,)).fetchone()
    return Answer(200, _payment(row).model_dump())


@app.get("/payments/{payment_id}")
def get_payment(payment_id: int) -> Payment:
    rows = db.read("SELECT * FROM payments WHERE id = ?", (payment_id,))
    if not rows:
        raise HTTPException(404, f"no payment {payment_id}")
    return _payment(rows[0])
