"""The shop's order saga under kill -9: of orders at each step boundary, of payments and
inventory during a stream of orders, and of one of two orders replicas mid-saga.

One shop under ``meshkit up`` runs every service but orders. The tests run
orders themselves (``meshkit serve``, with the environment ``meshkit up``
gives a service), so that they can restart it naming the next crash point
(``MESHKIT_SAGA_CRASH_AT``), or run two replicas and keep the killed one
dead. They share orders' database, and after each test these hold over
every order placed so far:

- every order ended, its saga with it: confirmed orders' sagas completed,
  the others' compensated;
- each product's stock is what the module set it to, less the quantities
  of the confirmed orders;
- payments captured exactly the confirmed orders' totals: one capture per
  confirmed order, of its total, and none for any other order.

The tests run in this order, each on what the one before left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, NamedTuple
from urllib.error import URLError

import pytest

from meshkit.deploy._state import read_table, service_data_dir
from meshkit.testing.servers import free_port

from .conftest import (
    Shop,
    http,
    instance_pids,
    meshkit_env,
    order_status,
    restock,
    stock,
    wait_until,
)

# Charges above this are declined (payments' PAYMENT_CARD_LIMIT_CENTS).
CARD_LIMIT = 100_000
ORDER = {"user_id": 1, "items": [{"product_id": 3, "quantity": 2}]}  # 6,800 cents
OVER_LIMIT = {"user_id": 1, "items": [{"product_id": 1, "quantity": 12}]}  # 106,800 cents
INITIAL = {1: 10_000, 3: 10_000}  # the stock the module starts from
ENDED = {"confirmed", "declined", "rejected", "failed"}

# Every point of the forward path, each crashing an order that is then confirmed...
FORWARD = [
    "begun",
    *(f"{when}:{step}" for step in ("reserve", "charge") for when in ("before", "after", "logged")),
    "before:confirm",
    "logged:confirm",  # a local step: its action and its log entry commit together
]
# ... and of the compensation path, each crashing an order whose charge is declined
# (after:charge: the decline was answered, not yet logged; the retry must be declined too).
UNDOING = ["after:charge", "before:reserve:undo", "after:reserve:undo", "logged:reserve:undo"]
CRASHES = [(point, ORDER, "confirmed") for point in FORWARD] + [
    (point, OVER_LIMIT, "declined") for point in UNDOING
]
# Points at which the run has ended already: the restarted process finds nothing to resume.
ENDED_AT = {"logged:confirm", "logged:reserve:undo"}


def without_orders(config: str) -> str:
    """The shop's meshkit.toml without orders (the tests run it) and with a card limit."""
    for block in (r"\[services\.orders\]\n", r'\[\[gateway\.routes\]\]\npath = "/api/orders"\n'):
        # The block's header and its lines up to the next header.
        config, dropped = re.subn(block + r"(?:(?!\[)[^\n]*\n)*", "", config)
        assert dropped == 1, block
    limited = f'env = {{ PAYMENT_FAILURE_RATE = "0", PAYMENT_CARD_LIMIT_CENTS = "{CARD_LIMIT}" }}'
    config, changed = re.subn(r'env = \{ PAYMENT_FAILURE_RATE = "0" \}', limited, config)
    assert changed == 1
    return config


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    running = Shop(tmp_path_factory.mktemp("shop") / "shop", configure=without_orders)
    try:
        running.up.wait_for("services are up", timeout=120)
        for product_id, quantity in INITIAL.items():
            restock(running, product_id=product_id, quantity=quantity)
        yield running
    finally:
        running.up.stop()


def now() -> float:
    return time.monotonic()  # noqa: TID251 (real processes, real time)


