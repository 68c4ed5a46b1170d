"""products: what the shop sells, and at what price."""

from __future__ import annotations

import sqlite3

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field

import meshkit
from shop.db import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents > 0)
);
"""

DEMO = [
    (1, "Mechanical keyboard", 8900),
    (2, "Noise-cancelling headphones", 19900),
    (3, "USB-C hub", 3400),
]


def seed(db: sqlite3.Connection) -> None:
    db.executemany("INSERT OR IGNORE INTO products VALUES (?, ?, ?)", DEMO)


db = Database("products", SCHEMA, seed)
app = FastAPI(title="products", lifespan=db.lifespan)
service = meshkit.Service(app, name="products")


class NewProduct(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price_cents: int = Field(gt=0, le=100_000_000)


class Product(BaseModel):
    id: int
    name: str
    price_cents: int


@app.post("/products", status_code=201)
def create_product(product: NewProduct) -> Product:
    with db.transaction() as tx:
        cursor = tx.execute(
            "INSERT INTO products (name, price_cents) VALUES (?, ?)",
            (product.name, product.price_cents),
        )
    return Product(id=cursor.lastrowid or 0, name=product.name, price_cents=product.price_cents)


@app.get("/products")
def list_products() -> list[Product]:
    rows = db.read("SELECT id, name, price_cents FROM products ORDER BY id")
    return [Product(**row) for row in rows]


@app.get("/products/{product_id}")
def get_product(product_id: int) -> Product:
    rows = db.read("SELECT id, name, price_cents FROM products WHERE id = ?", (product_id,))
    if not rows:
        raise HTTPException(404, f"no product {product_id}")
    return Product(**rows[0])
