"""A service-to-service call through the SDK client, beside a direct call and httpx and aiohttp.

    python -m benchmarks.client [--json FILE] [--quick]

The backend is a minimal HTTP server in its own process, pinned to one core;
the clients run in this process, pinned to the other. Each client makes the
same GET: the SDK client by service name (discovery from its cache, a
power-of-two-choices pick, a per-instance breaker, a retry run and a
deadline), the others to the address directly. Latency is measured one call
at a time; throughput with 16 calls in flight. "overhead" is the SDK
client's p50 minus the direct call's p50 with the same HTTP client.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
import uvloop

from benchmarks._report import Row, arguments, report
from meshkit._net import free_port
from meshkit.http import HTTPClient
from meshkit.registry import EmbeddedRegistry, Instance
from meshkit.service import Directory, ServiceClient

Call = Callable[[], Awaitable[object]]


def start_backend(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "benchmarks._backend", str(port)]
    if os.cpu_count() and os.cpu_count() >= 2:  # type: ignore[operator]
        command = ["taskset", "-c", "1", *command]
    backend = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert backend.stdout is not None
    if backend.stdout.readline().strip() != b"ready":
        raise RuntimeError("the backend did not start")
    return backend


async def latencies(call: Call, count: int) -> list[float]:
    """Microseconds per call, one at a time."""
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - start) / 1000)
    return samples


async def throughput(call: Call, seconds: float, concurrency: int = 16) -> float:
    """Calls per second with ``concurrency`` calls in flight."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await call()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - start)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(port: int, *, quick: bool) -> dict[str, dict[str, float]]:
    count, seconds = (300, 0.5) if quick else (5000, 4.0)
    registry = EmbeddedRegistry()
    registry.start()
    await registry.register(
        Instance(service="bench", id="bench-1", host="127.0.0.1", port=port), ttl=3600
    )
    direct = HTTPClient()
    directory = Directory(registry)
    sdk = ServiceClient(directory, http=HTTPClient())
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as hx,
        aiohttp.ClientSession() as aio,
    ):

        async def aiohttp_get() -> bytes:
            async with aio.get(f"http://127.0.0.1:{port}/item") as response:
                return await response.read()

        calls: dict[str, Call] = {
            "direct": lambda: direct.request("GET", "127.0.0.1", port, "/item"),
            "sdk": lambda: sdk.get("bench", "/item"),
            "httpx": lambda: hx.get("/item"),
            "aiohttp": aiohttp_get,
        }
        results: dict[str, dict[str, float]] = {}
        for name, call in calls.items():
            await latencies(call, count // 5)  # warm up: connections, caches
            samples = await latencies(call, count)
            results[name] = {
                "p50": statistics.median(samples),
                "p99": percentile(samples, 0.99),
                "rps": await throughput(call, seconds),
            }
    await sdk.aclose()
    await direct.aclose()
    await directory.aclose()
    await registry.aclose()
    return results


def rows(results: dict[str, dict[str, float]]) -> list[Row]:
    sdk, direct = results["sdk"], results["direct"]
    out = [
        Row("sdk client overhead p50 (over a direct call)", sdk["p50"] - direct["p50"], "us"),
    ]
    units = {"rps": "req/s", "p50": "us", "p99": "us"}
    labels = {"rps": "requests/s, 16 in flight", "p50": "latency p50", "p99": "latency p99"}
    peers = {"direct": "meshkit HTTPClient, direct", "httpx": "httpx", "aiohttp": "aiohttp"}
    for metric in ("rps", "p50", "p99"):
        for peer, peer_name in peers.items():
            out.append(
                Row(
                    f"sdk client {labels[metric]} vs {peer_name}",
                    sdk[metric],
                    units[metric],
                    results[peer][metric],
                    peer_name,
                )
            )
    return out


def main() -> None:
    parser = arguments(__doc__.splitlines()[0] if __doc__ else "client benchmark")
    parser.add_argument("--quick", action="store_true", help="a few calls each, to check it runs")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(0, {0})
    port = free_port()
    backend = start_backend(port)
    try:
        results = uvloop.run(measure(port, quick=args.quick))
    finally:
        backend.terminate()
        backend.wait(10)
    report(
        "Calling a service: the SDK client beside direct, httpx and aiohttp",
        rows(results),
        args.json,
    )


if __name__ == "__main__":
    main()
