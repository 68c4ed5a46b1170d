"""The embedded registry under load, discovery from the cache, and how fast the dead leave.

    python -m benchmarks.registry [--json FILE] [--quick]

1. 10,000 instances with a 10 s TTL renew every third of it (about 3,000
   renewals a second) against a control plane process on its own core:
   the control plane's CPU share (from /proc) and the renewals' latency.
2. Discovery lookups a second from the client's watched cache, beside
   lookups over HTTP from the control plane.
3. Real service processes (``meshkit serve``, 5 s TTL, as the shop uses)
   killed with SIGKILL at scattered moments of their renewal cycle: the time
   from the kill until a watcher sees the instance leave discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import uvloop

from benchmarks._load import pinned, start_control_plane
from benchmarks._report import Row, arguments, report
from meshkit._net import free_port
from meshkit.errors import DeadlineExceededError, PeerError
from meshkit.http import HTTPClient
from meshkit.registry import Instance, RemoteRegistry, Snapshot
from meshkit.service import Directory

_TICKS = os.sysconf("SC_CLK_TCK")


async def until_up(port: int) -> None:
    async with HTTPClient() as http:
        for _ in range(200):
            with contextlib.suppress(PeerError, DeadlineExceededError):  # not listening yet
                if (await http.request("GET", "127.0.0.1", port, "/healthz")).status == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("the control plane did not start")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


# -- 1. renewals ---------------------------------------------------------------


class RenewalLoad:
    """``count`` instances registered with ``ttl``, each renewed every ``ttl / 3``, spread out."""

    def __init__(self, port: int, token: str, count: int, ttl: float) -> None:
        self.port = port
        self.count = count
        self.ttl = ttl
        self.interval = ttl / 3
        self.auth = [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ]
        self.http = HTTPClient()
        self.leases: list[str] = []
        self.latencies: list[float] = []
        self.registration_rate = 0.0
        self._due: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def register_all(self) -> None:
        numbers = iter(range(self.count))
        started = time.perf_counter()

        async def register() -> None:
            for number in numbers:
                body = msgspec.json.encode(
                    {
                        "service": f"load-{number % 100}",
                        "id": f"i-{number}",
                        "host": "127.0.0.1",
                        "port": 10000 + number % 50000,
                        "ttl": self.ttl,
                    }
                )
                answer = await self.http.send(
                    "POST",
                    "127.0.0.1",
                    self.port,
                    "/v1/registry/instances",
                    headers=self.auth,
                    body=body,
                    connect=5,
                    read=30,
                )
                self.leases.append(answer.json()["lease_id"])

        await asyncio.gather(*(register() for _ in range(32)))
        self.registration_rate = self.count / (time.perf_counter() - started)

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._schedule())]
        self._tasks += [asyncio.create_task(self._renew()) for _ in range(64)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.http.aclose()

    async def _schedule(self) -> None:
        begin = time.perf_counter()
        sent = 0
        while True:
            target = int((time.perf_counter() - begin) / self.interval * self.count)
            while sent < target:
                self._due.put_nowait(self.leases[sent % self.count])
                sent += 1
            await asyncio.sleep(0.005)

    async def _renew(self) -> None:
        while True:
            lease = await self._due.get()
            start = time.perf_counter()
            answer = await self.http.send(
                "PUT",
                "127.0.0.1",
                self.port,
                f"/v1/registry/leases/{lease}",
                headers=self.auth,
                connect=5,
                read=30,
            )
            self.latencies.append(time.perf_counter() - start)
            if answer.status != 200:
                raise RuntimeError(f"a renewal was refused: {answer.status} {answer.body!r}")


async def measure_renewals(*, quick: bool) -> list[Row]:
    count, ttl, window = (300, 10.0, 4.0) if quick else (10_000, 10.0, 30.0)
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as data:
        plane = start_control_plane(Path(data), token, port)
        load = RenewalLoad(port, token, count, ttl)
        try:
            await until_up(port)
            await load.register_all()
            load.start()
            await asyncio.sleep(load.interval)  # one full cycle before measuring
            load.latencies.clear()
            cpu_before, wall_before = cpu_seconds(plane.pid), time.perf_counter()
            await asyncio.sleep(window)
            cpu_after, wall_after = cpu_seconds(plane.pid), time.perf_counter()
            latencies = sorted(load.latencies)
        finally:
            await load.stop()
            plane.send_signal(signal.SIGTERM)
            plane.wait(15)
    share = (cpu_after - cpu_before) / (wall_after - wall_before) * 100
    return [
        Row(f"control plane cpu, {count:,} instances renewing (% of one core)", share, "%"),
        Row(
            "renewals handled per second", len(latencies) / (wall_after - wall_before), "renewals/s"
        ),
        Row("renewal latency p50", statistics.median(latencies) * 1000, "ms"),
        Row("renewal latency p99", latencies[int(0.99 * len(latencies))] * 1000, "ms"),
        Row(f"registrations per second ({count:,} instances)", load.registration_rate, "reg/s"),
    ]


# -- 2. discovery ---------------------------------------------------------------


async def measure_discovery(*, quick: bool) -> list[Row]:
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as data:
        plane = start_control_plane(Path(data), token, port)
        try:
            await until_up(port)
            async with RemoteRegistry(f"http://127.0.0.1:{port}", token=token) as registry:
                for number in range(10):
                    await registry.register(
                        Instance(
                            service="catalog",
                            id=f"catalog-{number}",
                            host="127.0.0.1",
                            port=9000 + number,
                        ),
                        ttl=60,
                    )
                directory = Directory(registry)
                await directory.instances("catalog")
                cached = await _rate(lambda: directory.instances("catalog"), 0.2 if quick else 2.0)
                remote = await _rate(lambda: registry.lookup("catalog"), 0.2 if quick else 2.0)
                await directory.aclose()
        finally:
            plane.send_signal(signal.SIGTERM)
            plane.wait(15)
    return [
        Row(
            "discovery lookups from the client cache",
            cached,
            "lookups/s",
            remote,
            "lookups from the control plane over HTTP",
        ),
    ]


async def _rate(call: object, seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(100):
            await call()  # type: ignore[operator]
        done += 100
    return done / (time.perf_counter() - started)  # the last batch may overrun the deadline


# -- 3. kill -9 to removal ---------------------------------------------------------


async def measure_removal(*, quick: bool) -> list[Row]:
    trials, ttl = (2, 5.0) if quick else (20, 5.0)
    token = secrets.token_urlsafe(24)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="meshkit-bench-") as data:
        plane = start_control_plane(Path(data), token, port)
        instances: list[subprocess.Popen[bytes]] = []
        try:
            await until_up(port)
            env = {
                **os.environ,
                "MESHKIT_REGISTRY": f"http://127.0.0.1:{port}",
                "MESHKIT_TOKEN": token,
                "MESHKIT_SERVICE": "victim",
                "MESHKIT_TTL": str(ttl),
            }
            command = pinned([sys.executable, "-m", "meshkit", "serve", "benchmarks._tiny:app"], 0)
            instances.extend(
                subprocess.Popen(
                    command,
                    env={**env, "MESHKIT_INSTANCE_ID": f"victim-{number}"},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for number in range(trials)
            )
            async with RemoteRegistry(f"http://127.0.0.1:{port}", token=token) as registry:
                snapshot = await registry.lookup("victim")
                deadline = time.perf_counter() + 120
                while len(snapshot.instances) < trials:
                    assert time.perf_counter() < deadline, "instances did not register"
                    snapshot = await registry.watch(snapshot, wait=5)
                gone: dict[str, float] = {}
                watcher = asyncio.create_task(_watch_departures(registry, snapshot, gone, trials))
                killed: dict[str, float] = {}
                rng = random.Random(7)
                for number, process in enumerate(instances):
                    # Kill at a random point of the renewal cycle.
                    await asyncio.sleep(rng.uniform(0, ttl / 3))
                    process.send_signal(signal.SIGKILL)
                    killed[f"victim-{number}"] = time.perf_counter()
                await asyncio.wait_for(watcher, ttl * 3)
        finally:
            for process in instances:
                if process.poll() is None:
                    process.kill()
                process.wait(10)
            plane.send_signal(signal.SIGTERM)
            plane.wait(15)
    delays = sorted(gone[name] - killed[name] for name in killed)
    return [
        Row(f"kill -9 to removal from discovery, min (TTL {ttl:g} s)", delays[0], "s"),
        Row(
            f"kill -9 to removal from discovery, p50 (TTL {ttl:g} s)",
            statistics.median(delays),
            "s",
        ),
        Row(f"kill -9 to removal from discovery, max of {trials} (TTL {ttl:g} s)", delays[-1], "s"),
    ]


async def _watch_departures(
    registry: RemoteRegistry, snapshot: Snapshot, gone: dict[str, float], trials: int
) -> None:
    present = {instance.id for instance in snapshot.instances}
    while len(gone) < trials:
        snapshot = await registry.watch(snapshot, wait=10)
        now = time.perf_counter()
        current = {instance.id for instance in snapshot.instances}
        for name in present - current:
            gone.setdefault(name, now)
        present = current


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "registry benchmark")
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it runs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})

    async def everything() -> list[Row]:
        rows = await measure_renewals(quick=args.quick)
        rows += await measure_discovery(quick=args.quick)
        rows += await measure_removal(quick=args.quick)
        return rows

    rows = uvloop.run(everything())
    report("The registry: renewals under load, discovery, removal of the dead", rows, args.json)


if __name__ == "__main__":
    main()
