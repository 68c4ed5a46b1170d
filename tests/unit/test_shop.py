"""The shop's apps in-process, through httpx's ASGITransport: no mesh, no other service."""

import importlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from fastapi import FastAPI

from meshkit.bus import Message
from meshkit.http import Response

SHOP = Path(__file__).resolve().parents[2] / "examples" / "shop"
APPS = ["users", "products", "inventory", "payments", "orders", "notifications"]


def load(name: str, monkeypatch: pytest.MonkeyPatch, data: Path | None = None) -> ModuleType:
    """``shop.<name>``, its database moved to ``data`` (nothing is opened until its lifespan)."""
    monkeypatch.syspath_prepend(str(SHOP))
    module = importlib.import_module(f"shop.{name}")
    if data is not None:
        monkeypatch.setattr(module.db, "path", data / f"{name}.sqlite3")
        monkeypatch.setattr(module.db, "opened", False)
    return module


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of ``app``, inside its lifespan (which ASGITransport does not run)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client


@pytest.mark.parametrize("name", APPS)
def test_every_route_documents_its_answer(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each route of each app has a 2xx response in OpenAPI, with a schema unless it is a 204."""
    schema = load(name, monkeypatch).app.openapi()
    operations = [
        (f"{method.upper()} {path}", operation)
        for path, methods in schema["paths"].items()
        for method, operation in methods.items()
    ]
    assert operations
    for route, operation in operations:
        success = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert success, f"{route} documents no 2xx answer"
        for code, answer in success.items():
            if code == "204":
                assert "content" not in answer, route
                continue
            body = answer["content"]["application/json"]["schema"]
            assert body, f"{route} {code} has an empty schema"


def test_importing_the_apps_touches_no_file(tmp_path: Path) -> None:
    """In a fresh process, importing every app leaves the data directory as it was."""
    data = tmp_path / "data"
    code = "; ".join(f"import shop.{name}" for name in APPS)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=SHOP,
        env={**environ, "MESHKIT_DATA_DIR": str(data)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not data.exists()


async def test_the_lifespan_opens_the_database_with_its_demo_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serving an app creates its file and seeds it."""
    users = load("users", monkeypatch, tmp_path)
    assert not users.db.path.exists()
    async with serving(users.app) as client:
        assert users.db.path.exists()
        assert (await client.get("/users/1")).json()["name"] == "Ada Lovelace"


class FakeMesh:
    """Stands in for ``service.client``: answers by (service, method, path), records each call."""

    def __init__(self, answers: dict[tuple[str, str, str], tuple[int, object]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, str]] = []

    async def _call(self, service: str, method: str, path: str) -> Response:
        self.calls.append((service, method, path))
        status, body = self.answers[(service, method, path)]
        return Response(status, [(b"content-type", b"application/json")], json.dumps(body).encode())

    async def get(self, service: str, path: str, **_: object) -> Response:
        return await self._call(service, "GET", path)

    async def post(self, service: str, path: str, **_: object) -> Response:
        return await self._call(service, "POST", path)

    async def delete(self, service: str, path: str, **_: object) -> Response:
        return await self._call(service, "DELETE", path)


@pytest.fixture
async def orders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, FakeMesh]]:
    module = load("orders", monkeypatch, tmp_path)
    mesh = FakeMesh(
        {
            ("users", "GET", "/users/1"): (200, {"id": 1}),
            ("users", "GET", "/users/404"): (404, {"detail": "no user 404"}),
            ("products", "GET", "/products/3"): (200, {"id": 3, "price_cents": 3400}),
            ("inventory", "POST", "/reservations"): (201, {}),
            ("payments", "POST", "/payments"): (201, {"id": 70, "status": "captured"}),
        }
    )
    module.app.dependency_overrides[module.mesh] = lambda: mesh
    try:
        async with serving(module.app) as client:
            yield client, mesh
    finally:
        module.app.dependency_overrides.clear()


async def test_orders_calls_other_services_through_its_dependency(
    orders: tuple[httpx.AsyncClient, FakeMesh],
) -> None:
    """With ``mesh`` overridden, an order is checked, reserved, charged and confirmed in-process."""
    client, mesh = orders
    order = {"user_id": 1, "items": [{"product_id": 3, "quantity": 2}]}
    placed = await client.post("/orders", json=order)
    assert placed.status_code == 201, placed.text
    assert placed.json() == {"id": 1, "status": "confirmed", "total_cents": 6800}
    assert [call[0] for call in mesh.calls] == ["users", "products", "inventory", "payments"]
    stored = (await client.get("/orders/1")).json()
    assert (stored["status"], stored["payment_id"]) == ("confirmed", 70)
    assert stored["items"] == [{"product_id": 3, "quantity": 2, "price_cents": 3400}]


async def test_an_order_for_an_unknown_user_is_a_422_naming_the_field(
    orders: tuple[httpx.AsyncClient, FakeMesh],
) -> None:
    """The answer's detail is a plain string naming the field and the user."""
    client, mesh = orders
    order = {"user_id": 404, "items": [{"product_id": 3, "quantity": 1}]}
    refused = await client.post("/orders", json=order)
    assert refused.status_code == 422
    assert refused.json()["detail"] == "user_id: no user 404"
    assert mesh.calls == [("users", "GET", "/users/404")]


async def test_an_order_published_twice_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """order.created for one order under two message ids adds its items to 'sold' once."""
    inventory = load("inventory", monkeypatch, tmp_path)
    event = json.dumps({"order_id": 7, "items": [{"product_id": 3, "quantity": 2}]}).encode()
    async with serving(inventory.app) as client:
        for message_id in ("first-publish", "published-again", "first-publish"):
            message = Message(id=message_id, topic="order.created", payload=event)
            await inventory.count_sale(message)
        stock = (await client.get("/stock/3")).json()
        assert stock == {"product_id": 3, "quantity": 40, "sold": 2}
