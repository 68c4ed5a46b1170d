"""notifications: what the shop has told its users.

A plain FastAPI app: it does not import meshkit, as an app written in any
other language would not. Its sidecar (``sidecar = true`` in meshkit.toml)
registers it while ``/health`` answers and proxies its traffic; the app
reaches other services through the sidecar's outbound port, given in
``$MESHKIT_OUTBOUND``, as ``$MESHKIT_OUTBOUND/<service>/<path>``.

Events reach it the same way: the sidecar takes the group
``notifications``'s ``order.created`` messages from the bus and POSTs each
to ``/events/order-created`` (``subscribe`` in meshkit.toml). A 2xx answer
acks it. An order for a user that users does not know is answered 422: the
bus tries again after its backoff, then keeps it as a dead letter, to be
replayed (``meshkit dlq replay``) once the user exists. An order confirmed
before is acknowledged without sending the confirmation again: the bus
delivers at least once, and the same order may be published again under a
new message id, so the order id, not the message id, says what was done.

Its errors are problem details (RFC 9457, ``application/problem+json``),
the shape the rest of the mesh answers in, from two exception handlers of
its own: any FastAPI app can answer so.
"""

from __future__ import annotations

import json
import os
import sqlite3
import urllib.error
import urllib.request
from http import HTTPStatus
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from shop.db import Database

OUTBOUND = os.environ.get("MESHKIT_OUTBOUND", "")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    order_id INTEGER,
    message TEXT NOT NULL,
    sent_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id);
-- The orders confirmed already, and the notification that did it.
CREATE TABLE IF NOT EXISTS confirmed_orders (
    order_id INTEGER PRIMARY KEY,
    notification_id INTEGER NOT NULL
);
"""


def problem(request: Request, status: int, detail: str, **members: Any) -> JSONResponse:
    """An RFC 9457 problem; ``instance`` is the request id the sidecar sets."""
    title = "Unprocessable Content" if status == 422 else HTTPStatus(status).phrase  # RFC 9110
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if "x-request-id" in request.headers:
        body["instance"] = request.headers["x-request-id"]
    return JSONResponse(body | members, status, media_type="application/problem+json")


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    """Our HTTPExceptions, and Starlette's own (404 no route, 405)."""
    answer = problem(request, error.status_code, str(error.detail))
    answer.headers.update(error.headers or {})
    return answer


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """A 422 naming each invalid input by its path (``body.order_id``)."""
    errors = [{"field": ".".join(map(str, e["loc"])), "detail": e["msg"]} for e in error.errors()]
    named = "; ".join(f"{e['field']}: {e['detail']}" for e in errors)
    return problem(request, 422, f"the request is not valid: {named}", errors=errors)


async def internal_error(request: Request, _error: Exception) -> JSONResponse:
    """Anything else: a 500 that shows nothing of the error (the server logs it)."""
    return problem(request, 500, "internal error")


db = Database("notifications", SCHEMA)
app = FastAPI(
    title="notifications",
    lifespan=db.lifespan,
    exception_handlers={
        StarletteHTTPException: http_error,
        RequestValidationError: invalid_request,
        Exception: internal_error,
    },
)


class Notification(BaseModel):
    user_id: int = Field(ge=1)
    order_id: int | None = Field(default=None, ge=1)
    message: str = Field(min_length=1, max_length=1000)


class SentNotification(Notification):
    id: int
    sent_at: str


class Confirmation(BaseModel):
    """The answer to an event: the confirmation, and whether it was sent before."""

    notification_id: int
    repeat: bool


class Health(BaseModel):
    status: Literal["ok"]


@app.get("/health")
def health() -> Health:
    db.read("SELECT 1", ())  # healthy means the database answers too
    return Health(status="ok")


def _user_exists(user_id: int, traceparent: str | None) -> bool:
    """Asks users, by name, through the sidecar (which balances and retries).

    The request's ``traceparent`` goes on with the call, as W3C Trace
    Context asks of any app, so that the call joins the request's trace.
    """
    if not OUTBOUND:
        return True  # run alone, outside the mesh: nobody to ask
    url = f"{OUTBOUND}/users/users/{user_id}"
    headers = {"traceparent": traceparent} if traceparent else {}
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 (the local sidecar)
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310
            return bool(json.loads(answer.read()).get("id") == user_id)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise HTTPException(503, f"users answered {error.code}") from None
    except OSError as error:
        raise HTTPException(503, f"users could not be reached: {error}") from None


class OrderCreated(BaseModel):
    """What notifications reads of an ``order.created`` event."""

    order_id: int = Field(ge=1)
    user_id: int = Field(ge=1)
    total_cents: int = Field(ge=0)


@app.post("/notifications", status_code=201)
def send(
    notification: Notification, traceparent: Annotated[str | None, Header()] = None
) -> SentNotification:
    if not _user_exists(notification.user_id, traceparent):
        raise HTTPException(422, f"no user {notification.user_id} to notify")
    with db.transaction() as tx:
        return _insert(tx, notification)


@app.post("/events/order-created")
def order_created(
    event: OrderCreated, traceparent: Annotated[str | None, Header()] = None
) -> Confirmation:
    """Confirm an order to its user, once per order."""
    # A repeat is acked before anything else is asked: had the user gone
    # since, a 422 would send a handled order to the dead-letter queue.
    done = _confirmed(event.order_id)
    if done is not None:
        return done
    if not _user_exists(event.user_id, traceparent):
        raise HTTPException(422, f"no user {event.user_id} to confirm order {event.order_id} to")
    message = f"Order {event.order_id} is confirmed: {event.total_cents / 100:.2f} charged."
    notification = Notification(user_id=event.user_id, order_id=event.order_id, message=message)
    with db.transaction() as tx:
        # Asked again under the write lock: a concurrent delivery may have won.
        row = tx.execute(
            "SELECT notification_id FROM confirmed_orders WHERE order_id = ?", (event.order_id,)
        ).fetchone()
        if row is not None:
            return Confirmation(notification_id=row["notification_id"], repeat=True)
        sent = _insert(tx, notification)
        tx.execute("INSERT INTO confirmed_orders VALUES (?, ?)", (event.order_id, sent.id))
    return Confirmation(notification_id=sent.id, repeat=False)


def _confirmed(order_id: int) -> Confirmation | None:
    rows = db.read("SELECT notification_id FROM confirmed_orders WHERE order_id = ?", (order_id,))
    if not rows:
        return None
    return Confirmation(notification_id=rows[0]["notification_id"], repeat=True)


def _insert(tx: sqlite3.Connection, notification: Notification) -> SentNotification:
    cursor = tx.execute(
        "INSERT INTO notifications (user_id, order_id, message) VALUES (?, ?, ?)",
        (notification.user_id, notification.order_id, notification.message),
    )
    row = tx.execute("SELECT * FROM notifications WHERE id = ?", (cursor.lastrowid,)).fetchone()
    return SentNotification(**row)


@app.get("/notifications")
def sent_to(
    user_id: int = Query(ge=1), order_id: int | None = Query(default=None, ge=1)
) -> list[SentNotification]:
    """What was sent to a user, oldest first; with ``order_id``, only about that order."""
    if order_id is None:
        rows = db.read("SELECT * FROM notifications WHERE user_id = ? ORDER BY id", (user_id,))
    else:
        rows = db.read(
            "SELECT * FROM notifications WHERE user_id = ? AND order_id = ? ORDER BY id",
            (user_id, order_id),
        )
    return [SentNotification(**row) for row in rows]