class Orders:
    """orders instances run by the test: ``meshkit serve shop.orders:service``, as
    ``meshkit up`` runs it, with its database in the shop's data directory."""

    def __init__(self, shop: Shop) -> None:
        self.shop = shop
        self.logs = shop.directory.parent / "orders-logs"
        self.logs.mkdir(exist_ok=True)
        self.started: list[subprocess.Popen[bytes]] = []

    def start(
        self, instance_id: str, port: int, *, crash_at: str | None = None
    ) -> subprocess.Popen[bytes]:
        """``instance_id`` on ``port``, once ready: registered, its own runs taken back."""
        env = meshkit_env(self.shop.control_port, self.shop.token)
        env.update(
            PYTHONPATH=os.pathsep.join(
                filter(None, [str(self.shop.directory), env.get("PYTHONPATH")])
            ),
            PYTHONUNBUFFERED="1",
            MESHKIT_SERVICE="orders",
            MESHKIT_INSTANCE_ID=instance_id,
            MESHKIT_PORT=str(port),
            MESHKIT_TTL="5",
            MESHKIT_VERSION="1.0.0",
            MESHKIT_DATA_DIR=str(data_dir(self.shop, "orders")),
        )
        if crash_at is not None:
            env["MESHKIT_SAGA_CRASH_AT"] = crash_at
        with self.log_path(instance_id).open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "meshkit", "serve", "shop.orders:service"],
                cwd=self.shop.directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started.append(process)
        wait_until(lambda: process.poll() is not None or ready(port), 30, f"{instance_id} ready")
        assert process.poll() is None, self.log(instance_id)[-3000:]
        return process

    def log_path(self, instance_id: str) -> Path:
        return self.logs / f"{instance_id}.log"

    def log(self, instance_id: str) -> str:
        """What ``instance_id`` printed, over all its runs."""
        return self.log_path(instance_id).read_text(errors="replace")

    def stop(self) -> None:
        """End every instance still running; print the end of each log (shown if a test failed)."""
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in sorted(self.logs.glob("*.log")):
            print(f"--- {log.name}, the end:\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def orders(shop: Shop) -> Iterator[Orders]:
    running = Orders(shop)
    try:
        yield running
    finally:
        running.stop()


def ready(port: int) -> bool:
    try:
        return http("GET", f"http://127.0.0.1:{port}/-/ready")[0] == 200
    except OSError:
        return False


def data_dir(shop: Shop, service: str) -> Path:
    return service_data_dir(shop.directory / ".meshkit", service)


def rows(shop: Shop, service: str, sql: str) -> list[sqlite3.Row]:
    """``sql`` read from ``service``'s own database, beside the running service."""
    db = sqlite3.connect(data_dir(shop, service) / f"{service}.sqlite3", timeout=10)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": f'"{key}"'}


def saga_runs(shop: Shop, orders_url: str) -> dict[str, str]:
    """Run id -> status, of every run in orders' saga log, from an orders instance."""
    status, runs = http(
        "GET",
        f"{orders_url}/-/sagas?limit=10000",
        headers={"authorization": f"Bearer {shop.token}"},
    )
    assert status == 200, runs
    assert isinstance(runs, list)
    return {run["id"]: run["status"] for run in runs}


def unsettled(shop: Shop, orders_url: str) -> list[str]:
    """The orders not ended, and the saga runs not ended: empty once everything settled."""
    pending = [
        f"order {row['id']}: {row['status']}"
        for row in rows(shop, "orders", "SELECT id, status FROM orders")
        if row["status"] not in ENDED
    ]
    going = [
        f"run {run}: {status}"
        for run, status in saga_runs(shop, orders_url).items()
        if status not in ("completed", "compensated")
    ]
    return pending + going


def check_invariants(shop: Shop, orders_url: str) -> Counter[str]:
    """Assert the module's invariants over every order so far; how many ended in each status."""
    orders = rows(shop, "orders", "SELECT id, status, total_cents, saga_id FROM orders")
    runs = saga_runs(shop, orders_url)
    for order in orders:
        run = runs[order["saga_id"]]
        ended = "completed" if order["status"] == "confirmed" else "compensated"
        assert order["status"] in ENDED, dict(order)
        assert run == ended, (dict(order), run)
    confirmed = {
        order["id"]: order["total_cents"] for order in orders if order["status"] == "confirmed"
    }
    sold = Counter[int]()
    for item in rows(shop, "orders", "SELECT order_id, product_id, quantity FROM order_items"):
        if item["order_id"] in confirmed:
            sold[item["product_id"]] += item["quantity"]
    assert set(sold) <= set(INITIAL)
    assert {p: stock(shop, p) for p in INITIAL} == {p: INITIAL[p] - sold[p] for p in INITIAL}
    payments = rows(shop, "payments", "SELECT order_id, amount_cents, status FROM payments")
    captured = [(p["order_id"], p["amount_cents"]) for p in payments if p["status"] == "captured"]
    assert len(captured) == len(dict(captured))  # one capture per order at most
    assert dict(captured) == confirmed
    return Counter(order["status"] for order in orders)


def placed_order(status: int, body: Any) -> int:
    """The id of the order a POST /orders answered about, whatever the answer."""
    assert status in (201, 202, 402, 409, 503), (status, body)
    return int(body["id"] if status in (201, 202) else body["order"]["id"])


class Crashed(NamedTuple):
    """An order whose request died with orders, at ``point``."""

    point: str
    order: dict[str, object]
    key: str  # the client's Idempotency-Key
    wanted: str  # the status it ends in


def test_orders_killed_at_every_step_boundary_ends_every_saga(shop: Shop, orders: Orders) -> None:
    """kill -9 of orders at each crash point of the saga, forward and compensating: the
    restarted process finishes the run, and the client's retry with its key gets that order."""
    began = now()
    crashed: Crashed | None = None
    for n, (point, order, wanted) in enumerate(CRASHES):
        process = orders.start("orders-1", shop.orders_port, crash_at=point)
        if crashed is not None:
            retry(shop, orders, crashed)
        crashed = Crashed(point, order, f"crash-{n}", wanted)
        with pytest.raises((ConnectionError, URLError)):  # it dies with the request in hand
            http("POST", shop.orders(), order, keyed(crashed.key))
        assert process.wait(10) == -signal.SIGKILL
        assert f"crashing at {point} (MESHKIT_SAGA_CRASH_AT)" in orders.log("orders-1")
    assert crashed is not None
    orders.start("orders-1", shop.orders_port)
    retry(shop, orders, crashed)
    counts = check_invariants(shop, shop.orders(""))
    assert counts == {"confirmed": len(FORWARD), "declined": len(UNDOING)}
    print(f"{len(CRASHES)} crashes in {now() - began:.1f} s")


def retry(shop: Shop, orders: Orders, crashed: Crashed) -> None:
    """The client of ``crashed`` sends its request again: it gets the order, once ended."""
    answer = http("POST", shop.orders(), crashed.order, keyed(crashed.key))
    order = order_status(shop, placed_order(*answer), crashed.wanted, timeout=30)
    saga = order["saga"]
    assert isinstance(saga, dict)
    assert saga["status"] == ("completed" if crashed.wanted == "confirmed" else "compensated")
    if crashed.point not in ENDED_AT:
        assert f"saga run {saga['id']} of place-order: resumed" in orders.log("orders-1")


# The instances killed while orders stream in, in turn, every KILL_EVERY seconds
# (skipping one not back yet), each at most MOST_KILLS times: the supervisor
# restarts a child after 0.5, 1, 2, then 4 s, so all are back within seconds.
VICTIMS = ("payments-1", "inventory-1", "inventory-2")
KILL_EVERY = 0.5
MOST_KILLS = 4
STREAM = 100
# The bound: every order has ended this long after the killed services are back.
SETTLE_WITHIN = 60.0


def serving(shop: Shop) -> dict[str, int]:
    """The victims serving now, by instance id: registered by the pid the supervisor runs."""
    table = read_table(shop.directory / ".meshkit")
    assert table is not None
    running = {p.id: p.pid for p in table.processes if p.status == "running"}
    listed = {**instance_pids(shop, "payments"), **instance_pids(shop, "inventory")}
    return {id_: pid for id_, pid in listed.items() if running.get(id_) == pid}


def test_orders_end_when_payments_and_inventory_are_killed_mid_stream(
    shop: Shop, orders: Orders
) -> None:
    """kill -9 of payments and inventory instances, in turn, during a stream of 100 orders:
    once they are back every order ends within the bound, and the invariants hold."""
    orders.start("orders-1", shop.orders_port)
    before = len(rows(shop, "orders", "SELECT id FROM orders"))
    kills = Counter[str]()
    turn = 0
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(http, "POST", shop.orders(), ORDER) for _ in range(STREAM)]
        began = now()
        while wait(answers, timeout=KILL_EVERY).not_done:  # the kills' pace
            up = serving(shop)
            for victim in VICTIMS[turn:] + VICTIMS[:turn]:
                if victim in up and kills[victim] < MOST_KILLS:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(up[victim], signal.SIGKILL)
                    kills[victim] += 1
                    turn = (VICTIMS.index(victim) + 1) % len(VICTIMS)
                    break
        streamed = now() - began
    codes = Counter(answer.result()[0] for answer in answers)
    assert set(codes) <= {201, 202, 409, 503}, codes
    assert sum(kills.values()) >= 3, kills  # the stream outlasted a round of kills
    wait_until(lambda: set(serving(shop)) == set(VICTIMS), 60, "the killed instances back")
    back = now()
    wait_until(lambda: not unsettled(shop, shop.orders("")), SETTLE_WITHIN, "every order ended")
    settled = now() - back
    counts = check_invariants(shop, shop.orders(""))
    assert counts.total() - before == STREAM  # one order per request, none lost or doubled
    print(
        f"{STREAM} orders in {streamed:.1f} s, answered {dict(codes)}, {dict(kills)} killed;"
        f" all ended {settled:.1f} s after the services were back; so far {dict(counts)}"
    )


