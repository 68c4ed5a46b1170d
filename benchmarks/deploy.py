"""What a rollout costs the traffic: each strategy on the shop under 200 requests a second.

    python -m benchmarks.deploy [--json FILE]

A copy of the shop (``benchmarks._saga_shop``) runs under ``meshkit up``.
For each strategy, a load of 200 requests a second goes through the
gateway from this process (each request its own task, sent on schedule
whatever the answers before it), from 3 s before the first ``meshkit
deploy`` starts until 3 s after the last has returned, and every answer
that is not 2xx, or no answer, counts as failed:

- five rolling updates of products (2 replicas) back to back, GETs of the
  product list (over 5,000 requests in all);
- three blue-green switches of users (smoke path /users/1, the old colour
  kept 5 s), GETs of a user;
- a canary of payments failing 30% of charges (``PAYMENT_ERROR_RATE``),
  under 20 orders a second (each charged by payments; a charge that fails
  is retried by the order's saga) and GETs of the product list for the
  rest: the seconds from ``meshkit deploy`` to the rollback;
- then a working payments version, the canary promoted.

The JSON's rows ``rolling failed requests`` and ``blue-green failed
requests`` have the requests sent as their reference; ``canary rollback
seconds`` is the bad canary's time to roll back, with its analysis
interval (10 s, two failed checks) in the rollout's own settings.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from statistics import mean

import uvloop

from benchmarks._report import Row, arguments, report
from benchmarks._saga_shop import ORDER, Shop, shop
from meshkit.errors import MeshkitError
from meshkit.http import HTTPClient, Limits

RATE = 200  # requests a second, all through the gateway
AROUND = 3.0  # seconds of load before the first rollout starts and after the last returns


class Load:
    """``RATE`` requests a second through the gateway, in a thread of its own, until stopped.

    ``plan`` is what one round of requests is (method, path), repeated in turn.
    """

    def __init__(self, running: Shop, plan: list[tuple[str, str]]) -> None:
        self._running = running
        self._plan = plan
        self.statuses: Counter[int] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: uvloop.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        headers = [
            (b"x-api-key", self._running.api_key.encode()),
            (b"content-type", b"application/json"),
        ]
        pending: set[asyncio.Task[None]] = set()
        async with HTTPClient(limits=Limits(max_connections=128, max_idle=128)) as client:

            async def one(method: str, path: str) -> None:
                try:
                    answer = await client.send(
                        method,
                        "127.0.0.1",
                        self._running.gateway_port,
                        path,
                        headers=headers,
                        body=ORDER if method == "POST" else b"",
                        connect=5,
                        read=30,
                    )
                    self.statuses[answer.status] += 1
                except MeshkitError:
                    self.statuses[0] += 1

            loop = asyncio.get_running_loop()
            start, sent = loop.time(), 0
            while not self._stop.is_set():
                await asyncio.sleep(max(0.0, start + sent / RATE - loop.time()))
                method, path = self._plan[sent % len(self._plan)]
                task = loop.create_task(one(method, path))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            await asyncio.gather(*pending)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if not 200 <= status < 300)


@dataclass(frozen=True)
class Rolled:
    seconds: list[float]  # each rollout's, from meshkit deploy's start to its return
    codes: list[int]  # their exit statuses: 0 completed, 1 rolled back
    sent: int  # requests sent from before the first rollout to after the last
    failed: int


def roll_out(running: Shop, service: str, tables: list[str], plan: list[tuple[str, str]]) -> Rolled:
    """``service``'s table replaced by each of ``tables`` in turn, each deployed, under one
    load from ``AROUND`` s before the first to ``AROUND`` s after the last."""
    config = running.directory / "meshkit.toml"
    lines = r"(?:[^\[\n].*\n|\n)*"  # up to the next table's header
    pattern = rf"\[services\.{service}\]\n{lines}(?:\[services\.{service}\.deploy\]\n{lines})?"
    seconds, codes = [], []
    load = Load(running, plan)
    try:
        time.sleep(AROUND)
        for table in tables:
            text = config.read_text()
            found = re.search(pattern, text)
            if found is None:
                raise SystemExit(f"no [services.{service}] table in {config}")
            config.write_text(text[: found.start()] + table + text[found.end() :])
            start = time.perf_counter()
            deployed = subprocess.run(
                [sys.executable, "-m", "meshkit", "deploy", service, "-p", str(running.directory)],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            seconds.append(time.perf_counter() - start)
            codes.append(deployed.returncode)
            if deployed.returncode not in (0, 1):
                raise SystemExit(
                    f"meshkit deploy {service} failed:\n{deployed.stdout}{deployed.stderr}"
                )
        time.sleep(AROUND)
    finally:
        load.stop()
    return Rolled(seconds, codes, load.sent, load.failed)


# Rollouts back to back, so that each strategy's figure covers over 5,000 requests.
ROLLING_TIMES, BLUE_GREEN_TIMES = 5, 3


def products(version: str) -> str:
    return f"""[services.products]
