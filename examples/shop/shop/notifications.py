"""notifications: what the shop has told its users.

A plain FastAPI app: it does not import meshkit, as an app written in any
other language would not. Its sidecar (``sidecar = true`` in meshkit.toml)
registers it while ``/health`` answers and proxies its traffic; the app
reaches other services through the sidecar's outbound port, given in
``$MESHKIT_OUTBOUND``, as ``$MESHKIT_OUTBOUND/<service>/<path>``.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, Field

from shop.db import Database

app = FastAPI(title="notifications")
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
"""

db = Database("notifications", SCHEMA)


class Notification(BaseModel):
    user_id: int = Field(ge=1)
    order_id: int | None = Field(default=None, ge=1)
    message: str = Field(min_length=1, max_length=1000)


@app.get("/health")
def health() -> dict[str, str]:
    db.read("SELECT 1", ())  # healthy means the database answers too
    return {"status": "ok"}


def _user_exists(user_id: int) -> bool:
    """Asks users, by name, through the sidecar (which balances and retries)."""
    if not OUTBOUND:
        return True  # run alone, outside the mesh: nobody to ask
    url = f"{OUTBOUND}/users/users/{user_id}"
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 (the local sidecar)
            return bool(json.loads(answer.read()).get("id") == user_id)
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise HTTPException(503, f"users answered {error.code}") from None
    except OSError as error:
        raise HTTPException(503, f"users could not be reached: {error}") from None


@app.post("/notifications", status_code=201)
def send(notification: Notification) -> dict[str, object]:
    if not _user_exists(notification.user_id):
        raise HTTPException(422, f"no user {notification.user_id} to notify")
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