# A run's lease is 10 s (Service.add_sagas), renewed every third of it, and
# the survivor looks for lapsed ones every second: it takes a run over 7 to
# 11 s after the kill. The bound leaves room for a loaded machine.
TAKEOVER_WITHIN = 30.0


def test_a_replica_takes_over_the_runs_of_one_killed_mid_saga(shop: Shop, orders: Orders) -> None:
    """Two orders replicas; payments stopped (SIGSTOP) while one begins three orders, then
    that one is killed (kill -9) and payments resumed: the other takes the runs over once
    their lease lapses, and confirms the orders, each charged once."""
    first_port = free_port()
    first = orders.start("orders-a", first_port)
    orders.start("orders-b", shop.orders_port)  # shop.orders() reaches the survivor
    (payments,) = instance_pids(shop, "payments").values()
    deadline = {"x-meshkit-timeout-ms": "1000"}  # answer 202 while the charge hangs
    os.kill(payments, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(3) as pool:
            placing = [
                pool.submit(http, "POST", f"http://127.0.0.1:{first_port}/orders", ORDER, deadline)
                for _ in range(3)
            ]
        placed = [placed_order(*answer.result()) for answer in placing]
        assert [answer.result()[0] for answer in placing] == [202] * 3
        for order_id in placed:
            _, order = http("GET", f"http://127.0.0.1:{first_port}/orders/{order_id}")
            assert order["saga"]["status"] == "running", order  # type: ignore[index]
            # The charge is under way (or waits to be tried again, on a slow machine).
            assert order["saga"]["steps"][1]["phase"] in ("started", "waiting"), order  # type: ignore[index]
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed = now()
    finally:
        os.kill(payments, signal.SIGCONT)
    runs: dict[int, str] = {}
    for order_id in placed:
        order = order_status(shop, order_id, "confirmed", timeout=TAKEOVER_WITHIN)
        runs[order_id] = order["saga"]["id"]  # type: ignore[index]
    took = now() - killed
    survivor = orders.log("orders-b")
    for run_id in runs.values():
        assert f"saga run {run_id} of place-order: resumed (running)" in survivor
        status, run = http(
            "GET",
            shop.orders(f"/-/sagas/{run_id}"),
            headers={"authorization": f"Bearer {shop.token}"},
        )
        assert (status, run["status"]) == (200, "completed")  # type: ignore[index]
    check_invariants(shop, shop.orders(""))
    print(f"the survivor completed the killed replica's runs {took:.1f} s after the kill")
