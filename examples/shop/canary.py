"""A canary of payments on the running shop: a bad version rolls itself back, a good one promotes.

    SHOP_ADMIN_KEY=... make canary   (with the shop running, started with the same key:
                                      SHOP_ADMIN_KEY=... make demo, in another terminal)

While orders keep coming through the gateway (ten a second), this edits
payments' table in meshkit.toml and runs ``meshkit deploy payments``, twice:

1. version 1.1.0 with ``PAYMENT_ERROR_RATE = "0.3"``, a version that fails
   30% of charges with a 500. The canary takes 20% of the charges; its
   analysis finds the failures, and after two failed checks the rollout
   rolls back by itself. The orders whose charge failed meanwhile were
   retried by their sagas (a charge fails before doing anything).
2. version 1.2.0, working: each step (20%, 50%, 100%) passes its analysis,
   and it promotes.

Then it waits for every order placed to end (confirmed, or declined and
undone), prints the count, and puts meshkit.toml back as it was (payments
goes on running 1.2.0 until the shop restarts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEY = "shop-demo"
ORDER = {"user_id": 1, "items": [{"product_id": 3, "quantity": 1}]}
STOCK = 1_000_000  # of product 3, so that no order is rejected for want of it


def meshkit(*args: str, project: Path) -> int:
    """A meshkit command on the project, its output shown as it comes; its exit status."""
    command = [sys.executable, "-m", "meshkit", *args, "-p", str(project)]
    print("$ meshkit " + " ".join(args), flush=True)
    return subprocess.run(command, check=False).returncode  # noqa: S603 (our own program)


def request(
    method: str, url: str, body: object = None, *, key: str = KEY
) -> tuple[int, dict[str, object]]:
    data = None if body is None else json.dumps(body).encode()
    sent = urllib.request.Request(url, data=data, method=method)  # noqa: S310 (the shop's gateway)
    sent.add_header("x-api-key", key)
    sent.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(sent, timeout=30) as answer:  # noqa: S310
            return answer.status, json.loads(answer.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except OSError:
        return 0, {}


class Orders:
    """Orders placed through the gateway, ten a second, until stopped."""

    def __init__(self, gateway: str) -> None:
        self.gateway = gateway
        self.placed: list[int] = []
        self.answers: Counter[int] = Counter()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._place, daemon=True) for _ in range(4)]
        for thread in self._threads:
            thread.start()

    def _place(self) -> None:
        while not self._stop.wait(0.4):  # four threads: ten orders a second
            status, body = request("POST", f"{self.gateway}/api/orders", ORDER)
            self.answers[status] += 1
            order = body.get("order", body)
            if isinstance(order, dict) and isinstance(order.get("id"), int):
                self.placed.append(order["id"])

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def settle(self, *, looks: int) -> Counter[str]:
        """Each order's status once none is pending any more (looking every 2 s, at most
        ``looks`` times)."""
        ends: Counter[str] = Counter()
        for _ in range(looks):
            ends = Counter()
            for order_id in self.placed:
                status, body = request("GET", f"{self.gateway}/api/orders/{order_id}")
                ends[str(body.get("status")) if status == 200 else f"unread ({status})"] += 1
                threading.Event().wait(0.02)  # within the demo key's 100 requests a second
            if not ends["pending"]:
                break
            threading.Event().wait(2)  # a pause: the orders are done
        return ends


def payments(text: str, version: str, env: str) -> str:
    """meshkit.toml's text with payments' version and environment changed."""
    table = re.search(r"\[services\.payments\]\n(?:[^\[\n].*\n|\n)*", text)
    if table is None:
        raise SystemExit("no [services.payments] table in meshkit.toml")
    changed = re.sub(r'version = ".*"', f'version = "{version}"', table.group(0))
    changed = re.sub(r"env = \{.*\}", f"env = {{ {env} }}", changed)
    return text[: table.start()] + changed + text[table.end() :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--project", type=Path, default=HERE, metavar="DIR")
    project = parser.parse_args().project.resolve()
    config = project / "meshkit.toml"
    original = config.read_text()
    port = re.search(r"\[gateway\]\nport = (\d+)", original)
    gateway = f"http://127.0.0.1:{port.group(1) if port else 8000}"
    if request("GET", f"{gateway}/api/products")[0] != 200:
        raise SystemExit(f"the shop is not answering at {gateway}: start it with `make demo`")
    admin = os.environ.get("SHOP_ADMIN_KEY", "")
    restocked = request("PUT", f"{gateway}/api/stock/3", {"quantity": STOCK}, key=admin)[0]
    if not admin or restocked != 200:
        raise SystemExit(
            "make canary places about a thousand orders, more than the shop has in stock:"
            " start the shop with SHOP_ADMIN_KEY=<8 characters or more> make demo, and run"
            " SHOP_ADMIN_KEY=<the same> make canary, so that it can restock"
            f" (restocking answered {restocked or 'nothing'})"
        )
    # Versions of this run's own: a second run finds payments at the last one.
    run = secrets.token_hex(2)
    broken, working = f"1.1.0+{run}", f"1.2.0+{run}"
    orders = Orders(gateway)
    try:
        print(f"\n== payments {broken}, failing 30% of charges, as a canary ==", flush=True)
        config.write_text(payments(original, broken, 'PAYMENT_ERROR_RATE = "0.3"'))
        bad = meshkit("deploy", "payments", project=project)
        print(f"(exit {bad}: {'rolled back' if bad == 1 else 'unexpected'})", flush=True)
        print(f"\n== payments {working}, working ==", flush=True)
        config.write_text(payments(original, working, 'PAYMENT_FAILURE_RATE = "0"'))
        good = meshkit("deploy", "payments", project=project)
        print(f"(exit {good}: {'promoted' if good == 0 else 'unexpected'})", flush=True)
    finally:
        orders.stop()
        config.write_text(original)
    ends = orders.settle(looks=30)
    print(
        f"\n{len(orders.placed)} orders placed meanwhile: "
        + ", ".join(f"{count} {status}" for status, count in sorted(ends.items())),
        flush=True,
    )
    print(f"meshkit.toml is as it was; payments runs {working} until the shop restarts.")
    meshkit("rollout", "status", "payments", project=project)
    raise SystemExit(0 if (bad, good) == (1, 0) and not ends["pending"] else 1)


if __name__ == "__main__":
    main()
