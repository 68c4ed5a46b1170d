"""orders: places orders as sagas: reserve the stock, charge the payment, confirm.

Placing an order checks the user and the products, then starts the saga
``place-order``: the order's row (status ``pending``) and the saga's run
commit together, in orders' own database, and the saga goes on from there
whatever happens to the request:

1. ``reserve``: inventory reserves the items (a 409, stock too short, is
   final); undone by releasing the reservation;
2. ``charge``: payments charges the total (a 402, declined, is final);
   undone by voiding the payment (a refund if it was captured; if it never
   arrived, a void that makes a late charge capture nothing);
3. ``confirm``: a local step, in the transaction that logs it: the order
   becomes ``confirmed`` and the event ``order.created`` goes into the
   outbox (inventory counts the sale, notifications tells the user).

Each call carries the step's idempotency key, so a step retried after a
lost answer (a timeout, a 503, this service killed mid-step) gets the
first answer and reserves or charges nothing twice; an unknown outcome is
retried until known. A final refusal undoes what was done, latest first,
and the order ends ``rejected`` (409) or ``declined`` (402); a step whose
outcome stays unknown through its retries is undone too, and the order
ends ``failed``. The saga's log is written before each step, so a crash of
this service at any point resumes where it stopped when it starts again;
with two replicas, the other takes the run over once its lease lapses.

``POST /orders`` answers 201 when the saga completes within the request's
deadline, 409 or 402 (problems naming the order) when it was undone for a
business reason, and 202 with ``Location`` when it is still going: the
client polls ``GET /orders/{id}``, which shows the order and its saga's
steps. A client's ``Idempotency-Key`` places one order per key.

The saga's steps reach other services through ``mesh()``, and the
handlers through the ``mesh`` dependency, so a test can put a fake in
their place. The database is blocking: queries run in a thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import sqlite3
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

import meshkit
from meshkit.bus import SqliteOutbox
from meshkit.errors import MeshkitError
from meshkit.saga import Run, Saga, SqliteSagaStore, StepContext, StepFailed, outcome
from meshkit.service import current_deadline
from shop import details
from shop.db import Database
from shop.idempotency import IdempotencyKey

# A step's call, and each attempt of the step: payments and inventory answer
# in milliseconds on loopback, so 2 s without an answer is an outage to
# retry, not a wait. Four attempts span a few seconds of outage (a restart);
# past that the order is undone rather than left waiting.
_CALL_TIMEOUT = 2.0
_ATTEMPTS = 4
# The longest POST /orders waits for its saga before answering 202.
_ANSWER_WITHIN = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    payment_id INTEGER,
    reason TEXT,
    saga_id TEXT,
    client_key TEXT,
    client_fingerprint TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS order_items (
    order_id INTEGER NOT NULL,
    product_id INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    price_cents INTEGER NOT NULL
);
"""

# Columns added since the shop's first version, for a database kept from then.
_ADDED = {"saga_id": "TEXT", "client_key": "TEXT", "client_fingerprint": "TEXT"}


def migrate(tx: sqlite3.Connection) -> None:
    """Bring a database made by an earlier shop up to this schema."""
    have = {row["name"] for row in tx.execute("PRAGMA table_info(orders)")}
    for column, kind in _ADDED.items():
        if column not in have:
            tx.execute(f"ALTER TABLE orders ADD COLUMN {column} {kind}")
    tx.execute("CREATE UNIQUE INDEX IF NOT EXISTS orders_by_client_key ON orders (client_key)")


db = Database("orders", SCHEMA + SqliteOutbox.SCHEMA + SqliteSagaStore.SCHEMA, migrate)
log = logging.getLogger("shop.orders")  # its records carry the trace id (meshkit logs --trace)
app = FastAPI(title="orders", lifespan=db.lifespan)
service = meshkit.Service(app, name="orders")

# The relay starts once the app is live: its lifespan has made the tables.
service.add_outbox(SqliteOutbox(db.path))


def mesh() -> meshkit.ServiceClient:
    """The client that calls other services by name (a dependency, so tests can replace it)."""
    return service.client


Mesh = Annotated[meshkit.ServiceClient, Depends(mesh)]

app.include_router(details.routes(db, mesh))


# -- the saga ------------------------------------------------------------------------

placing = Saga("place-order")


@placing.step(timeout=_CALL_TIMEOUT + 0.5, attempts=_ATTEMPTS)
async def reserve(ctx: StepContext) -> Any:
    order = ctx.input
    answer = await mesh().post(
        "inventory",
        "/reservations",
        json={"order_id": order["order_id"], "items": order["items"]},
        idempotency_key=ctx.idempotency_key,
        timeout=_CALL_TIMEOUT,
    )
    return outcome(answer, final=(409,)).json()


@reserve.compensate
async def release(ctx: StepContext) -> None:
    # 204 whether or not anything was reserved: nothing to undo is done.
    answer = await mesh().delete(
        "inventory",
        f"/reservations/{ctx.input['order_id']}",
        idempotency_key=ctx.idempotency_key,
        timeout=_CALL_TIMEOUT,
    )
    outcome(answer)