app = "shop.products:service"
version = "{version}"
replicas = 2
ttl = 5

"""


def users(version: str) -> str:
    return f"""[services.users]
app = "shop.users:service"
version = "{version}"
ttl = 5

[services.users.deploy]
strategy = "blue-green"
smoke = ["/users/1"]
keep = 5

"""


def payments(version: str, env: str) -> str:
    return f"""[services.payments]
app = "shop.payments:service"
version = "{version}"
ttl = 5
env = {{ {env} }}

[services.payments.deploy]
strategy = "canary"
steps = [20, 50, 100]
interval = 10
analysis = {{ min_requests = 10 }}

"""


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "deploy benchmark")
    args = parser.parse_args()
    listing = [("GET", "/api/products")]
    # 20 orders a second among the 200 requests: one in ten.
    charges = [("POST", "/api/orders")] + [("GET", "/api/products")] * 9
    with shop() as running:
        rolling = roll_out(
            running,
            "products",
            [products(f"1.{n}.0") for n in range(1, ROLLING_TIMES + 1)],
            listing,
        )
        blue_green = roll_out(
            running,
            "users",
            [users(f"1.{n}.0") for n in range(1, BLUE_GREEN_TIMES + 1)],
            [("GET", "/api/users/1")],
        )
        bad = roll_out(
            running, "payments", [payments("1.1.0", 'PAYMENT_ERROR_RATE = "0.3"')], charges
        )
        good = roll_out(
            running, "payments", [payments("1.2.0", 'PAYMENT_FAILURE_RATE = "0"')], charges
        )
    for name, rolled, wanted in (
        ("rolling", rolling, 0),
        ("blue-green", blue_green, 0),
        ("bad canary", bad, 1),
        ("good canary", good, 0),
    ):
        if any(code != wanted for code in rolled.codes):
            raise SystemExit(f"a {name} rollout ended with {rolled.codes}, not {wanted}")
    rows = [
        Row(f"rolling update of products (mean of {ROLLING_TIMES})", mean(rolling.seconds), "s"),
        Row("rolling failed requests", rolling.failed, "requests", rolling.sent, "sent"),
        Row(
            f"blue-green switch of users (mean of {BLUE_GREEN_TIMES})",
            mean(blue_green.seconds),
            "s",
        ),
        Row("blue-green failed requests", blue_green.failed, "requests", blue_green.sent, "sent"),
        Row("canary rollback seconds", bad.seconds[0], "s"),
        Row("canary of a bad payments: failed requests", bad.failed, "requests", bad.sent, "sent"),
        Row("canary of a good payments promoted", good.seconds[0], "s"),
        Row(
            "canary of a good payments: failed requests", good.failed, "requests", good.sent, "sent"
        ),
    ]
    report("What a rollout costs the traffic (the shop, 200 requests/s)", rows, args.json)


if __name__ == "__main__":
    main()
