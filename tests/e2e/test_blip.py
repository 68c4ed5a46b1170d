"""A dependency's outage behind one route, with real processes: no blip becomes an outage.

orders answers ``GET /orders/{id}`` on its own and ``POST /orders`` by
calling payments. While payments is down the gateway keeps orders (its only
instance: ejection never takes the last) and only the write route's breaker
opens; the read route keeps answering 200, and the write route is back
within 2 s of payments' return.
"""

from __future__ import annotations

import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.e2e.conftest import Processes, http, meshkit_env, start_control_plane, wait_until

from meshkit.gateway import READY_PATH
from meshkit.testing.servers import free_port

TOKEN = "blip-tests-token-0123456789abcdef"

ORDERS = """
import meshkit
from fastapi import FastAPI, HTTPException

app = FastAPI()
service = meshkit.Service(app, name="orders")


@app.get("/orders/{order_id}")
def read(order_id: int) -> dict[str, int]:
    return {"id": order_id}


@app.post("/orders")
async def place() -> dict[str, str]:
    try:
        answer = await service.client.post("payments", "/charge", json={}, timeout=1.0)
    except meshkit.MeshkitError as error:
        raise HTTPException(503, f"payments: {error}") from error
    if not answer.is_success:
        raise HTTPException(503, f"payments answered {answer.status_code}")
    return {"status": "confirmed"}
"""

PAYMENTS = """
from fastapi import FastAPI

app = FastAPI()


@app.post("/charge")
def charge() -> dict[str, str]:
    return {"status": "charged"}
"""

GATEWAY = """
[project]
name = "blip"

[services.orders]
command = ["true"]  # started by the test, not by this file
health = ""

[gateway]
port = {port}
anonymous_rate = 1000
anonymous_burst = 1000

[[gateway.routes]]
path = "/api/orders"
service = "orders"
strip = "/api"
auth = "none"
"""


def _status(method: str, url: str) -> int:
    """The answer's status, 0 while nothing listens there yet."""
    data = b"{}" if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=15) as answer:  # noqa: S310 (loopback)
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def _instances(registry: int, service: str) -> int:
    status, body = http(
        "GET",
        f"http://127.0.0.1:{registry}/v1/registry/services/{service}",
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    return len(body["instances"]) if status == 200 else 0  # type: ignore[index]


def _start_payments(tmp_path: Path, processes: Processes, registry: int) -> None:
    env = meshkit_env(registry, TOKEN)
    env.update(MESHKIT_SERVICE="payments", MESHKIT_TTL="5")
    processes.start(
        [sys.executable, "-m", "meshkit", "serve", "payments:app"], env, tmp_path / "apps"
    )
    wait_until(lambda: _instances(registry, "payments") == 1, 30, "payments registered")


def test_the_read_route_answers_while_the_write_routes_dependency_is_down(
    tmp_path: Path, processes: Processes
) -> None:
    """GETs stay 200 through a payments outage; POSTs are 200 within 2 s of its return."""
    registry = free_port()
    processes.started.append(start_control_plane(tmp_path / "cp", registry, token=TOKEN))
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "orders.py").write_text(ORDERS)
    (apps / "payments.py").write_text(PAYMENTS)
    env = meshkit_env(registry, TOKEN)
    env.update(MESHKIT_TTL="5")
    processes.start([sys.executable, "-m", "meshkit", "serve", "orders:service"], env, apps)
    _start_payments(tmp_path, processes, registry)
    wait_until(lambda: _instances(registry, "orders") == 1, 30, "orders registered")
    port = free_port()
    gateway = tmp_path / "gateway"
    gateway.mkdir()
    (gateway / "meshkit.toml").write_text(GATEWAY.format(port=port))
    processes.start(
        [sys.executable, "-m", "meshkit", "gateway", "-p", str(gateway)],
        meshkit_env(registry, TOKEN),
        gateway,
    )
    wait_until(lambda: _status("GET", f"http://127.0.0.1:{port}{READY_PATH}") == 200, 30, "ready")
    orders = f"http://127.0.0.1:{port}/api/orders"
    assert http("POST", orders, {})[0] == 200
    assert http("GET", f"{orders}/1")[0] == 200

    payments = processes.started[2]
    payments.send_signal(signal.SIGTERM)  # it deregisters, then stops
    payments.wait(15)
    reads: list[int] = []
    writes: list[int] = []
    until = time.monotonic() + 3.0  # noqa: TID251 (real processes: a bounded outage)
    while time.monotonic() < until:  # noqa: TID251
        writes.append(_status("POST", orders))
        reads.append(_status("GET", f"{orders}/1"))
        time.sleep(0.05)  # noqa: TID251
    assert set(writes) == {503}
    assert set(reads) == {200}, reads

    _start_payments(tmp_path, processes, registry)
    wait_until(lambda: _status("POST", orders) == 200, 2.0, "the write route back")
    assert http("GET", f"{orders}/1")[0] == 200