@placing.step(timeout=_CALL_TIMEOUT + 0.5, attempts=_ATTEMPTS)
async def charge(ctx: StepContext) -> Any:
    order = ctx.input
    answer = await mesh().post(
        "payments",
        "/payments",
        json={
            "order_id": order["order_id"],
            "user_id": order["user_id"],
            "amount_cents": order["total_cents"],
        },
        idempotency_key=ctx.idempotency_key,
        timeout=_CALL_TIMEOUT,
    )
    payment = outcome(answer, final=(402,)).json()
    if payment["status"] != "captured":  # a void got there first: nothing was charged
        raise StepFailed(f"the payment of order {order['order_id']} was voided", status=503)
    return payment


@charge.compensate
async def void(ctx: StepContext) -> None:
    # Refunds a capture; with no charge yet, makes sure a late one captures nothing.
    answer = await mesh().post(
        "payments",
        f"/payments/by-order/{ctx.input['order_id']}/void",
        idempotency_key=ctx.idempotency_key,
        timeout=_CALL_TIMEOUT,
    )
    outcome(answer)


@placing.local_step
def confirm(tx: sqlite3.Connection, ctx: StepContext) -> None:
    """Confirm the order and record ``order.created``: with the step's log entry, or none."""
    order = ctx.input
    tx.execute(
        "UPDATE orders SET status = 'confirmed', payment_id = ? WHERE id = ?",
        (ctx.results["charge"]["id"], order["order_id"]),
    )
    event = {key: order[key] for key in ("order_id", "user_id", "total_cents", "items")}
    SqliteOutbox.record(tx, "order.created", event, key=str(order["user_id"]))
    ctx.on_commit(service.notify_outbox)
    log.info("order %d confirmed: %d cents charged", order["order_id"], order["total_cents"])


# What an undone order ends as, by the status of the step's final refusal.
_ENDS = {409: "rejected", 402: "declined"}


@placing.on_end
def settle(tx: sqlite3.Connection, run: Run) -> None:
    """An order whose saga was undone ends rejected, declined or failed, with the reason."""
    if run.status != "compensated" or run.failure is None:
        return
    status = _ENDS.get(run.failure.status or 0, "failed")
    log.info("order %d %s: %s", run.input["order_id"], status, run.failure.detail)
    tx.execute(
        "UPDATE orders SET status = ?, reason = ? WHERE id = ?",
        (status, run.failure.detail, run.input["order_id"]),
    )


# synchronous=NORMAL, as every database of the shop is written (shop.db):
# commits survive a crash of any process, not a power cut. A saga log
# stricter than the rows it coordinates (inventory's, payments') would buy
# nothing, and costs a disk flush at each of a saga's four commits.
sagas = service.add_sagas(SqliteSagaStore(db.path, synchronous="NORMAL"), placing)


# -- the API -------------------------------------------------------------------------


class Item(BaseModel):
    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=1000)


class NewOrder(BaseModel):
    user_id: int = Field(ge=1)
    items: list[Item] = Field(min_length=1, max_length=50)


OrderStatus = Literal["pending", "confirmed", "declined", "rejected", "failed"]


class Placed(BaseModel):
    """A confirmed order (201), or one still being placed (202)."""

    id: int
    status: OrderStatus
    total_cents: int


class Short(BaseModel):
    product_id: int
    requested: int
    available: int


class Refused(BaseModel):
    """The order that placing ended in, when it did not end confirmed."""

    id: int
    status: Literal["declined", "rejected", "failed"]


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
    """A problem for an order that ended without being confirmed: everything was undone.

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


class SagaStep(BaseModel):
    """One step of the order's saga: its phase and attempts (``undo_*``: its compensation)."""

    name: str
    phase: str
    attempts: int
    undo_attempts: int
    error: str | None


class OrderSaga(BaseModel):
    id: str
    status: str
    steps: list[SagaStep]
    note: str | None


class Order(BaseModel):
    id: int
    user_id: int
    status: OrderStatus
    total_cents: int
    payment_id: int | None
    reason: str | None
    created_at: str
    items: list[OrderLine]
    saga: OrderSaga | None


def _unavailable(what: str, response: meshkit.http.Response) -> HTTPException:
    return HTTPException(503, f"{what} answered {response.status_code}")


