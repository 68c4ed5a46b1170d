"""notifications: what the shop has told its users."""

from __future__ import annotations

from fastapi import FastAPI, Query
from pydantic import BaseModel, Field

import meshkit
from shop.db import Database

app = FastAPI(title="notifications")
service = meshkit.Service(app, name="notifications", version="1.0.0")

SCHEMA = """
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    order_id INTEGER,
    message TEXT NOT NULL,
    sent_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS notifications_by_user ON notifications (user_id);
"""

db = Database("notifications", SCHEMA)


class Notification(BaseModel):
    user_id: int = Field(ge=1)
    order_id: int | None = Field(default=None, ge=1)
    message: str = Field(min_length=1, max_length=1000)


@app.post("/notifications", status_code=201)
def send(notification: Notification) -> dict[str, object]:
    with db.transaction() as tx:
        cursor = tx.execute(
            "INSERT INTO notifications (user_id, order_id, message) VALUES (?, ?, ?)",
            (notification.user_id, notification.order_id, notification.message),
        )
        row = tx.execute("SELECT * FROM notifications WHERE id = ?", (cursor.lastrowid,)).fetchone()
    return dict(row)


@app.get("/notifications")
def sent_to(user_id: int = Query(ge=1)) -> list[dict[str, object]]:
    rows = db.read("SELECT * FROM notifications WHERE user_id = ? ORDER BY id", (user_id,))
    return [dict(row) for row in rows]
