"""The shop's order end to end, through the gateway, for the saga benchmark.

A copy of ``examples/shop`` in a temporary directory runs under
``meshkit up``, as ``make demo`` runs the original, but on free ports (its
fixed ones, 7700 and 8000 among them, may be taken by a running demo) and
with an API key of the benchmark's own whose rate limit never trips (the
demo's key allows 100 requests a second). Before the load, the product
ordered is restocked with the staff's key, so no order is short.

Two loads, each for a given time, from this process (uvloop and meshkit's
HTTP client): orders placed back to back, ``IN_FLIGHT`` at a time (the
rate), then orders at a steady rate, each its own task, timed from its
send to its answer (p50 and p99). Every order must answer 201.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import uvloop

from benchmarks._load import percentile
from meshkit._net import free_port
from meshkit.http import HTTPClient, Limits

__all__ = ["IN_FLIGHT", "Shop", "orders", "paced_orders", "shop"]

ROOT = Path(__file__).resolve().parent.parent
# Orders placed at once in the throughput run: the clients of a busy shop.
IN_FLIGHT = 16
PRODUCT = 3
ORDER = json.dumps({"user_id": 1, "items": [{"product_id": PRODUCT, "quantity": 1}]}).encode()
# The project's fixed ports: the control plane, orders, notifications, the gateway.
_FIXED_PORTS = (7700, 8104, 8106, 8000)
_STARTUP_SECONDS = 120


@dataclass(frozen=True, slots=True)
class Shop:
    """A running copy: where its gateway listens and the API key the benchmark uses."""

    gateway_port: int
    api_key: str
    control_port: int
    directory: Path


@contextlib.contextmanager
def shop() -> Iterator[Shop]:
    """The shop copied to a temporary directory, up and restocked; stopped and removed after."""
    with tempfile.TemporaryDirectory(prefix="meshkit-saga-shop-") as tmp:
        directory = Path(tmp) / "shop"
        shutil.copytree(
            ROOT / "examples" / "shop",
            directory,
            ignore=shutil.ignore_patterns(".meshkit", "__pycache__", ".data"),
        )
        ports = {old: free_port() for old in _FIXED_PORTS}
        key, admin = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        configure(directory / "meshkit.toml", ports, key)
        log = directory / "up.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "meshkit", "up", "-p", str(directory)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=environment(admin),
                start_new_session=True,
            )
        try:
            wait_up(process, log)
            running = Shop(
                gateway_port=ports[8000], api_key=key, control_port=ports[7700], directory=directory
            )
            uvloop.run(restock(running, admin))
            yield running
        finally:
            stop(process)


def configure(config: Path, ports: dict[int, int], key: str) -> None:
    """Free ports for the fixed ones, and the benchmark's API key after the demo's."""
    text = config.read_text()
    for old, new in ports.items():
        text = re.sub(rf"\bport = {old}\b", f"port = {new}", text)
    # An array of tables may take more elements further down (TOML 1.0). The
    # highest rate and burst the gateway's configuration accepts.
    text += f"""
[[gateway.api_keys]]
name = "bench"
key = "{key}"
rate = 1e6
burst = 1_000_000
"""
    config.write_text(text)


def environment(admin_key: str) -> dict[str, str]:
    """This environment less any meshkit setting, with the staff's key for the gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHKIT_")}
    env.pop("FORCE_COLOR", None)
    env["SHOP_ADMIN_KEY"] = admin_key
    return env


def wait_up(process: subprocess.Popen[bytes], log: Path) -> None:
    """Until ``meshkit up`` says every service is up; raises with its output if it never does."""
    deadline = time.monotonic() + _STARTUP_SECONDS
    while "services are up" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the shop did not come up:\n{tail}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a person stops it; its whole process group killed if it has not ended in 30 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


async def restock(running: Shop, admin_key: str) -> None:
    body = json.dumps({"quantity": 10_000_000}).encode()
    async with HTTPClient() as client:
        answer = await client.send(
            "PUT",
            "127.0.0.1",
            running.gateway_port,
            f"/api/stock/{PRODUCT}",
            headers=[(b"x-api-key", admin_key.encode()), (b"content-type", b"application/json")],
            body=body,
            connect=5,
            read=10,
        )
    if answer.status != 200:
        raise RuntimeError(f"restocking answered {answer.status}")


async def _place(client: HTTPClient, running: Shop) -> float:
    """One order through the gateway; its time in seconds. Raises unless it answered 201."""
    sent = time.perf_counter()
    answer = await client.send(
        "POST",
        "127.0.0.1",
        running.gateway_port,
        "/api/orders",
        headers=[(b"x-api-key", running.api_key.encode()), (b"content-type", b"application/json")],
        body=ORDER,
        connect=5,
        read=30,
    )
    if answer.status != 201:
        raise RuntimeError(f"an order answered {answer.status}: {answer.body[:300]!r}")
    return time.perf_counter() - sent


def orders(running: Shop, seconds: float) -> dict[str, float]:
    """``rate``: orders a second, ``IN_FLIGHT`` placed at a time for ``seconds``."""

    async def run() -> dict[str, float]:
        limits = Limits(max_connections=IN_FLIGHT, max_idle=IN_FLIGHT)
        async with HTTPClient(limits=limits) as client:
            await _place(client, running)  # the first order opens the paths behind the gateway
            start = time.perf_counter()
            deadline = start + seconds
            done = 0

            async def work() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await _place(client, running)
                    done += 1

            await asyncio.gather(*(work() for _ in range(IN_FLIGHT)))
            return {"count": done, "rate": done / (time.perf_counter() - start)}

    return uvloop.run(run())


def paced_orders(running: Shop, *, rate: int, seconds: float) -> dict[str, float]:
    """``p50`` and ``p99`` in ms of orders placed ``rate`` a second for ``seconds``."""

    async def run() -> list[float]:
        async with HTTPClient(limits=Limits(max_connections=64, max_idle=64)) as client:
            tasks: list[asyncio.Task[float]] = []
            start = time.perf_counter()
            for i in range(max(1, int(rate * seconds))):
                await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
                tasks.append(asyncio.create_task(_place(client, running)))
            return list(await asyncio.gather(*tasks))

    found = uvloop.run(run())
    return {"p50": percentile(found, 0.5) * 1e3, "p99": percentile(found, 0.99) * 1e3}
