"""One FastAPI route, served by each ASGI server the asgi benchmark compares."""

from __future__ import annotations

from fastapi import FastAPI

app = FastAPI()


@app.get("/products/{product_id}")
async def product(product_id: int) -> dict[str, object]:
    return {"id": product_id, "name": "widget", "price_cents": 1299}
