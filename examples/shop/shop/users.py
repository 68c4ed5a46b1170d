"""users: who can place orders."""

from __future__ import annotations

import sqlite3

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import meshkit
from shop.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE
);
"""


def seed(db: sqlite3.Connection) -> None:
    db.execute("INSERT OR IGNORE INTO users VALUES (1, 'Ada Lovelace', 'ada@example.com')")


db = Database("users", SCHEMA, seed)
app = FastAPI(title="users", lifespan=db.lifespan)
service = meshkit.Service(app, name="users")


class NewUser(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)


class User(BaseModel):
    id: int
    name: str
    email: str


@app.post("/users", status_code=201)
def create_user(user: NewUser) -> User:
    email = user.email.lower()
    try:
        with db.transaction() as tx:
            cursor = tx.execute("INSERT INTO users (name, email) VALUES (?, ?)", (user.name, email))
    except sqlite3.IntegrityError:
        raise HTTPException(409, f"a user with email {email} exists already") from None
    return User(id=cursor.lastrowid or 0, name=user.name, email=email)


@app.get("/users/{user_id}")
def get_user(user_id: int) -> User:
    rows = db.read("SELECT id, name, email FROM users WHERE id = ?", (user_id,))
    if not rows:
        raise HTTPException(404, f"no user {user_id}")
    return User(**rows[0])