@app.post(
    "/orders",
    status_code=201,
    response_model=Placed,
    responses={
        202: {"model": Placed, "description": "Still being placed: poll the Location"},
        402: {"model": Declined, "description": "Payment declined (application/problem+json)"},
        409: {"model": Rejected, "description": "Not enough stock (application/problem+json)"},
    },
)
async def place_order(order: NewOrder, client: Mesh, key: IdempotencyKey) -> Any:
    fingerprint = hashlib.sha256(order.model_dump_json().encode()).hexdigest()
    if key is not None and (placed := await asyncio.to_thread(_by_key, key, fingerprint)):
        return await _answer(*placed)
    prices = await _prices(order, client)
    total = sum(prices[item.product_id] * item.quantity for item in order.items)

    run_id = secrets.token_hex(8)

    def record(tx: sqlite3.Connection) -> dict[str, Any]:
        return _record(tx, order, prices, total, run_id=run_id, key=key, fingerprint=fingerprint)

    try:
        run = await sagas.begin(placing, run_id=run_id, local=record)
    except sqlite3.IntegrityError:
        # Another request with the same key placed it a moment ago.
        placed = await asyncio.to_thread(_by_key, key or "", fingerprint)
        if placed is None:
            raise
        return await _answer(*placed)
    log.info("order %d placed for user %d: %d cents", run.input["order_id"], order.user_id, total)
    return await _answer(run.input["order_id"], run.id)


async def _prices(order: NewOrder, client: meshkit.ServiceClient) -> dict[int, int]:
    """Each product's price, after checking the user and the products exist (422 if not)."""
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
    return prices


async def _answer(order_id: int, run_id: str) -> Any:
    """The answer for an order whose saga is ``run_id``, once it ends or the wait is over."""
    run = await sagas.wait(run_id, _waiting_time())
    if run.status == "completed":
        total = run.input["total_cents"]
        return Placed(id=order_id, status="confirmed", total_cents=total)
    if run.status == "compensated" and run.failure is not None:
        failure = run.failure
        status = _ENDS.get(failure.status or 0, "failed")
        members = failure.data if isinstance(failure.data, dict) else {}
        short = {"short": members["short"]} if "short" in members else {}
        answer = 503 if status == "failed" else failure.status or 503
        raise Refusal(answer, Refused(id=order_id, status=status), failure.detail, **short)  # type: ignore[arg-type]
    # Still going (or stuck, for a person to see to): the client polls the order.
    # A relative reference, so it resolves under whatever prefix the client
    # used: /api/orders through the gateway, /orders here.
    still = Placed(id=order_id, status="pending", total_cents=run.input["total_cents"])
    return JSONResponse(still.model_dump(), 202, headers={"Location": f"orders/{order_id}"})


def _waiting_time() -> float:
    deadline = current_deadline()
    if deadline is None:
        return _ANSWER_WITHIN
    # Leave time to send the answer before the caller gives up.
    return max(0.0, min(_ANSWER_WITHIN, deadline.remaining(_now()) - 0.2))


def _now() -> float:
    return meshkit.SystemClock().monotonic()


@app.get("/orders/{order_id}")
async def get_order(order_id: int) -> Order:
    rows = await asyncio.to_thread(db.read, "SELECT * FROM orders WHERE id = ?", (order_id,))
    if not rows:
        raise HTTPException(404, f"no order {order_id}")
    row = dict(rows[0])
    items = await asyncio.to_thread(
        db.read,
        "SELECT product_id, quantity, price_cents FROM order_items WHERE order_id = ?",
        (order_id,),
    )
    run = await sagas.get(row["saga_id"]) if row["saga_id"] else None
    fields = {key: row[key] for key in Order.model_fields if key in row}
    return Order(**fields, items=[OrderLine(**item) for item in items], saga=_saga(run))


def _saga(run: Run | None) -> OrderSaga | None:
    if run is None:
        return None
    steps = [
        SagaStep(
            name=plan.name,
            phase=state.phase,
            attempts=state.attempts,
            undo_attempts=state.undo_attempts,
            error=state.error,
        )
        for plan, state in zip(run.plan, run.steps, strict=True)
    ]
    return OrderSaga(id=run.id, status=run.status, steps=steps, note=run.note)


def _record(
    tx: sqlite3.Connection,
    order: NewOrder,
    prices: dict[int, int],
    total: int,
    *,
    run_id: str,
    key: str | None,
    fingerprint: str,
) -> dict[str, Any]:
    """Insert the order, pending, with its saga's id: the saga's input."""
    cursor = tx.execute(
        "INSERT INTO orders (user_id, status, total_cents, saga_id, client_key, client_fingerprint)"
        " VALUES (?, 'pending', ?, ?, ?, ?)",
        (order.user_id, total, run_id, key, fingerprint if key else None),
    )
    order_id = int(cursor.lastrowid or 0)
    tx.executemany(
        "INSERT INTO order_items VALUES (?, ?, ?, ?)",
        [(order_id, i.product_id, i.quantity, prices[i.product_id]) for i in order.items],
    )
    items = [item.model_dump() for item in order.items]
    return {"order_id": order_id, "user_id": order.user_id, "total_cents": total, "items": items}


def _by_key(key: str, fingerprint: str) -> tuple[int, str] | None:
    """The order placed with the client's ``key`` and its saga; 422 if it was another order."""
    rows = db.read(
        "SELECT id, saga_id, client_fingerprint FROM orders WHERE client_key = ?", (key,)
    )
    if not rows:
        return None
    if rows[0]["client_fingerprint"] != fingerprint:
        raise HTTPException(422, "Idempotency-Key reused with a different order")
    return int(rows[0]["id"]), str(rows[0]["saga_id"])
